"""Data collection in the offline world: expert drives recorded as nuScenes-format scenes.

Each drive is one random route driven by the privileged expert. Every 10th simulation step (2 Hz) is a
keyframe with the rig's 6 camera images, the annotated boxes (instance ids stable over the drive) and the
expert's privileged state for the rule teacher; every 2nd step (10 Hz) is a CAN-bus-only frame. The
drives are written through `nusc.writer.write_nuscenes` with the town's map polylines.

Collection resumes: each finished drive is cached as `<out>.parts/drive_NNNN.npz` (written atomically),
so an interrupted run restarts at the first missing drive; the dataset is written at the end in one
atomic move, and the cache is removed.

The driving command stored with each keyframe (`privileged["command"]`) is the one the deployed agent
computes at that moment: the leaderboard's downsampled plan followed by the agent's own route planner
(agent.route), its RoadOption mapped to VAD's mode. A command derived from the future path (nuScenes'
convention) disagrees with it on curved lane-follow roads, and the planner then learns one mode and is
asked for another at drive time (docs/data_contract.md).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np

from agent.compat import downsample_route
from agent.options import AgentConfig
from agent.route import RoutePlanner, planner_from_world_plan
from nusc.writer import AgentBox, DriveFrame, RecordedDrive
from routes.parse import Route
from vlmad.io import atomic_write_bytes
from vlmad.rig import CARLA_RIG, Rig
from world.config import LABEL, SOURCE, WorldConfig
from world.expert import ExpertAgent
from world.global_planner import interpolate_trajectory, keypoint_locations
from world.road_map import RoadMap, random_routes
from world.runner import OfflineRunner, StepView
from world.sensors import specific_force
from world.sim import OfflineWorld

KEYFRAME_EVERY = 10  # 20 Hz steps per keyframe (2 Hz)
CAN_EVERY = 2  # steps per CAN-bus frame (10 Hz)
BOX_RANGE_M = 60.0  # annotate actors within this distance of the ego
BASE_TIME_US = 1_600_000_000_000_000  # timestamps start here (+ 1000 s per drive)
LEADERBOARD_SAMPLE_M = 50  # AutonomousAgent.set_global_plan's downsample_route(route, 50) (leaderboard 1.0)


def agent_route_planner(rmap: RoadMap, spec: Route) -> RoutePlanner:
    """The route planner the deployed agent builds for `spec`: the dense leaderboard route, downsampled as
    the leaderboard's agent base class does, then agent.route's planner with the agent's default radii."""
    _, route = interpolate_trajectory(rmap.planner, keypoint_locations(spec))
    plan = [route[i] for i in downsample_route(route, LEADERBOARD_SAMPLE_M)]
    opts = AgentConfig()
    return planner_from_world_plan(plan, opts.route_min_distance, opts.route_max_distance)


def dataset_rig(cfg: WorldConfig) -> Rig:
    """The collected dataset's camera rig: the CARLA VAD agent's rig at the configured image size."""
    return CARLA_RIG.with_image_size(cfg.image_width, cfg.image_height)


def collect_drive(
    runner: OfflineRunner, drive_idx: int, keyframes: int, seed: int, progress=None
) -> RecordedDrive | None:
    """Drive one random route with the expert and record it; None when the route ended before 2 keyframes."""
    cfg, rmap = runner.cfg, runner.rmap
    rig = dataset_rig(cfg)
    rng = np.random.default_rng([seed, drive_idx])
    length = keyframes * KEYFRAME_EVERY * cfg.dt * cfg.expert.cruise_speed * 1.3 + 60.0
    spec = random_routes(rmap, 1, rng, min_length=length, max_length=length * 1.2, first_id=drive_idx)[0]
    recorder = DriveRecorder(runner, rig, BASE_TIME_US + drive_idx * 1_000_000_000,
                             agent_route_planner(rmap, spec), progress)
    record = runner.run_route(
        lambda: ExpertAgent("", cfg.expert),
        spec,
        drive_idx,
        on_step=recorder,
        max_steps=keyframes * KEYFRAME_EVERY,
    )
    frames = recorder.frames
    if sum(f.is_keyframe for f in frames) < 2:
        return None
    desc = (
        f"{LABEL}. Expert drive on {rmap.name}, seed {seed}, drive {drive_idx}, route status "
        f"{record['status']!r}."
    )
    return RecordedDrive(
        scene_name=f"scene-{drive_idx + 1:04d}",
        location=rmap.name,
        rig=rig,
        frames=frames,
        map_polylines=[],
        description=desc,
    )


class DriveRecorder:
    """The recording schedule of one drive, as a runner `on_step` hook: a CAN-bus frame every CAN_EVERY
    steps, a keyframe (images, boxes, privileged state) every KEYFRAME_EVERY steps.

    The route planner is stepped every tick, as the agent steps its own (which points it pops depends on
    the path driven); at each keyframe its command is stored as `privileged["command"]` and its target
    point (world frame, the CARLA variant's goal point) as `privileged["route_target"]`."""

    def __init__(self, runner: OfflineRunner, rig: Rig, base_us: int, route_planner: RoutePlanner | None,
                 progress=None) -> None:
        self.runner, self.rig, self.base_us = runner, rig, base_us
        self.route_planner, self.progress = route_planner, progress
        self.frames: list[DriveFrame] = []
        self.steps = 0

    def __call__(self, view: StepView) -> None:
        self.steps += 1
        target = None
        if self.route_planner is not None:
            target = self.route_planner.run_step(np.array([view.world.ego.x, view.world.ego.y]))
        if self.steps % CAN_EVERY:
            return
        key = self.steps % KEYFRAME_EVERY == 0
        info = dict(getattr(view.agent, "info", {}) or {})
        if target is not None:
            info["command"] = int(target.command)  # VAD's mode from the route's RoadOption
            info["route_target"] = [float(target.xy[0]), float(target.xy[1])]  # world frame: the goal point
        self.frames.append(record_frame(self.runner, view.world, self.rig, self.base_us, key, info))
        if key and self.progress is not None:
            self.progress.update(1)


def record_frame(runner: OfflineRunner, w: OfflineWorld, rig: Rig, base_us: int, key: bool,
                 info: dict | None = None) -> DriveFrame:
    """The DriveFrame of the world's current state (time `base_us` + w.t): pose and CAN bus values, plus
    images, boxes and the expert's privileged `info` when `key`. The CAN bus `accel` is the specific force
    (with gravity), exactly what the agent's IMU reads (world.sensors.specific_force): the dataset's
    can_bus[7:10] and the closed-loop agent's must agree (tests/test_parity_agent_dataset.py)."""
    frame = DriveFrame(
        timestamp_us=base_us + int(round(w.t * 1e6)),
        world_from_ego=w.world_from_ego(),
        images={},
        boxes=[],
        is_keyframe=key,
        accel=specific_force(w.world_from_ego(), w.ego_accel()),
        rotation_rate=w.ego_gyro(),
        velocity=w.ego_velocity(),
    )
    if key:
        frame.images = runner.render(w, rig)
        frame.boxes = _boxes(w)
        frame.privileged = {**_jsonable(info or {}), "source": SOURCE}
    return frame


def _boxes(w) -> list[AgentBox]:
    out = []
    for a in w.actors():
        if math.hypot(a["center"][0] - w.ego.x, a["center"][1] - w.ego.y) > BOX_RANGE_M:
            continue
        prefix = "ped" if a["category"].startswith("human") else "veh"
        out.append(
            AgentBox(
                f"{prefix}-{a['id']}",
                a["category"],
                np.asarray(a["center"], float),
                np.asarray(a["size"], float),
                float(a["yaw"]),
                np.asarray(a["velocity"], float),
            )
        )
    return out


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def map_polylines(rmap: RoadMap) -> list[tuple[str, np.ndarray]]:
    """The town's VAD map elements (divider / ped_crossing / boundary) in the world frame."""
    from world.geometry import RoadGeometry

    return RoadGeometry.from_map(rmap.cmap).map_polylines()


# ----------------------------------------------------------------------------------------------------
# Drive cache (resume)
# ----------------------------------------------------------------------------------------------------
def save_drive(path: Path, drive: RecordedDrive) -> None:
    """Cache a recorded drive as one .npz (images as arrays, everything else as JSON), atomically."""
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "scene_name": drive.scene_name,
        "location": drive.location,
        "description": drive.description,
        "rig": drive.rig.name,
        "width": drive.rig.cameras[0].width,
        "height": drive.rig.cameras[0].height,
        "frames": [],
    }
    for i, f in enumerate(drive.frames):
        fm = {
            "t": f.timestamp_us,
            "pose": f.world_from_ego.tolist(),
            "key": f.is_keyframe,
            "accel": None if f.accel is None else np.asarray(f.accel).tolist(),
            "rate": None if f.rotation_rate is None else np.asarray(f.rotation_rate).tolist(),
            "vel": None if f.velocity is None else np.asarray(f.velocity).tolist(),
            "priv": f.privileged,
            "boxes": [
                {
                    "id": b.instance_id,
                    "cat": b.category,
                    "c": np.asarray(b.center).tolist(),
                    "s": np.asarray(b.size).tolist(),
                    "yaw": b.yaw,
                    "v": np.asarray(b.velocity).tolist(),
                }
                for b in f.boxes
            ],
            "cams": sorted(f.images),
        }
        for cam, img in f.images.items():
            arrays[f"{i}/{cam}"] = img
        meta["frames"].append(fm)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_drive(path: Path, rig: Rig) -> RecordedDrive:
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        frames = []
        for i, fm in enumerate(meta["frames"]):
            frames.append(
                DriveFrame(
                    timestamp_us=int(fm["t"]),
                    world_from_ego=np.array(fm["pose"]),
                    images={c: z[f"{i}/{c}"] for c in fm["cams"]},
                    boxes=[
                        AgentBox(
                            b["id"],
                            b["cat"],
                            np.array(b["c"]),
                            np.array(b["s"]),
                            float(b["yaw"]),
                            np.array(b["v"]),
                        )
                        for b in fm["boxes"]
                    ],
                    is_keyframe=bool(fm["key"]),
                    accel=None if fm["accel"] is None else np.array(fm["accel"]),
                    rotation_rate=None if fm["rate"] is None else np.array(fm["rate"]),
                    velocity=None if fm["vel"] is None else np.array(fm["vel"]),
                    privileged=fm["priv"],
                )
            )
    return RecordedDrive(meta["scene_name"], meta["location"], rig, frames, [], meta["description"])


def collect(
    runner: OfflineRunner,
    out: Path,
    version: str,
    drives: int,
    keyframes: int,
    seed: int,
    progress=None,
    overwrite: bool = False,
) -> tuple[Path, int]:
    """Collect `drives` expert drives into a nuScenes-format dataset at `out`; returns (out, keyframes)."""
    from nusc.writer import write_nuscenes

    parts = out.parent / f"{out.name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    rig = dataset_rig(runner.cfg)
    recorded: list[RecordedDrive] = []
    for d in range(drives):
        path = parts / f"drive_{d:04d}.npz"
        if path.is_file():
            drive = load_drive(path, rig)
            if progress is not None:
                progress.update(sum(f.is_keyframe for f in drive.frames))
        else:
            drive = collect_drive(runner, d, keyframes, seed, progress)
            if drive is None:
                continue
            save_drive(path, drive)
        recorded.append(drive)
    if not recorded:
        raise RuntimeError("no drive produced at least 2 keyframes")
    polys = map_polylines(runner.rmap)
    for drive in recorded:
        drive.map_polylines = polys
    write_nuscenes(out, version, recorded, overwrite=overwrite)
    shutil.rmtree(parts, ignore_errors=True)
    return out, sum(sum(f.is_keyframe for f in dr.frames) for dr in recorded)
