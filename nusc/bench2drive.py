"""Read Bench2Drive clips (CARLA 0.9.15) into the project's nuScenes-format dataset.

Bench2Drive layout read here (one folder per clip, named `<Scenario>_<Town>_Route<N>_Weather<M>`):

    <clip>/anno/<frame:05d>.json.gz          per-frame annotation at 10 Hz (CARLA, left-handed, degrees)
    <clip>/camera/rgb_<cam>/<frame:05d>.jpg  6 cameras: front, front_left, front_right, back, back_left,
                                             back_right

Fields used from each annotation: `bounding_boxes` (one entry per actor: `class` in ego_vehicle / vehicle /
walker / traffic_light / ...; `id`; `location` [x, y, z]; `rotation` whose last entry is the yaw in
degrees; `extent` half sizes [x, y, z]; `speed` m/s; traffic lights also `state` (carla.TrafficLightState:
0 red, 1 yellow, 2 green) and `affects_ego`), `speed` (ego m/s), `acceleration` and `angular_velocity` (the
ego IMU, CARLA axes) and `command_near` (the route's RoadOption for the next waypoint, what a leaderboard
agent gets at drive time).

Conversion: every 5th frame (0.5 s, 2 Hz) is a keyframe with images, boxes and the privileged state the
rule teacher reads; every frame feeds the CAN bus. All poses go through `vlmad.frames.carla_transform_to_ego`
(flip y, yaw clockwise degrees -> counter-clockwise radians). Pitch and roll of actors are ignored (boxes
are upright, as nuScenes). The CAN bus velocity is the ego `speed` along x (derived: Bench2Drive stores a
scalar speed); accel and rotation rate are the recorded IMU mirrored into right-handed axes (vectors flip
y, angular rates flip x and z). The camera rig is `vlmad.rig.CARLA_RIG` (the Bench2DriveZoo VAD agent's
rig, docs/facts.md) at the clip's image size. The command is stored in the privileged state
(`road_option`, `command` via `vlmad.commands.command_from_road_option`).

HD map (`<maps>/<Town>_HD_map.npz`, Bench2Drive's `tools/gen_hdmap.py` layout, docs/anno.md "HD-Map Data
Structure"): key `arr`, an object array of (road_id, road) pairs; `road` maps a lane id to a list of lane
elements {'Points': [((x, y, z), (roll, pitch, yaw)[, is_junction]), ...], 'Type', 'Color', 'Topology', ...},
in CARLA world coordinates (left-handed, metres, every 0.05 m). Per lane, one or more 'Center' elements
(the lane centre line) and the lane markings of both sides (Type = str(carla.LaneMarkingType): 'Broken',
'Solid', 'SolidSolid', ..., 'NONE'), sampled at +-lane_width / 2 from the centre; a road may also hold
'Trigger_Volumes' (stop signs, lights: not map vectors here). Some redistributions add a top-level
'Crosswalks' list ({'Polygon': shapely Polygon or 'Points'}); the official files have none. The project's
3 classes (nusc.classes.MAP_CLASSES) are made as the offline world makes them (world.geometry):
- boundary: one drivable polygon per lane centre element (the centre offset by +-half its width, the width
  measured as twice the distance from the centre to the lane's own marking samples); the record builder
  takes the outline of their union, so road edges and junction outlines come out as VAD's boundary.
- divider: painted markings (not 'NONE' / 'Other') that separate two driving lanes: some *other* lane's
  centre lies within its half width (+0.5 m) of the marking; road-edge lines fail that test. The shared
  centre line of two opposite lanes is stored by both lanes: kept once.
- ped_crossing: the 'Crosswalks' polygons when the file has them, else none (flagged in the scene
  description, `hd_map_crosswalks`).
Only elements within MAP_MARGIN_M of a town's clips are converted (a town file covers kilometres).
The file holds pickled Python objects (np.load allow_pickle): read only files from Bench2Drive's release.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from nusc.writer import AgentBox, DriveFrame, RecordedDrive
from vlmad.commands import RoadOption, command_from_road_option
from vlmad.errors import UserError
from vlmad.frames import carla_to_ego_xyz, carla_transform_to_ego, carla_yaw_to_ego
from vlmad.rig import CARLA_RIG

SOURCE = "bench2drive"
FRAME_HZ = 10
KEYFRAME_EVERY = 5  # 10 Hz frames per 2 Hz keyframe
FRAME_US = 1_000_000 // FRAME_HZ
BASE_TIME_US = 1_700_000_000_000_000
BOX_RANGE_M = 60.0  # annotate actors within this distance of the ego (as the offline world)
# Bench2Drive camera folder -> nuScenes channel
CAMERA_DIRS = {
    "CAM_FRONT": "rgb_front",
    "CAM_FRONT_RIGHT": "rgb_front_right",
    "CAM_FRONT_LEFT": "rgb_front_left",
    "CAM_BACK": "rgb_back",
    "CAM_BACK_LEFT": "rgb_back_left",
    "CAM_BACK_RIGHT": "rgb_back_right",
}
LIGHT_STATES = {0: "red", 1: "yellow", 2: "green"}  # carla.TrafficLightState values
TOWN_RE = re.compile(r"(Town\d+\w*?)(?=_|$)")


def clip_town(clip: Path) -> str:
    """The CARLA town in a clip folder's name (e.g. `Accident_Town03_Route101_Weather23` -> Town03)."""
    m = TOWN_RE.search(clip.name)
    if not m:
        raise UserError(f"clip {clip.name!r}: no town (TownNN) in its name")
    return m.group(1)


def list_clips(src: Path, towns: list[str] | None = None, exclude: list[str] | None = None,
               clips: list[str] | None = None) -> list[Path]:
    """Clip folders under `src` (sorted by name), filtered by town and by name."""
    if not src.is_dir():
        raise UserError(f"Bench2Drive root {src} does not exist")
    found = sorted(p for p in src.iterdir() if p.is_dir() and (p / "anno").is_dir())
    if clips:
        names = {p.name for p in found}
        missing = [c for c in clips if c not in names]
        if missing:
            raise UserError(f"clip(s) not found under {src} (or without anno/): {missing}")
        found = [p for p in found if p.name in set(clips)]
    if towns:
        found = [p for p in found if clip_town(p) in set(towns)]
    if exclude:
        found = [p for p in found if clip_town(p) not in set(exclude)]
    return found


def _load_anno(path: Path) -> dict:
    try:
        with gzip.open(path, "rt") as f:
            anno = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise UserError(f"malformed annotation {path}: {e}") from None
    if not isinstance(anno, dict) or not isinstance(anno.get("bounding_boxes"), list):
        raise UserError(f"malformed annotation {path}: no 'bounding_boxes' list")
    return anno


def _box_pose(b: dict, where: Path) -> tuple[np.ndarray, float]:
    try:
        loc = [float(v) for v in b["location"]]
        yaw = float(b["rotation"][-1])
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"malformed annotation {where}: box {b.get('id')!r} lacks location/rotation"
                        ) from None
    return np.asarray(carla_to_ego_xyz(*loc), float), float(carla_yaw_to_ego(yaw))


def _category(b: dict) -> str | None:
    return carla_category(str(b.get("class")), str(b.get("type_id", "")))


def carla_category(cls: str, tid: str) -> str | None:
    """nuScenes category of a CARLA actor: `cls` "vehicle" | "walker" (else None), `tid` its blueprint id."""
    if cls == "walker":
        return "human.pedestrian.adult"
    if cls == "vehicle":
        if any(k in tid for k in ("bh.crossbike", "diamondback", "gazelle")):
            return "vehicle.bicycle"
        if any(k in tid for k in ("harley", "kawasaki", "yamaha", "vespa")):
            return "vehicle.motorcycle"
        if any(k in tid for k in ("firetruck", "carlacola", "ambulance", "european_hgv", "sprinter")):
            return "vehicle.truck"
        if "bus" in tid:
            return "vehicle.bus.rigid"
        return "vehicle.car"
    return None


def convert_frame(anno: dict, where: Path, t_us: int, key: bool, images: dict[str, np.ndarray]) -> DriveFrame:
    """One Bench2Drive annotation as a DriveFrame (boxes and privileged state only when `key`)."""
    ego = [b for b in anno["bounding_boxes"] if b.get("class") == "ego_vehicle"]
    if len(ego) != 1:
        raise UserError(f"malformed annotation {where}: expected one ego_vehicle box, got {len(ego)}")
    e = ego[0]
    loc = [float(v) for v in e["location"]]
    rot = [float(v) for v in e["rotation"]]
    # rotation's last entry is the yaw; pitch/roll are ignored (ego pose kept level, as the writer's boxes)
    world_from_ego = carla_transform_to_ego(loc[0], loc[1], loc[2], 0.0, 0.0, rot[-1])
    speed = float(anno.get("speed", e.get("speed", 0.0)))
    acc = anno.get("acceleration")
    gyro = anno.get("angular_velocity")
    frame = DriveFrame(
        timestamp_us=t_us,
        world_from_ego=world_from_ego,
        images=images,
        boxes=[],
        is_keyframe=key,
        accel=None if acc is None else np.array([acc[0], -acc[1], acc[2]], float),
        rotation_rate=None if gyro is None else np.array([-gyro[0], gyro[1], -gyro[2]], float),
        velocity=np.array([speed, 0.0, 0.0]),
    )
    if not key:
        return frame
    ego_xy = world_from_ego[:2, 3]
    light = None
    for b in anno["bounding_boxes"]:
        if b.get("class") == "traffic_light" and b.get("affects_ego"):
            light = LIGHT_STATES.get(int(b.get("state", -1)))
        cat = _category(b)
        if cat is None:
            continue
        c, yaw = _box_pose(b, where)
        if math.hypot(*(c[:2] - ego_xy)) > BOX_RANGE_M:
            continue
        ext = [float(v) for v in b.get("extent", (0.5, 0.5, 0.5))]
        c = c + np.array([0.0, 0.0, ext[2]])  # CARLA location is the actor's base; nuScenes wants centres
        v = float(b.get("speed", 0.0))
        frame.boxes.append(AgentBox(
            f"{'ped' if cat.startswith('human') else 'veh'}-{b.get('id')}", cat, c,
            np.array([2 * ext[0], 2 * ext[1], 2 * ext[2]]), yaw,
            np.array([v * math.cos(yaw), v * math.sin(yaw)]),
        ))
    try:
        option = RoadOption(int(anno.get("command_near", -1)))
    except ValueError:
        raise UserError(f"malformed annotation {where}: command_near {anno.get('command_near')!r} is not a "
                        "CARLA RoadOption") from None
    frame.privileged = {
        "source": SOURCE,
        "traffic_light": light,
        "road_option": option.name,  # the name, as the offline world's expert records it
        "command": int(command_from_road_option(option)),
        "speed": speed,
        "can_bus_velocity_derived": True,  # from the scalar speed
    }
    return frame


class ClipImages(Mapping):
    """One keyframe's 6 camera images (RGB uint8), decoded from the clip's JPEGs when read.

    The writer reads them one at a time, so an import holds one image in memory, not the whole dataset's
    (40k keyframes x 6 x 1600x900x3 bytes would be ~1 TB). Missing files are an error at conversion
    (named); an unreadable one when the writer reads it (named, nothing written)."""

    def __init__(self, clip: Path, stem: str):
        self.clip, self.stem = clip, stem
        for ch in CAMERA_DIRS:
            if not self.path(ch).is_file():
                raise UserError(f"missing or unreadable image {self.path(ch)}")

    def path(self, channel: str) -> Path:
        return self.clip / "camera" / CAMERA_DIRS[channel] / f"{self.stem}.jpg"

    def __getitem__(self, channel: str) -> np.ndarray:
        if channel not in CAMERA_DIRS:
            raise KeyError(channel)
        return _read_image(self.path(channel))

    def __iter__(self):
        return iter(CAMERA_DIRS)

    def __len__(self) -> int:
        return len(CAMERA_DIRS)


def attach_clip_images(drive: RecordedDrive, clip: Path) -> RecordedDrive:
    """Re-attach the lazily read images to a clip's drive read back from the importer's cache (which
    stores no images: they are in the clip already)."""
    for f in drive.frames:
        if f.is_keyframe:
            f.images = ClipImages(clip, str(f.privileged["b2d_frame"]))
    return drive


def _read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"missing or unreadable image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def convert_clip(clip: Path, scene_idx: int) -> RecordedDrive:
    """A Bench2Drive clip folder as one RecordedDrive named scene-<scene_idx + 1>."""
    annos = sorted((clip / "anno").glob("*.json.gz"))
    if len(annos) < KEYFRAME_EVERY + 1:
        raise UserError(f"clip {clip.name}: needs at least {KEYFRAME_EVERY + 1} annotated frames "
                        f"(2 keyframes), found {len(annos)}")
    try:
        numbers = [int(p.name[: -len(".json.gz")]) for p in annos]
    except ValueError:
        raise UserError(f"clip {clip.name}: annotation names must be <frame number>.json.gz") from None
    gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if gaps:  # a gap would silently break the 0.5 s keyframe spacing
        raise UserError(f"clip {clip.name}: annotation frame(s) missing: {gaps[:10]}")
    base = BASE_TIME_US + scene_idx * 1_000_000_000
    frames = []
    for i, path in enumerate(annos):
        key = i % KEYFRAME_EVERY == 0
        images = {}
        if key:
            images = ClipImages(clip, path.name[: -len(".json.gz")])
        frames.append(convert_frame(_load_anno(path), path, base + i * FRAME_US, key, images))
        if key:
            frames[-1].privileged["b2d_frame"] = images.stem  # to re-attach the images to a cached clip
    h, w = next(f for f in frames if f.is_keyframe).images["CAM_FRONT"].shape[:2]
    return RecordedDrive(
        scene_name=f"scene-{scene_idx + 1:04d}",
        location=clip_town(clip),
        rig=CARLA_RIG.with_image_size(w, h),
        frames=frames,
        map_polylines=[],
        description=f"Bench2Drive clip {clip.name} (CARLA 0.9.15)",
    )


# ----------------------------------------------------------------------------------------------------
# HD map -> map polylines (divider / ped_crossing / boundary), see the module docstring
# ----------------------------------------------------------------------------------------------------
MAP_FILE = "{town}_HD_map.npz"
MAP_MARGIN_M = 50.0  # convert map elements within this distance of a clip's ego positions (patch: 60 x 30 m)
MAP_STEP_M = 1.0  # resample spacing of the converted polylines (the files sample every 0.05 m)
NOT_PAINTED = {"NONE", "Other", "Grass", "Curb"}  # carla.LaneMarkingType names that are no painted line
DIVIDER_TOL_M = 0.5  # a marking is a divider when another lane's centre is within its half width + this


def load_hd_map(path: Path) -> dict:
    """A Bench2Drive `<Town>_HD_map.npz` as {road_id: road dict} (plus 'Crosswalks' when present)."""
    if not path.is_file():
        raise UserError(f"HD map {path} not found: pass --maps DIR holding Bench2Drive's <Town>_HD_map.npz "
                        "(the Bench2Drive-Map release)")
    try:
        with np.load(path, allow_pickle=True) as z:
            arr = z["arr"]
        out = {k: v for k, v in arr.tolist()} if arr.ndim == 2 else dict(arr.item())
    except (OSError, KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"malformed HD map {path}: {e} (expected key 'arr' of (road_id, road) pairs)"
                        ) from None
    if not all(isinstance(v, (dict, list)) for v in out.values()):
        raise UserError(f"malformed HD map {path}: roads must be dicts of lane id -> lane elements")
    return out


def _element_xy(el: dict, where: Path) -> np.ndarray:
    """(N, 2) points of one lane element in our frame, resampled every MAP_STEP_M (ends kept)."""
    try:
        raw = np.array([[float(p[0][0]), float(p[0][1])] for p in el["Points"]], float).reshape(-1, 2)
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"malformed HD map {where}: a lane element lacks 'Points' ((x, y, z), rotation)"
                        ) from None
    xy = carla_to_ego_xyz(raw[:, 0], raw[:, 1])[:, :2]
    if len(xy) < 2:
        return xy
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    if s[-1] <= MAP_STEP_M:
        return xy[[0, -1]]
    keep = np.unique(np.searchsorted(s, np.arange(0.0, s[-1], MAP_STEP_M)))
    return xy[np.unique(np.concatenate([keep, [len(xy) - 1]]))]


def _left_normals(xy: np.ndarray) -> np.ndarray:
    """(N, 2) unit normals to the left of a polyline's direction (our frame, y left)."""
    d = np.gradient(xy, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    return np.stack([-d[:, 1], d[:, 0]], axis=1)


def _strip_polygon(center: np.ndarray, half_width: np.ndarray) -> np.ndarray | None:
    """Closed (M, 2) outline of a lane strip, made valid (a strip folding on a sharp curve is repaired)."""
    from shapely import make_valid
    from shapely.geometry import Polygon

    n = _left_normals(center)
    ring = np.concatenate([center + n * half_width[:, None], (center - n * half_width[:, None])[::-1]])
    poly = make_valid(Polygon(ring))
    parts = [poly] if poly.geom_type == "Polygon" else [g for g in getattr(poly, "geoms", [])
                                                         if g.geom_type == "Polygon"]
    if not parts:
        return None
    best = max(parts, key=lambda g: g.area)
    if best.area < 1e-3:
        return None
    return np.asarray(best.exterior.coords)[:, :2]


def hd_map_polylines(hd: dict, centres_xy: np.ndarray, where: Path
                     ) -> tuple[list[tuple[str, np.ndarray]], bool]:
    """Map polylines (class, (N, 2) world points, our frame) of the HD map near `centres_xy` (K, 2).

    Returns (polylines, has_crosswalks). See the module docstring for the class rules."""
    from scipy.spatial import cKDTree
    from shapely.geometry import LineString

    near_tree = cKDTree(np.asarray(centres_xy, float).reshape(-1, 2))

    def near(xy: np.ndarray) -> bool:
        d = near_tree.query(xy, distance_upper_bound=MAP_MARGIN_M)[0]
        return bool(len(xy)) and bool(np.isfinite(d).any())

    lanes: list[tuple[np.ndarray, np.ndarray]] = []  # (centre (N, 2), half width (N,))
    lane_of: list[int] = []  # lane key index per centre element
    markings: list[tuple[int, np.ndarray]] = []  # (lane key index, (N, 2)) painted markings
    keys: dict[tuple, int] = {}
    for road_id, road in hd.items():
        if road_id == "Crosswalks" or not isinstance(road, dict):
            continue
        for lane_id, elements in road.items():
            if lane_id in ("Trigger_Volumes", "TriggerVolumes") or not isinstance(elements, list):
                continue
            parsed = [(str(el.get("Type")), _element_xy(el, where)) for el in elements]
            if not any(near(xy) for _, xy in parsed):
                continue
            k = keys.setdefault((road_id, lane_id), len(keys))
            marks = [xy for t, xy in parsed if t != "Center" and len(xy) >= 2]
            mark_pts = np.concatenate(marks) if marks else np.zeros((0, 2))
            for t, xy in parsed:
                if len(xy) < 2:
                    continue
                if t == "Center":
                    if len(mark_pts):  # markings lie at +-width / 2 from the centre
                        half = cKDTree(mark_pts).query(xy)[0]
                    else:
                        half = np.full(len(xy), 1.75)  # no marking recorded: a 3.5 m lane
                    lanes.append((xy, np.clip(half, 0.5, 4.0)))
                    lane_of.append(k)
                elif t not in NOT_PAINTED:
                    markings.append((k, xy))
    out: list[tuple[str, np.ndarray]] = []
    if lanes:
        c_pts = np.concatenate([c for c, _ in lanes])
        c_half = np.concatenate([h for _, h in lanes])
        c_lane = np.concatenate([np.full(len(c), lane_of[i]) for i, (c, _) in enumerate(lanes)])
        c_tree = cKDTree(c_pts)
        kept: list[LineString] = []
        for k, xy in markings:
            # the nearest centre points of *other* lanes (a few candidates: the own lane is nearest first)
            dist, idx = c_tree.query(xy, k=min(8, len(c_pts)))
            dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
            other = c_lane[idx] != k
            borders = (dist <= c_half[idx] + DIVIDER_TOL_M) & other
            if borders.any(axis=1).mean() < 0.5:
                continue  # a road edge (or a marking beside a non-driving lane)
            line = LineString(xy)
            if any(line.hausdorff_distance(g) < DIVIDER_TOL_M for g in kept
                   if g.distance(line) < DIVIDER_TOL_M):
                continue  # the same painted line, stored by the lane on its other side
            kept.append(line)
            out.append(("divider", xy))
        for c, h in lanes:
            ring = _strip_polygon(c, h)
            if ring is not None:
                out.append(("boundary", ring))
    crosswalks = hd.get("Crosswalks")
    for cw in crosswalks or []:
        try:
            geom = cw.get("Polygon")
            raw = geom.exterior.coords if geom is not None else cw["Points"]
            pts = np.array([[float(p[0]), float(p[1])] for p in raw], float).reshape(-1, 2)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            pts = np.zeros((0, 2))
        if len(pts) < 3:
            raise UserError(f"malformed HD map {where}: a crosswalk has no 'Polygon' / 'Points'")
        xy = carla_to_ego_xyz(pts[:, 0], pts[:, 1])[:, :2]
        if not np.allclose(xy[0], xy[-1]):
            xy = np.concatenate([xy, xy[:1]])  # closed, as the writer's polygons
        if near(xy):
            out.append(("ped_crossing", xy))
    return out, crosswalks is not None


def attach_town_maps(drives: list[RecordedDrive], maps_dir: Path) -> dict[str, int]:
    """Give each town's map polylines to the first drive of that town (the writer builds one map expansion
    per location from all its drives' polylines: once is enough). Returns {town: number of polylines}."""
    by_town: dict[str, list[RecordedDrive]] = {}
    for d in drives:
        by_town.setdefault(d.location, []).append(d)
    counts = {}
    for town, ds in sorted(by_town.items()):
        path = maps_dir / MAP_FILE.format(town=town)
        centres = np.concatenate([np.stack([f.world_from_ego[:2, 3] for f in d.frames]) for d in ds])
        polys, has_cw = hd_map_polylines(load_hd_map(path), centres, path)
        for d in ds:
            d.map_polylines = []
        ds[0].map_polylines = polys
        if not has_cw:
            for d in ds:
                d.description += "; hd_map_crosswalks: none (the HD map file has no 'Crosswalks')"
        counts[town] = len(polys)
    return counts


def cached_drive_rig(drive: RecordedDrive):
    """The rig of a drive read back from a cache (world.collect.load_drive): CARLA_RIG at its images' size."""
    img = next(f for f in drive.frames if f.is_keyframe).images["CAM_FRONT"]
    return CARLA_RIG.with_image_size(img.shape[1], img.shape[0])
