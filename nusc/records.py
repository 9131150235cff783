"""Per-keyframe sample records (VAD's "infos") built through the nuScenes devkit; see docs/data_contract.md.

`build_records(nusc, can_bus, maps, privileged)` walks every scene's keyframes and returns one dict per
sample with ego-frame geometry: camera calibrations, ego future / history / command, the 18-value CAN bus
vector, agents with futures, and map vectors. All geometry goes through vlmad.frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, Polygon, box
from shapely.geometry.polygon import orient
from shapely.ops import linemerge, unary_union
from tqdm import tqdm

from nusc.classes import MAP_CLASSES, detection_label
from vlmad.commands import command_from_future
from vlmad.errors import UserError
from vlmad.frames import (
    invert_transform,
    pose_to_matrix,
    rotmat_to_quat,
    transform_points,
    world_to_ego,
    yaw_of,
)
from vlmad.horizon import FUT_STEPS, HIS_STEPS
from vlmad.rig import CAMERA_NAMES

PATCH_X, PATCH_Y = 60.0, 30.0  # map patch, metres along ego x (forward) and y (left), centred on the ego
MAP_POINTS = 20  # points per map vector
LIDAR = "LIDAR_TOP"

# Array-valued fields and their dtypes, for JSON round trips (nested ones handled in record_from_json).
_ARRAYS = {
    "world_from_ego": float,
    "ego_from_lidar": float,
    "ego_fut": float,
    "ego_fut_mask": bool,
    "ego_fut_yaw": float,
    "ego_his": float,
    "ego_his_mask": bool,
    "can_bus": float,
}
_OPTIONAL_ARRAYS = {"goal_point": float}  # present only in data recorded from a route

_AGENT_ARRAYS = {
    "boxes": float,
    "labels": np.int64,
    "velocity": float,
    "fut": float,
    "fut_mask": bool,
    "fut_yaw": float,
}


# ----------------------------------------------------------------------------------------------------
# Small geometry helpers
# ----------------------------------------------------------------------------------------------------
GRAVITY = 9.81  # m/s^2, included in IMU-style accelerations


def motion_from_poses(
    times_s: np.ndarray, world_from_ego: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ego-frame velocity, acceleration and rotation rate, each (T, 3), from (T, 4, 4) poses.

    The acceleration is what an IMU reports (specific force): kinematic acceleration plus +9.81 m/s^2
    up, as in real nuScenes CAN bus pose messages and CARLA's IMU, so a model trained on derived CAN bus
    values sees the same input as the closed-loop agent, which reads the IMU.
    """
    n = len(times_s)
    if n < 2:
        return np.zeros((n, 3)), np.tile([0.0, 0.0, GRAVITY], (n, 1)), np.zeros((n, 3))
    pos = world_from_ego[:, :3, 3]
    yaw = np.unwrap([yaw_of(p) for p in world_from_ego])
    vel_w = np.gradient(pos, times_s, axis=0)
    acc_w = np.gradient(vel_w, times_s, axis=0) + np.array([0.0, 0.0, GRAVITY])
    rot_t = np.transpose(world_from_ego[:, :3, :3], (0, 2, 1))
    rate = np.zeros((n, 3))
    rate[:, 2] = np.gradient(yaw, times_s)
    return np.einsum("nij,nj->ni", rot_t, vel_w), np.einsum("nij,nj->ni", rot_t, acc_w), rate


def resample_line(coords: np.ndarray, n: int = MAP_POINTS) -> np.ndarray:
    """(n, 2) points spaced uniformly along a polyline (both ends kept; a closed ring stays closed)."""
    return resample_lines([LineString(coords)], n)[0]


def resample_lines(lines: list[LineString], n: int = MAP_POINTS) -> np.ndarray:
    """(len(lines), n, 2): `resample_line` of each line, in one vectorised shapely call per step (a
    sample has hundreds of map pieces; one call per piece made the index build mostly call overhead)."""
    if not lines:
        return np.zeros((0, n, 2))
    arr = np.asarray(lines, dtype=object)
    dist = np.linspace(0.0, shapely.length(arr), n, axis=-1)  # (k, n), the same arithmetic as per line
    pts = shapely.line_interpolate_point(arr[:, None], dist)
    return shapely.get_coordinates(pts.ravel()).reshape(len(lines), n, 2)


def _pieces(geom) -> list[LineString]:
    if geom.is_empty:
        return []
    if isinstance(geom, LineString):
        return [geom]
    if isinstance(geom, MultiLineString):
        merged = linemerge(geom)
        return [merged] if isinstance(merged, LineString) else list(merged.geoms)
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _pieces(g)]
    return []


def _polygons(geom) -> list[Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygons(g)]
    return []


# ----------------------------------------------------------------------------------------------------
# Map vectors from the map expansion
# ----------------------------------------------------------------------------------------------------
class MapIndex:
    """World geometries of one map expansion (read with the devkit), in STR trees for patch queries.

    divider = lane_divider + road_divider lines; ped_crossing = ped_crossing polygons; boundary = outline
    of the union of road_segment + lane polygons (VAD's `VectorizedLocalMap` layers).
    """

    def __init__(self, nusc_map):
        lines = [
            nusc_map.extract_line(r["line_token"])
            for layer in ("lane_divider", "road_divider")
            for r in getattr(nusc_map, layer)
        ]
        self.dividers = [g for g in lines if not g.is_empty and g.length > 0]
        self.crossings = [
            p
            for p in (nusc_map.extract_polygon(r["polygon_token"]) for r in nusc_map.ped_crossing)
            if p.is_valid and not p.is_empty
        ]
        self.roads = [
            p
            for p in (
                nusc_map.extract_polygon(r["polygon_token"])
                for layer in ("road_segment", "lane")
                for r in getattr(nusc_map, layer)
            )
            if p.is_valid and not p.is_empty
        ]
        self.trees = {
            k: shapely.STRtree(v) if v else None
            for k, v in (
                ("divider", self.dividers),
                ("ped_crossing", self.crossings),
                ("boundary", self.roads),
            )
        }

    def vectors(self, world_from_ego: np.ndarray) -> list[dict]:
        """Map vectors [{'cls': int, 'pts': (20, 2)}] in the ego frame, clipped to the 60 m x 30 m patch."""
        patch = box(-PATCH_X / 2, -PATCH_Y / 2, PATCH_X / 2, PATCH_Y / 2)
        inner = box(-PATCH_X / 2 + 0.2, -PATCH_Y / 2 + 0.2, PATCH_X / 2 - 0.2, PATCH_Y / 2 - 0.2)
        corners = transform_points(world_from_ego, np.array(patch.exterior.coords))
        world_patch = Polygon(corners)
        ego_from_world = invert_transform(world_from_ego)

        def local(kind: str) -> list:
            """The layer's geometries near the patch, in the ego frame, clipped to it (vectorised)."""
            tree = self.trees[kind]
            if tree is None:
                return []
            idx = np.sort(tree.query(world_patch))
            if len(idx) == 0:
                return []
            g = shapely.transform(tree.geometries[idx], lambda xy: transform_points(ego_from_world, xy))
            g = shapely.intersection(g, patch)
            return list(g[~shapely.is_empty(g)])

        vecs: list[dict] = []
        pieces = [p for g in local("divider") for p in _pieces(g) if p.length > 1e-3]
        vecs += [{"cls": 0, "pts": pts} for pts in resample_lines(pieces)]
        crossings = [p for g in local("ped_crossing") for p in _polygons(g)]
        for poly in _polygons(unary_union(crossings)) if crossings else []:
            ring = np.asarray(orient(poly, sign=-1.0).exterior.coords)
            vecs.append({"cls": 1, "pts": resample_line(ring)})
        roads = [p for g in local("boundary") for p in _polygons(g)]
        for poly in _polygons(unary_union(roads)) if roads else []:
            poly = orient(poly, sign=-1.0)  # exterior clockwise, holes counter-clockwise (VAD's convention)
            for ring in [poly.exterior, *poly.interiors]:
                for p in _pieces(LineString(ring.coords).intersection(inner)):
                    if p.length > 1e-3:
                        vecs.append({"cls": 2, "pts": resample_line(np.asarray(p.coords))})
        return vecs


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------
@dataclass
class CanBusSource:
    """Pose messages of one scene from the CAN bus expansion (None -> derive from ego poses)."""

    utime: np.ndarray  # (M,) microseconds
    accel: np.ndarray  # (M, 3)
    rotation_rate: np.ndarray  # (M, 3)
    vel: np.ndarray  # (M, 3)


def can_bus_vector(
    world_from_ego: np.ndarray, accel: np.ndarray, rotation_rate: np.ndarray, vel: np.ndarray
) -> np.ndarray:
    """The 18-value CAN bus vector in VAD/BEVFormer layout (see docs/data_contract.md).

    [0:3] translation, [3:7] quaternion wxyz (both from the ego pose, as BEVFormer overwrites them),
    [7:10] accel, [10:13] rotation rate, [13:16] velocity, [16] yaw in [0, 2pi), [17] yaw in [0, 360) deg.
    """
    yaw_deg = math.degrees(yaw_of(world_from_ego))
    if yaw_deg < 0:
        yaw_deg += 360.0
    return np.concatenate(
        [
            world_from_ego[:3, 3],
            rotmat_to_quat(world_from_ego[:3, :3]),
            accel,
            rotation_rate,
            vel,
            [math.radians(yaw_deg), yaw_deg],
        ]
    ).astype(np.float64)


def route_goal_point(route_target, world_from_ego: np.ndarray) -> np.ndarray | None:
    """The goal point (2,) in the ego frame from a route target point [x, y] in the world frame (None when
    the record has none or it is malformed). The target is taken at the ego's height: only x, y matter."""
    try:
        xy = np.asarray(route_target, dtype=np.float64).reshape(2)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(xy).all():
        return None
    pt = np.array([xy[0], xy[1], world_from_ego[2, 3]])
    return transform_points(invert_transform(world_from_ego), pt)[:2]


def _get(nusc, table: str, token: str, context: str) -> dict:
    try:
        return nusc.get(table, token)
    except KeyError:
        raise UserError(
            f"{context} refers to {table} token {token!r}, which is not in {table}.json; the tables "
            "are inconsistent: re-extract the nuScenes metadata (or rewrite the dataset)"
        ) from None


def _scene_samples(nusc, scene: dict) -> list[dict]:
    out, tok = [], scene["first_sample_token"]
    while tok:
        s = _get(nusc, "sample", tok, f"scene {scene['name']}")
        out.append(s)
        tok = s["next"]
        if len(out) > 100000:
            raise UserError(f"scene {scene['name']}: sample next-pointers loop; the tables are corrupt")
    return out


def _ego_pose(nusc, sd_token: str, context: str) -> np.ndarray:
    sd = _get(nusc, "sample_data", sd_token, context)
    pose = _get(nusc, "ego_pose", sd["ego_pose_token"], f"sample_data {sd_token}")
    return pose_to_matrix(pose["translation"], pose["rotation"])


def _calib(nusc, sd: dict) -> tuple[dict, np.ndarray]:
    cs = _get(nusc, "calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {sd['token']}")
    return cs, pose_to_matrix(cs["translation"], cs["rotation"])


def build_records(
    nusc,
    dataroot,
    can_bus: dict[str, CanBusSource | None] | None = None,
    maps: dict[str, MapIndex] | None = None,
    privileged: dict[str, dict] | None = None,
    progress: bool = True,
) -> list[dict]:
    """One record per keyframe of every scene (scene order, then time), array fields as numpy arrays.

    `can_bus` maps scene name -> pose messages (missing / None: derived from ego poses, flagged);
    `maps` maps a log location -> MapIndex (missing: empty `map`); `privileged` maps sample token -> dict.
    """
    dataroot = Path(dataroot)
    can_bus, maps, privileged = can_bus or {}, maps or {}, privileged or {}
    records: list[dict] = []
    bar = tqdm(total=len(nusc.sample), desc="sample records", unit="sample", disable=not progress)
    for scene in nusc.scene:
        samples = _scene_samples(nusc, scene)
        log = _get(nusc, "log", scene["log_token"], f"scene {scene['name']}")
        map_index = maps.get(log["location"])
        poses, lidar_calib = [], []
        for s in samples:
            if LIDAR not in s["data"]:
                raise UserError(
                    f"sample {s['token']} (scene {scene['name']}) has no {LIDAR} sample_data; VAD "
                    "needs the LIDAR_TOP pose and calibration for every keyframe"
                )
            poses.append(_ego_pose(nusc, s["data"][LIDAR], f"sample {s['token']}"))
            lidar_calib.append(
                _calib(nusc, _get(nusc, "sample_data", s["data"][LIDAR], f"sample {s['token']}"))[1]
            )
        poses_arr = np.stack(poses)
        times = np.array([s["timestamp"] for s in samples], dtype=np.float64) * 1e-6
        vel_d, acc_d, rate_d = motion_from_poses(times, poses_arr)
        cb = can_bus.get(scene["name"])
        for i, s in enumerate(samples):
            rec = _record(nusc, dataroot, scene, samples, i, poses_arr, lidar_calib[i], map_index)
            if cb is not None and len(cb.utime):
                j = max(int(np.searchsorted(cb.utime, s["timestamp"], side="right")) - 1, 0)
                rec["can_bus"] = can_bus_vector(poses_arr[i], cb.accel[j], cb.rotation_rate[j], cb.vel[j])
                rec["can_bus_derived"] = False
            else:
                rec["can_bus"] = can_bus_vector(poses_arr[i], acc_d[i], rate_d[i], vel_d[i])
                rec["can_bus_derived"] = True
            rec["ego_speed"] = float(rec["can_bus"][13])
            rec["ego_accel"] = float(rec["can_bus"][7])
            rec["privileged"] = privileged.get(s["token"])
            route_cmd = (rec["privileged"] or {}).get("command")
            if isinstance(route_cmd, int):  # the route's RoadOption command (data recorded from a route)
                rec["command"] = route_cmd
            goal = route_goal_point((rec["privileged"] or {}).get("route_target"), poses_arr[i])
            if goal is not None:  # the route's target point, as the CARLA agent sees it (its goal point)
                rec["goal_point"] = goal
            records.append(rec)
            bar.update(1)
    bar.close()
    return records


def _record(
    nusc,
    dataroot,
    scene: dict,
    samples: list[dict],
    i: int,
    poses: np.ndarray,
    ego_from_lidar: np.ndarray,
    map_index: MapIndex | None,
) -> dict:
    s = samples[i]
    world_from_ego = poses[i]
    ego_from_world = invert_transform(world_from_ego)
    ego_yaw = yaw_of(world_from_ego)

    cams = {}
    for name in CAMERA_NAMES:
        if name not in s["data"]:
            raise UserError(
                f"sample {s['token']} (scene {scene['name']}) has no {name} image; VAD needs all 6 "
                "cameras for every keyframe"
            )
        sd = _get(nusc, "sample_data", s["data"][name], f"sample {s['token']}")
        path = dataroot / sd["filename"]
        if not path.is_file():
            raise UserError(
                f"image {path} (sample {s['token']}, {name}) is missing; extract the nuScenes "
                f"'samples' archives into {dataroot} or rebuild the dataset"
            )
        cs, egocam_from_cam = _calib(nusc, sd)
        # camera pose relative to the keyframe's (LIDAR_TOP) ego pose, as VAD's sensor2lidar does
        ego_from_cam = ego_from_world @ _ego_pose(nusc, sd["token"], f"sample {s['token']}") @ egocam_from_cam
        cams[name] = {
            "path": sd["filename"],
            "intrinsics": np.asarray(cs["camera_intrinsic"], dtype=np.float64),
            "ego_from_cam": ego_from_cam,
            "width": int(sd["width"]),
            "height": int(sd["height"]),
        }

    fut_idx = list(range(i + 1, min(i + 1 + FUT_STEPS, len(samples))))
    ego_fut, ego_fut_yaw = np.zeros((FUT_STEPS, 2)), np.zeros(FUT_STEPS)
    ego_fut_mask = np.zeros(FUT_STEPS, bool)
    for k, j in enumerate(fut_idx):
        ego_fut[k] = world_to_ego(world_from_ego, poses[j, :2, 3])
        ego_fut_yaw[k] = math.remainder(yaw_of(poses[j]) - ego_yaw, 2 * math.pi)
        ego_fut_mask[k] = True
    ego_his, ego_his_mask = np.zeros((HIS_STEPS, 2)), np.zeros(HIS_STEPS, bool)
    for k in range(HIS_STEPS):
        j = i - HIS_STEPS + k
        if j >= 0:
            ego_his[k] = world_to_ego(world_from_ego, poses[j, :2, 3])
            ego_his_mask[k] = True

    return {
        "token": s["token"],
        "scene_token": scene["token"],
        "scene_name": scene["name"],
        "timestamp": int(s["timestamp"]),
        "prev": s["prev"],
        "next": s["next"],
        "frame_idx": i,
        "world_from_ego": world_from_ego,
        "ego_from_lidar": ego_from_lidar,
        "cams": cams,
        "ego_fut": ego_fut,
        "ego_fut_mask": ego_fut_mask,
        "ego_fut_yaw": ego_fut_yaw,
        "ego_his": ego_his,
        "ego_his_mask": ego_his_mask,
        "command": int(command_from_future(ego_fut, ego_fut_mask)),
        "agents": _agents(nusc, s, world_from_ego),
        "map": map_index.vectors(world_from_ego) if map_index is not None else [],
    }


def _agents(nusc, sample: dict, world_from_ego: np.ndarray) -> dict:
    """Annotated objects of the 10 detection classes (with lidar/radar points, as VAD's valid_flag)."""
    ego_from_world = invert_transform(world_from_ego)
    boxes, labels, inst, vels, futs, fut_masks, fut_yaws = [], [], [], [], [], [], []
    for ann_tok in sample["anns"]:
        ann = _get(nusc, "sample_annotation", ann_tok, f"sample {sample['token']}")
        label = detection_label(ann["category_name"])
        if label < 0 or ann["num_lidar_pts"] + ann["num_radar_pts"] <= 0:
            continue
        world_from_box = pose_to_matrix(ann["translation"], ann["rotation"])
        ego_from_box = ego_from_world @ world_from_box
        w, length, h = ann["size"]
        boxes.append([*ego_from_box[:3, 3], length, w, h, yaw_of(ego_from_box)])
        v = nusc.box_velocity(ann_tok)
        v = np.where(np.isfinite(v), v, 0.0)
        vels.append((ego_from_world[:3, :3] @ v)[:2])
        fut, fut_yaw, mask = np.zeros((FUT_STEPS, 2)), np.zeros(FUT_STEPS), np.zeros(FUT_STEPS, bool)
        nxt = ann["next"]
        for k in range(FUT_STEPS):
            if not nxt:
                break
            a = _get(nusc, "sample_annotation", nxt, f"annotation {ann_tok}")
            m = ego_from_world @ pose_to_matrix(a["translation"], a["rotation"])
            fut[k], fut_yaw[k], mask[k] = m[:2, 3], yaw_of(m), True
            nxt = a["next"]
        labels.append(label)
        inst.append(ann["instance_token"])
        futs.append(fut)
        fut_masks.append(mask)
        fut_yaws.append(fut_yaw)
    n = len(boxes)
    return {
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(n, 7),
        "labels": np.asarray(labels, dtype=np.int64).reshape(n),
        "instance": inst,
        "velocity": np.asarray(vels, dtype=np.float64).reshape(n, 2),
        "fut": np.asarray(futs, dtype=np.float64).reshape(n, FUT_STEPS, 2),
        "fut_mask": np.asarray(fut_masks, dtype=bool).reshape(n, FUT_STEPS),
        "fut_yaw": np.asarray(fut_yaws, dtype=np.float64).reshape(n, FUT_STEPS),
    }


# ----------------------------------------------------------------------------------------------------
# JSON form and helpers other modules use
# ----------------------------------------------------------------------------------------------------
def _tolist(a: np.ndarray, ndigits: int = 6) -> list:
    a = np.asarray(a)
    return (
        a.tolist() if a.dtype == bool or np.issubdtype(a.dtype, np.integer) else np.round(a, ndigits).tolist()
    )


def record_to_json(rec: dict) -> dict:
    """JSON-serialisable copy of a record (arrays -> lists, floats rounded to 1e-6)."""
    out = dict(rec)
    for k in _ARRAYS:
        out[k] = _tolist(rec[k])
    for k in _OPTIONAL_ARRAYS:
        if k in rec:
            out[k] = _tolist(rec[k])
    out["cams"] = {
        n: {**c, "intrinsics": _tolist(c["intrinsics"]), "ego_from_cam": _tolist(c["ego_from_cam"])}
        for n, c in rec["cams"].items()
    }
    out["agents"] = {k: (_tolist(v) if k in _AGENT_ARRAYS else list(v)) for k, v in rec["agents"].items()}
    out["map"] = [{"cls": int(m["cls"]), "pts": _tolist(m["pts"])} for m in rec["map"]]
    return out


def record_from_json(d: dict) -> dict:
    """Inverse of record_to_json: lists back to numpy arrays with the contract's shapes and dtypes."""
    out = dict(d)
    for k, dt in _ARRAYS.items():
        out[k] = np.asarray(d[k], dtype=dt)
    for k, dt in _OPTIONAL_ARRAYS.items():
        if k in d:
            out[k] = np.asarray(d[k], dtype=dt)
    out["cams"] = {
        n: {
            **c,
            "intrinsics": np.asarray(c["intrinsics"], float),
            "ego_from_cam": np.asarray(c["ego_from_cam"], float),
        }
        for n, c in d["cams"].items()
    }
    ag = d["agents"]
    n = len(ag["labels"])
    shapes = {
        "boxes": (n, 7),
        "labels": (n,),
        "velocity": (n, 2),
        "fut": (n, FUT_STEPS, 2),
        "fut_mask": (n, FUT_STEPS),
        "fut_yaw": (n, FUT_STEPS),
    }
    out["agents"] = {
        k: (np.asarray(v, dtype=_AGENT_ARRAYS[k]).reshape(shapes[k]) if k in _AGENT_ARRAYS else list(v))
        for k, v in ag.items()
    }
    out["map"] = [
        {"cls": int(m["cls"]), "pts": np.asarray(m["pts"], float).reshape(MAP_POINTS, 2)} for m in d["map"]
    ]
    return out


def has_full_future(rec: dict) -> bool:
    """True when all 6 future keyframes exist (planning metrics and the teacher's overlay need this)."""
    return bool(np.all(rec["ego_fut_mask"]))


def full_future(rec: dict) -> np.ndarray:
    """The (6, 2) ego future of a record, or a UserError naming the sample when part of it is missing."""
    if not has_full_future(rec):
        n = int(np.sum(rec["ego_fut_mask"]))
        raise UserError(
            f"sample {rec['token']} ({rec['scene_name']} frame {rec['frame_idx']}) has only {n} of "
            f"{FUT_STEPS} future keyframes; skip it (filter with nusc.records.has_full_future)"
        )
    return rec["ego_fut"]


__all__ = [
    "MAP_CLASSES",
    "build_records",
    "MapIndex",
    "record_to_json",
    "record_from_json",
    "has_full_future",
    "full_future",
    "can_bus_vector",
    "motion_from_poses",
    "resample_line",
]
