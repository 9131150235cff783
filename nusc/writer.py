"""Write recorded drives as a nuScenes-format dataset that the real `nuscenes-devkit` loads.

Layout written under `dataroot` (the same as a downloaded nuScenes + CAN bus + map expansion):

    <version>/{category,attribute,visibility,instance,sensor,calibrated_sensor,ego_pose,log,scene,
               sample,sample_data,sample_annotation,map}.json   the 13 tables the devkit requires
    <version>/privileged.json       sample token -> privileged world state (for the rule teacher)
    samples/<CAM>/<scene>__<CAM>__<timestamp>.jpg    keyframe images
    samples/LIDAR_TOP/<scene>__LIDAR_TOP__<timestamp>.pcd.bin   empty (no lidar simulated)
    maps/<map token>.png            tiny semantic-prior mask (the devkit checks `map.filename` exists)
    maps/expansion/<location>.json  map expansion v1.3 (lane_divider, ped_crossing, road_segment used)
    can_bus/<scene>_{pose,ms_imu,route,meta}.json   CAN bus expansion (what `NuScenesCanBus` reads)
    vlmad_dataset.json              marker: who wrote this, the rig, and the location aliases

Devkit constraints honoured here: scene names `scene-NNNN` (the CAN bus API asserts it); locations must be
one of the 4 nuScenes map names (`NuScenesMap` asserts it), so any other location (e.g. a CARLA town) is
given one of those 4 names as an alias, recorded in the marker and in `log.logfile`.

Everything is written into a temporary folder beside `dataroot` and moved into place at the end, so an
interrupted write never leaves a half dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from nusc.classes import MAP_CLASSES, NUSCENES_ATTRIBUTES, NUSCENES_CATEGORIES, TABLES
from nusc.records import motion_from_poses
from vlmad.frames import invert_transform, rot_z, rotmat_to_quat, transform_points, yaw_of
from vlmad.rig import Rig

# The 4 map names the devkit's NuScenesMap accepts (nuscenes.map_expansion.map_api.locations).
NUSC_LOCATIONS = ("singapore-onenorth", "singapore-hollandvillage", "singapore-queenstown", "boston-seaport")
MARKER = "vlmad_dataset.json"
LIDAR = "LIDAR_TOP"
LIDAR_RANGE_M = 80.0  # annotations farther than this from the ego get num_lidar_pts = 0 (VAD drops them)


@dataclass
class AgentBox:
    """One annotated object in one frame, world frame (right-handed, vlmad.frames)."""

    instance_id: str  # stable across the frames of a drive
    category: str  # nuScenes category name, e.g. "vehicle.car", "human.pedestrian.adult"
    center: np.ndarray  # (3,) box centre x, y, z in the world
    size: np.ndarray  # (3,) length, width, height in metres (written as nuScenes' w, l, h)
    yaw: float  # world yaw, radians CCW
    velocity: np.ndarray  # (2,) world vx, vy m/s (nuScenes has no velocity field: the devkit re-derives it)


@dataclass
class DriveFrame:
    """One time step of a recorded drive."""

    timestamp_us: int  # microseconds
    world_from_ego: np.ndarray  # (4, 4) ego pose
    images: dict[str, np.ndarray]  # camera name -> HxWx3 uint8 RGB (keyframes; {} allowed for non-keyframes)
    boxes: list[AgentBox]  # annotations (keyframes only are written)
    is_keyframe: bool = True  # samples = keyframes (2 Hz); non-keyframes only feed the CAN bus
    accel: np.ndarray | None = None  # (3,) ego-frame specific force m/s^2, gravity included (+9.81 z at
    # rest: the IMU / nuScenes CAN bus convention); None: finite differences of poses (+ gravity)
    rotation_rate: np.ndarray | None = None  # (3,) rad/s (None: finite differences)
    velocity: np.ndarray | None = None  # (3,) ego-frame velocity m/s (None: finite differences)
    privileged: dict | None = None  # JSON-serialisable extra state for the rule teacher


@dataclass
class RecordedDrive:
    """A drive to write as one nuScenes scene (with its own log)."""

    scene_name: str  # must look like scene-0001 (the devkit's CAN bus API asserts this format)
    location: str  # map name: a nuScenes location, or any name (aliased to a free nuScenes location)
    rig: Rig  # camera rig; intrinsics/extrinsics come from rig.with_image_size(image width, height)
    frames: list[DriveFrame]
    # (class in MAP_CLASSES, (N, 2) world polyline). divider: open polyline; ped_crossing and boundary: closed
    # polygons (boundary = a drivable road polygon; the record builder takes the outline of their union).
    map_polylines: list[tuple[str, np.ndarray]] = field(default_factory=list)
    description: str = ""


def _token(*parts: object) -> str:
    """Deterministic 32-hex token (same shape as nuScenes tokens) so rewriting a drive is reproducible."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def _pose_record(token: str, t: np.ndarray, timestamp: int | None = None) -> dict:
    rec = {"token": token, "translation": [float(v) for v in t[:3, 3]], "rotation": rotmat_to_quat(t[:3, :3])}
    if timestamp is not None:
        rec["timestamp"] = int(timestamp)
    return rec


def _attribute(category: str, speed: float) -> str:
    if category.startswith("human.pedestrian"):
        return "pedestrian.moving" if speed > 0.3 else "pedestrian.standing"
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return "cycle.with_rider"
    if category.startswith("vehicle."):
        return "vehicle.moving" if speed > 0.5 else "vehicle.stopped"
    return ""


def _check_drive(drive: RecordedDrive) -> None:
    if not re.fullmatch(r"scene-\d{4}", drive.scene_name):
        raise ValueError(
            f"scene name {drive.scene_name!r} must look like 'scene-0001' "
            "(nuscenes-devkit's CAN bus API only accepts that format)"
        )
    keys = [f for f in drive.frames if f.is_keyframe]
    if not keys:
        raise ValueError(f"{drive.scene_name}: a drive needs at least one keyframe")
    ts = [f.timestamp_us for f in drive.frames]
    if any(b <= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"{drive.scene_name}: frame timestamps must strictly increase")
    for f in keys:
        missing = [c for c in drive.rig.camera_names if c not in f.images]
        if missing:
            raise ValueError(f"{drive.scene_name}: keyframe at {f.timestamp_us} has no image for {missing}")
        for c in drive.rig.camera_names:
            img = f.images[c]
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"{drive.scene_name}: image {c} at {f.timestamp_us} must be HxWx3 uint8 RGB")
    for cls, pts in drive.map_polylines:
        if cls not in MAP_CLASSES:
            raise ValueError(f"{drive.scene_name}: map class {cls!r} is not one of {MAP_CLASSES}")
        if np.asarray(pts).ndim != 2 or np.asarray(pts).shape[1] != 2 or len(pts) < 2:
            raise ValueError(f"{drive.scene_name}: map polyline of class {cls} must be (N >= 2, 2)")


class _MapBuilder:
    """Accumulates one location's map expansion (format v1.3) from world polylines."""

    def __init__(self, name: str):
        self.name = name
        self.layers: dict[str, list] = {
            k: []
            for k in (
                "polygon",
                "line",
                "node",
                "drivable_area",
                "road_segment",
                "road_block",
                "lane",
                "ped_crossing",
                "walkway",
                "stop_line",
                "carpark_area",
                "road_divider",
                "lane_divider",
                "traffic_light",
                "lane_connector",
            )
        }
        self.max_xy = np.zeros(2)
        # (class, points) already written: every drive of a town carries the whole town's map, and a
        # location's map holds each element once (with 60 drives each divider was written 60 times: 349
        # map vectors per sample where the patch holds 8, and a 360 MB index)
        self._seen: set[tuple[str, bytes]] = set()

    def _nodes(self, key: str, pts: np.ndarray) -> list[str]:
        tokens = []
        for i, (x, y) in enumerate(np.asarray(pts, dtype=np.float64)):
            tok = _token(self.name, key, "node", i)
            self.layers["node"].append({"token": tok, "x": float(x), "y": float(y)})
            tokens.append(tok)
        self.max_xy = np.maximum(self.max_xy, np.asarray(pts).max(axis=0))
        return tokens

    def add(self, key: str, cls: str, pts: np.ndarray) -> None:
        """Add one map element (a repeat of an element already added, same class and points, is skipped)."""
        pts = np.asarray(pts, dtype=np.float64)
        if (cls, pts.tobytes()) in self._seen:
            return
        self._seen.add((cls, pts.tobytes()))
        if cls == "divider":
            line_tok = _token(self.name, key, "line")
            self.layers["line"].append({"token": line_tok, "node_tokens": self._nodes(key, pts)})
            self.layers["lane_divider"].append(
                {
                    "token": _token(self.name, key, "lane_divider"),
                    "line_token": line_tok,
                    "lane_divider_segments": [],
                }
            )
            return
        if np.allclose(pts[0], pts[-1]):  # polygons are stored open (first node is not repeated)
            pts = pts[:-1]
        poly_tok = _token(self.name, key, "polygon")
        self.layers["polygon"].append(
            {"token": poly_tok, "exterior_node_tokens": self._nodes(key, pts), "holes": []}
        )
        if cls == "ped_crossing":
            self.layers["ped_crossing"].append(
                {
                    "token": _token(self.name, key, "ped_crossing"),
                    "polygon_token": poly_tok,
                    "road_segment_token": "",
                }
            )
        else:  # boundary: the road polygon is a road segment, and drivable area for renderers
            da_tok = _token(self.name, key, "drivable_area")
            self.layers["drivable_area"].append({"token": da_tok, "polygon_tokens": [poly_tok]})
            self.layers["road_segment"].append(
                {
                    "token": _token(self.name, key, "road_segment"),
                    "polygon_token": poly_tok,
                    "is_intersection": False,
                    "drivable_area_token": da_tok,
                }
            )

    def to_json(self) -> dict:
        edge = [float(math.ceil(self.max_xy[0] + 100.0)), float(math.ceil(self.max_xy[1] + 100.0))]
        return {
            "version": "1.3",
            "canvas_edge": edge,
            **self.layers,
            "arcline_path_3": {},
            "connectivity": {},
        }


def write_nuscenes(
    dataroot: str | Path, version: str, drives: list[RecordedDrive], overwrite: bool = False
) -> Path:
    """Write `drives` as nuScenes `version` under `dataroot`; returns `dataroot`.

    `dataroot` must not exist (or be empty). With `overwrite=True` an existing dataroot is replaced only if
    this writer made it (it holds `vlmad_dataset.json`); a folder of other data is never deleted.
    """
    dataroot = Path(dataroot)
    if not re.fullmatch(r"v\d+\.\d+-[\w-]+", version):
        raise ValueError(f"version {version!r} must look like 'v1.0-mini' or 'v1.0-trainval'")
    if not drives:
        raise ValueError("write_nuscenes needs at least one drive")
    names = [d.scene_name for d in drives]
    if len(set(names)) != len(names):
        raise ValueError(f"scene names must be unique, got {names}")
    for d in drives:
        _check_drive(d)
    if dataroot.exists() and any(dataroot.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{dataroot} already exists; pass overwrite=True to replace it")
        if not (dataroot / MARKER).is_file():
            raise FileExistsError(
                f"{dataroot} exists and was not written by vlmad (no {MARKER}); "
                "refusing to delete it, choose another folder"
            )

    # Location aliases: nuScenes names are kept, any other name gets a free nuScenes name.
    alias: dict[str, str] = {}
    free = [n for n in NUSC_LOCATIONS if n not in {d.location for d in drives}]
    for d in drives:
        if d.location in NUSC_LOCATIONS:
            alias[d.location] = d.location
        elif d.location not in alias:
            if not free:
                raise ValueError(
                    "at most 4 distinct locations fit in one nuScenes dataset (the devkit only "
                    f"knows {NUSC_LOCATIONS}); got {sorted({d.location for d in drives})}"
                )
            alias[d.location] = free.pop(0)

    dataroot.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataroot.name}.", suffix=".tmp", dir=dataroot.parent))
    try:
        _write_all(tmp, version, drives, alias)
        if dataroot.exists():
            shutil.rmtree(dataroot)
        tmp.rename(dataroot)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataroot


def _write_all(root: Path, version: str, drives: list[RecordedDrive], alias: dict[str, str]) -> None:
    t: dict[str, list] = {k: [] for k in TABLES}
    t["category"] = [
        {"token": _token("category", c), "name": c, "description": c} for c in NUSCENES_CATEGORIES
    ]
    extra = sorted({b.category for d in drives for f in d.frames for b in f.boxes} - set(NUSCENES_CATEGORIES))
    t["category"] += [{"token": _token("category", c), "name": c, "description": c} for c in extra]
    t["attribute"] = [
        {"token": _token("attribute", a), "name": a, "description": a} for a in NUSCENES_ATTRIBUTES
    ]
    t["visibility"] = [
        {"token": str(i + 1), "level": lv, "description": f"visibility of whole object is {lv}"}
        for i, lv in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))
    ]
    channels = list(drives[0].rig.camera_names) + [LIDAR]
    for d in drives[1:]:
        channels += [c for c in d.rig.camera_names if c not in channels]
    t["sensor"] = [
        {"token": _token("sensor", c), "channel": c, "modality": "lidar" if c == LIDAR else "camera"}
        for c in channels
    ]

    maps: dict[str, _MapBuilder] = {}
    map_logs: dict[str, list[str]] = {}
    privileged: dict[str, dict] = {}
    for d in drives:
        _write_drive(root, d, alias[d.location], t, maps, privileged)
        map_logs.setdefault(alias[d.location], []).append(_token(d.scene_name, "log"))

    # map table (+ a 1x1 semantic prior png: the devkit only checks that the file exists)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    for loc, logs in map_logs.items():
        tok = _token("map", loc)
        cv2.imwrite(str(root / "maps" / f"{tok}.png"), np.zeros((1, 1), np.uint8))
        t["map"].append(
            {"token": tok, "log_tokens": logs, "category": "semantic_prior", "filename": f"maps/{tok}.png"}
        )
    (root / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    for loc in map_logs:
        builder = maps.get(loc) or _MapBuilder(loc)
        (root / "maps" / "expansion" / f"{loc}.json").write_text(json.dumps(builder.to_json()))

    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in t.items():
        (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=0))
    (table_dir / "privileged.json").write_text(json.dumps(privileged))
    marker = {
        "writer": "vlmad nusc.writer",
        "version": version,
        "note": "written by the project (synthetic / offline-world data), not real nuScenes",
        "scenes": [d.scene_name for d in drives],
        "rigs": sorted({d.rig.name for d in drives}),
        "locations": {alias[d.location]: d.location for d in drives},
    }
    (root / MARKER).write_text(json.dumps(marker, indent=2))


def _write_drive(
    root: Path,
    d: RecordedDrive,
    location: str,
    t: dict[str, list],
    maps: dict[str, _MapBuilder],
    privileged: dict[str, dict],
) -> None:
    scene = d.scene_name
    log_tok = _token(scene, "log")
    t["log"].append(
        {
            "token": log_tok,
            "logfile": f"vlmad-{d.location}-{scene}",
            "vehicle": d.rig.name,
            "date_captured": "2024-01-01",
            "location": location,
        }
    )
    keys = [f for f in d.frames if f.is_keyframe]
    h, w = keys[0].images[d.rig.camera_names[0]].shape[:2]
    rig = d.rig.with_image_size(w, h)

    # calibrated sensors: one per (log, channel), as in nuScenes
    calib: dict[str, str] = {}
    for cam in rig.cameras:
        tok = _token(scene, "calib", cam.name)
        calib[cam.name] = tok
        rec = _pose_record(tok, cam.ego_from_cam())
        rec.update(sensor_token=_token("sensor", cam.name), camera_intrinsic=cam.intrinsics().tolist())
        t["calibrated_sensor"].append(rec)
    calib[LIDAR] = _token(scene, "calib", LIDAR)
    rec = _pose_record(calib[LIDAR], rig.ego_from_lidar())
    rec.update(sensor_token=_token("sensor", LIDAR), camera_intrinsic=[])
    t["calibrated_sensor"].append(rec)

    # samples and sample_data (keyframes only), with prev/next chains per channel
    sample_toks = [_token(scene, "sample", i) for i in range(len(keys))]
    channels = list(rig.camera_names) + [LIDAR]
    for i, f in enumerate(keys):
        t["sample"].append(
            {
                "token": sample_toks[i],
                "timestamp": int(f.timestamp_us),
                "scene_token": _token(scene),
                "prev": sample_toks[i - 1] if i > 0 else "",
                "next": sample_toks[i + 1] if i + 1 < len(keys) else "",
            }
        )
        if f.privileged is not None:
            privileged[sample_toks[i]] = f.privileged
        for ch in channels:
            sd_tok = _token(scene, "sd", ch, i)
            t["ego_pose"].append(_pose_record(sd_tok, f.world_from_ego, f.timestamp_us))
            if ch == LIDAR:
                fname, fmt, width, height = (
                    f"samples/{ch}/{scene}__{ch}__{f.timestamp_us}.pcd.bin",
                    "pcd",
                    0,
                    0,
                )
                (root / fname).parent.mkdir(parents=True, exist_ok=True)
                (root / fname).write_bytes(b"")
            else:
                fname, fmt, width, height = f"samples/{ch}/{scene}__{ch}__{f.timestamp_us}.jpg", "jpg", w, h
                (root / fname).parent.mkdir(parents=True, exist_ok=True)
                img = f.images[ch]
                if img.shape[:2] != (h, w):
                    raise ValueError(
                        f"{scene}: all images must share one size, {ch} is {img.shape[:2]} != {(h, w)}"
                    )
                if not cv2.imwrite(
                    str(root / fname), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
                ):
                    raise OSError(f"could not write {root / fname}")
            t["sample_data"].append(
                {
                    "token": sd_tok,
                    "sample_token": sample_toks[i],
                    "ego_pose_token": sd_tok,
                    "calibrated_sensor_token": calib[ch],
                    "timestamp": int(f.timestamp_us),
                    "fileformat": fmt,
                    "is_key_frame": True,
                    "height": height,
                    "width": width,
                    "filename": fname,
                    "prev": _token(scene, "sd", ch, i - 1) if i > 0 else "",
                    "next": _token(scene, "sd", ch, i + 1) if i + 1 < len(keys) else "",
                }
            )

    # annotations: one instance per instance_id, annotations chained by prev/next over keyframes
    ann_by_inst: dict[str, list[tuple[int, AgentBox]]] = {}
    for i, f in enumerate(keys):
        for b in f.boxes:
            ann_by_inst.setdefault(b.instance_id, []).append((i, b))
    for inst_id, anns in ann_by_inst.items():
        inst_tok = _token(scene, "instance", inst_id)
        categories = {b.category for _, b in anns}
        if len(categories) != 1:
            raise ValueError(f"{scene}: instance {inst_id!r} changes category {sorted(categories)}")
        ann_toks = [_token(scene, "ann", inst_id, i) for i, _ in anns]
        for k, (i, b) in enumerate(anns):
            speed = float(np.linalg.norm(np.asarray(b.velocity, dtype=np.float64)[:2]))
            attr = _attribute(b.category, speed)
            dist = float(np.linalg.norm(np.asarray(b.center)[:2] - keys[i].world_from_ego[:2, 3]))
            length, width, height = (float(v) for v in b.size)
            t["sample_annotation"].append(
                {
                    "token": ann_toks[k],
                    "sample_token": sample_toks[i],
                    "instance_token": inst_tok,
                    "visibility_token": "4",
                    "attribute_tokens": [_token("attribute", attr)] if attr else [],
                    "translation": [float(v) for v in b.center],
                    "size": [width, length, height],
                    "rotation": rotmat_to_quat(rot_z(float(b.yaw))),
                    "prev": ann_toks[k - 1] if k > 0 else "",
                    "next": ann_toks[k + 1] if k + 1 < len(anns) else "",
                    "num_lidar_pts": 1 if dist <= LIDAR_RANGE_M else 0,
                    "num_radar_pts": 0,
                }
            )
        t["instance"].append(
            {
                "token": inst_tok,
                "category_token": _token("category", b.category),
                "nbr_annotations": len(anns),
                "first_annotation_token": ann_toks[0],
                "last_annotation_token": ann_toks[-1],
            }
        )

    t["scene"].append(
        {
            "token": _token(scene),
            "log_token": log_tok,
            "nbr_samples": len(keys),
            "first_sample_token": sample_toks[0],
            "last_sample_token": sample_toks[-1],
            "name": scene,
            "description": d.description,
        }
    )

    # map expansion
    builder = maps.setdefault(location, _MapBuilder(location))
    for j, (cls, pts) in enumerate(d.map_polylines):
        builder.add(f"{scene}/{j}", cls, pts)

    _write_can_bus(root / "can_bus", d)


def _write_can_bus(can_dir: Path, d: RecordedDrive) -> None:
    """pose / ms_imu / route / meta messages in the CAN bus expansion format (all frames, not only keys)."""
    can_dir.mkdir(parents=True, exist_ok=True)
    times = np.array([f.timestamp_us for f in d.frames], dtype=np.float64) * 1e-6
    vel_fd, acc_fd, rate_fd = motion_from_poses(times, np.stack([f.world_from_ego for f in d.frames]))
    pose, imu = [], []
    for k, f in enumerate(d.frames):
        vel = vel_fd[k] if f.velocity is None else np.asarray(f.velocity, dtype=np.float64)
        acc = acc_fd[k] if f.accel is None else np.asarray(f.accel, dtype=np.float64)
        rate = rate_fd[k] if f.rotation_rate is None else np.asarray(f.rotation_rate, dtype=np.float64)
        quat = rotmat_to_quat(f.world_from_ego[:3, :3])
        pose.append(
            {
                "accel": acc.tolist(),
                "orientation": quat,
                "pos": f.world_from_ego[:3, 3].tolist(),
                "rotation_rate": rate.tolist(),
                "utime": int(f.timestamp_us),
                "vel": vel.tolist(),
            }
        )
        imu.append(
            {
                "linear_accel": acc.tolist(),
                "q": quat,
                "rotation_rate": rate.tolist(),
                "utime": int(f.timestamp_us),
            }
        )
    route = [f.world_from_ego[:2, 3].tolist() for f in d.frames]
    meta = {
        "source": "vlmad nusc.writer",
        "rig": d.rig.name,
        "location": d.location,
        "num_frames": len(d.frames),
        "num_keyframes": sum(f.is_keyframe for f in d.frames),
    }
    for name, msg in (("pose", pose), ("ms_imu", imu), ("route", route), ("meta", meta)):
        (can_dir / f"{d.scene_name}_{name}.json").write_text(json.dumps(msg))


def ego_frame_boxes(world_from_ego: np.ndarray, boxes: list[AgentBox]) -> np.ndarray:
    """(N, 7) [x, y, z, l, w, h, yaw] of world boxes in the ego frame of `world_from_ego`."""
    if not boxes:
        return np.zeros((0, 7))
    ego_from_world = invert_transform(world_from_ego)
    centers = transform_points(ego_from_world, np.array([b.center for b in boxes], dtype=np.float64))
    ego_yaw = yaw_of(world_from_ego)
    out = np.zeros((len(boxes), 7))
    out[:, :3] = centers
    out[:, 3:6] = np.array([b.size for b in boxes], dtype=np.float64)
    out[:, 6] = [math.remainder(b.yaw - ego_yaw, 2 * math.pi) for b in boxes]
    return out


__all__ = ["AgentBox", "DriveFrame", "RecordedDrive", "write_nuscenes", "ego_frame_boxes", "NUSC_LOCATIONS"]
