"""Detection and map classes, and the standard nuScenes category -> detection class mapping."""

from __future__ import annotations

# The 10 classes of the nuScenes detection benchmark, in its canonical order (label index = position).
DETECTION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

# VAD's map element classes (label index = position).
MAP_CLASSES = ("divider", "ped_crossing", "boundary")

# mmdet3d / VAD `NuScenesDataset.NameMapping`: nuScenes category name -> detection class. Categories not
# listed (animal, strollers, wheelchairs, emergency vehicles, debris, bicycle racks, ...) are ignored.
CATEGORY_TO_CLASS = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}

# All 23 nuScenes v1.0 categories (written to category.json by the writer so that any of them may be used).
NUSCENES_CATEGORIES = (
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.wheelchair",
    "human.pedestrian.stroller",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.construction_worker",
    "animal",
    "vehicle.car",
    "vehicle.motorcycle",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.truck",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.trailer",
    "movable_object.barrier",
    "movable_object.trafficcone",
    "movable_object.pushable_pullable",
    "movable_object.debris",
    "static_object.bicycle_rack",
)

# The 8 nuScenes attributes.
NUSCENES_ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)


def detection_label(category: str) -> int:
    """Index into DETECTION_CLASSES of a nuScenes category name, or -1 when the category is not detected."""
    cls = CATEGORY_TO_CLASS.get(category)
    return -1 if cls is None else DETECTION_CLASSES.index(cls)

# The 13 nuScenes tables that nuscenes-devkit 1.2.0 loads (all must exist, even if empty).
TABLES = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)
