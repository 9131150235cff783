"""Leaderboard data-collection agent (track MAP): the offline world's expert, driving in CARLA, recorded.

Run by `carla_eval/collect.sh` (through carla_eval/launcher.py: parallel servers, crash restarts,
resume). `--agent-config` is the folder the drives go to (collect.sh passes OUT/parts).

Per route the agent
- reads the world through the leaderboard's `CarlaDataProvider` (world, map, the hero vehicle) into
  carla_eval.expert_carla.CarlaExpertWorld, one snapshot per tick;
- drives with world.expert_core.ExpertDriver, the same decision logic as the offline world's expert
  (world/expert.py), on the dense route the leaderboard hands to `set_global_plan`;
- records as the offline collector (world/collect.py) does: every 2nd tick (10 Hz at the leaderboard's
  20 Hz) a CAN-bus frame (pose from the hero's transform, velocity from the hero, accel and rotation rate
  from the IMU sensor, as the deployed agent reads them), every 10th (2 Hz) a keyframe with the rig's 6
  camera images (vlmad.rig.CARLA_RIG at the offline world's image size), the boxes of actors within 60 m,
  and the privileged state: the expert's `info` plus the route command the deployed agent computes
  (`privileged["command"]`: the leaderboard's downsampled plan through agent.route's planner, its
  RoadOption mapped to VAD's mode) and its target point (`privileged["route_target"]`);
- at `destroy` writes the drive (world.collect.save_drive) to `<parts>/<town>_<route hash>_<time>.npz`
  and the town's OpenDRIVE (`<town>.xodr`, for the map vectors) once; `python -m carla_eval.collect
  finalize` turns the parts into the nuScenes-format dataset.

All CARLA -> project conversions go through vlmad.frames.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import carla
import numpy as np

from agent.compat import AutonomousAgent, Track
from agent.options import AgentConfig
from agent.route import planner_from_world_plan
from agent.sensing import SensorError, read_sensors
from carla_eval.expert_carla import CarlaExpertWorld
from nusc.bench2drive import carla_category
from nusc.writer import AgentBox, DriveFrame, RecordedDrive
from vlmad.frames import carla_location_to_ego, carla_transform_to_ego
from vlmad.io import atomic_write_bytes
from world.collect import BOX_RANGE_M, CAN_EVERY, KEYFRAME_EVERY, _jsonable, dataset_rig, save_drive
from world.config import WorldConfig
from world.expert_core import ExpertDriver

log = logging.getLogger(__name__)
SOURCE = "carla"  # privileged["source"] of collected frames
MAX_SENSOR_LAG = 1  # frames a sensor may trail the newest one


def get_entry_point() -> str:
    return "CollectAgent"


def carla_data_provider():
    """The leaderboard's CarlaDataProvider (scenario_runner), imported when the agent first drives."""
    from srunner.scenariomanager.carla_data_provider import CarlaDataProvider

    return CarlaDataProvider


def find_hero(world):
    """The ego vehicle the leaderboard spawned (role_name 'hero')."""
    for a in world.get_actors().filter("vehicle.*"):
        if a.attributes.get("role_name") == "hero":
            return a
    raise RuntimeError("no vehicle with role_name 'hero' in the world")


def town_of(cmap) -> str:
    """'Carla/Maps/Town01' (or 'Town01') -> 'Town01'."""
    return str(cmap.name).rsplit("/", 1)[-1]


def route_hash(world_plan: list) -> str:
    """A short id of a dense route (its first and last locations and length): names the drive file."""
    a, b = world_plan[0][0].location, world_plan[-1][0].location
    key = f"{a.x:.1f},{a.y:.1f},{b.x:.1f},{b.y:.1f},{len(world_plan)}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]


class CollectAgent(AutonomousAgent):
    """Privileged expert + dataset recorder (see the module docstring)."""

    provider = None  # CarlaDataProvider stand-in (tests); None = the leaderboard's
    image_size: tuple[int, int] | None = None  # camera (W, H); None = WorldConfig's, as the offline data

    def setup(self, path_to_conf_file: str) -> None:
        self.track = Track.MAP
        if not path_to_conf_file:
            raise ValueError("CollectAgent needs --agent-config: the folder to write the drives to")
        self.parts = Path(path_to_conf_file)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.cfg = WorldConfig()
        if self.image_size is not None:
            self.cfg.image_width, self.cfg.image_height = self.image_size
        self.rig = dataset_rig(self.cfg)
        self.expert = ExpertDriver(self.cfg.expert)
        self.view: CarlaExpertWorld | None = None
        self.route = None
        self.frames: list[DriveFrame] = []
        self.steps = 0
        self.town = ""
        self.name = ""
        self._xodr = ""

    def sensors(self) -> list[dict]:
        """The rig's 6 cameras, GNSS, IMU, speedometer: what the deployed agent gets."""
        return self.rig.carla_sensors()

    def set_global_plan(self, global_plan_gps: list, global_plan_world_coord: list) -> None:
        super().set_global_plan(global_plan_gps, global_plan_world_coord)  # the agent's downsampled plan
        self.expert._plan = list(global_plan_world_coord)  # the expert drives the dense route
        opts = AgentConfig()
        self.route = planner_from_world_plan(self._global_plan_world_coord, opts.route_min_distance,
                                             opts.route_max_distance)
        self.name = f"{route_hash(global_plan_world_coord)}_{time.time_ns()}"

    def _bind(self) -> None:
        p = self.provider or carla_data_provider()
        world, cmap = p.get_world(), p.get_map()
        self.view = CarlaExpertWorld(world, cmap, find_hero(world), self.cfg.dynamics)
        self.expert.view = self.view
        self.expert._prepare()
        self.town = town_of(cmap)
        self._xodr = cmap.to_opendrive()

    def run_step(self, input_data: dict, timestamp: float) -> carla.VehicleControl:
        if self.expert._plan is None:
            raise RuntimeError("CollectAgent: set_global_plan() must come before run_step")
        if self.view is None:
            self._bind()
        self.view.tick()
        throttle, steer, brake = self.expert.decide()
        self.steps += 1
        ego = self.view.ego()
        target = self.route.run_step(np.array([ego.x, ego.y]))
        if self.steps % CAN_EVERY == 0:
            frame = self._frame(input_data, float(timestamp), self.steps % KEYFRAME_EVERY == 0, target)
            if frame is not None:
                self.frames.append(frame)
        return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)

    def _frame(self, input_data: dict, timestamp: float, key: bool, target) -> DriveFrame | None:
        """The DriveFrame of this tick; None (logged) when a sensor reading is unusable."""
        try:
            reading = read_sensors(input_data, self.sensors(), MAX_SENSOR_LAG)
        except SensorError as e:
            log.warning("tick %d not recorded: %s", self.steps, e)
            return None
        tf = self.view.hero.get_transform()
        loc, rot = tf.location, tf.rotation
        world_from_ego = carla_transform_to_ego(loc.x, loc.y, loc.z, 0.0, 0.0, rot.yaw)  # kept level
        vel_world = carla_location_to_ego(self.view.hero.get_velocity())
        frame = DriveFrame(
            timestamp_us=int(round(timestamp * 1e6)),
            world_from_ego=world_from_ego,
            images={},
            boxes=[],
            is_keyframe=key,
            accel=reading.accel,  # the IMU's specific force, as the deployed agent reads it
            rotation_rate=reading.gyro,
            velocity=world_from_ego[:3, :3].T @ vel_world,
        )
        if key:
            # BGRA -> RGB, a copy: the sensor buffers are reused by the leaderboard
            frame.images = {c.name: np.ascontiguousarray(input_data[c.name][1][:, :, 2::-1])
                            for c in self.rig.cameras}
            frame.boxes = self._boxes(world_from_ego[:2, 3])
            info = dict(self.expert.info)
            if target is not None:
                info["command"] = int(target.command)
                info["route_target"] = [float(target.xy[0]), float(target.xy[1])]
            frame.privileged = {**_jsonable(info), "source": SOURCE}
        return frame

    def _boxes(self, ego_xy: np.ndarray) -> list[AgentBox]:
        out = []
        for a in self.view.actors:
            cat = carla_category(a.kind, a.type_id)
            if cat is None or np.hypot(*(a.center[:2] - ego_xy)) > BOX_RANGE_M:
                continue
            prefix = "ped" if a.kind == "walker" else "veh"
            out.append(AgentBox(f"{prefix}-{a.id}", cat, np.asarray(a.center, float),
                                np.asarray(a.size, float), float(a.yaw), np.asarray(a.velocity, float)))
        return out

    def destroy(self) -> None:
        """Write the drive (at least 2 keyframes) and the town's OpenDRIVE into the parts folder."""
        if sum(f.is_keyframe for f in self.frames) >= 2:
            stem = f"{self.town}_{self.name}"
            save_drive(self.parts / f"{stem}.npz", RecordedDrive(
                scene_name=stem, location=self.town, rig=self.rig, frames=self.frames, map_polylines=[],
                description=f"Expert drive in CARLA {self.town} (leaderboard, track MAP), route {self.name}",
            ))
            xodr = self.parts / f"{self.town}.xodr"
            if self._xodr and not xodr.is_file():
                atomic_write_bytes(xodr, self._xodr.encode())
        elif self.frames:
            log.warning("route %s: fewer than 2 keyframes recorded, nothing written", self.name)
        self.frames = []
        self.view = None
        self.expert.view = None
