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

Not converted yet: HD map vectors (Bench2Drive's `maps/*_HD_map.npz`), so records have an empty `map`.
"""

from __future__ import annotations

import gzip
import json
import math
import re
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
    cls = b.get("class")
    if cls == "walker":
        return "human.pedestrian.adult"
    if cls == "vehicle":
        tid = str(b.get("type_id", ""))
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
            stem = path.name[: -len(".json.gz")]
            images = {ch: _read_image(clip / "camera" / d / f"{stem}.jpg") for ch, d in CAMERA_DIRS.items()}
        frames.append(convert_frame(_load_anno(path), path, base + i * FRAME_US, key, images))
    h, w = next(f for f in frames if f.is_keyframe).images["CAM_FRONT"].shape[:2]
    return RecordedDrive(
        scene_name=f"scene-{scene_idx + 1:04d}",
        location=clip_town(clip),
        rig=CARLA_RIG.with_image_size(w, h),
        frames=frames,
        map_polylines=[],
        description=f"Bench2Drive clip {clip.name} (CARLA 0.9.15)",
    )
