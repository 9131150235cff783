"""Run leaderboard-style agents on routes in the offline world and write leaderboard result files.

The loop mirrors leaderboard 1.0 for each route: build the agent (its constructor calls `setup`), give
it the dense route with `set_global_plan(gps_route, route)` (the agent's base class downsamples, as in
the leaderboard), read `sensors()`, then at 20 Hz: sensor data -> `run_step(input_data, timestamp)` ->
`VehicleControl` -> world step -> criteria. An exception in the agent ends the route as
"Failed - Agent crashed" and the next route still runs. Results go through `carla_eval.scoring` (the
project's one owner of the leaderboard's scoring and file layout), labelled as the offline world.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from carla_eval import scoring
from routes.parse import Route
from vlmad.errors import UserError
from vlmad.frames import carla_pose_to_ego
from vlmad.rig import CARLA_RIG, CameraSpec, Rig
from world.config import LABEL, SOURCE, WorldConfig
from world.criteria import RouteCriteria
from world.global_planner import interpolate_trajectory, keypoint_locations
from world.road_map import RoadMap
from world.sim import OfflineWorld

_BY_TYPE = {"sensor.other.gnss": "GPS", "sensor.other.imu": "IMU", "sensor.speedometer": "SPEED"}
SUPPORTED_SENSORS = ("sensor.camera.rgb", "sensor.opendrive_map", *_BY_TYPE)
RENDER_BOX_RANGE_M = 120.0  # actors farther than this from the ego are not drawn
RENDER_LIGHT_RANGE_M = 150.0


def rig_from_sensors(sensors: list[dict]) -> Rig:
    """The cameras an agent's `sensors()` asks for, as a Rig (CARLA convention converted to ours).

    Inverse of `CameraSpec.carla_sensor`. Non-camera sensors only set the GNSS/IMU mount position.
    """
    cams = []
    imu_x = CARLA_RIG.imu_x
    for s in sensors:
        if s.get("type") not in SUPPORTED_SENSORS:
            raise UserError(
                f"the offline world cannot simulate sensor {s.get('type')!r} (id {s.get('id')!r}); "
                f"it provides {', '.join(SUPPORTED_SENSORS)}"
            )
        if s.get("type") == "sensor.camera.rgb":
            try:
                cams.append(CameraSpec.from_carla_sensor(s))
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"agent sensor {s!r} is not a valid camera description ({e})") from None
        elif s.get("type") in ("sensor.other.gnss", "sensor.other.imu"):
            imu_x = float(s.get("x", imu_x))
    return Rig(name="agent", cameras=tuple(cams), imu_x=imu_x)


def _route_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def keypoint_length(spec: Route) -> float:
    """The leaderboard's `meta.route_length`: length of the keypoint polyline (not of the dense route)."""
    k = np.array([(w.x, w.y, w.z) for w in spec.waypoints])
    return float(np.linalg.norm(np.diff(k, axis=0), axis=1).sum())


@dataclass
class StepView:
    """What a per-step hook sees (recording, video)."""

    world: OfflineWorld
    agent: object
    control: object
    # the cameras rendered this step (RGB); empty where none were, e.g. a step whose images the agent
    # does not read (VADAgent.wants_images)
    images: dict[str, np.ndarray] = field(default_factory=dict)


class OfflineRunner:
    """Runs routes on one map with one world config; renderers are built lazily and reused."""

    def __init__(self, rmap: RoadMap, cfg: WorldConfig | None = None, seed: int = 0):
        self.rmap = rmap
        self.cfg = cfg or WorldConfig()
        self.seed = seed
        self._renderers: dict = {}

    # --- rendering -----------------------------------------------------------------------------------
    def renderer(self, rig: Rig):
        """A world.render.Renderer for `rig` (all cameras must share one image size)."""
        sizes = {(c.width, c.height) for c in rig.cameras}
        if len(sizes) != 1:
            raise UserError(f"the offline renderer needs one image size for all cameras, got {sorted(sizes)}")
        key = (rig.cameras, rig.imu_x)
        if key not in self._renderers:
            from world.geometry import RoadGeometry
            from world.render import Renderer

            ((w, h),) = sizes
            self._renderers[key] = Renderer(RoadGeometry.from_map(self.rmap.cmap), rig, w, h)
        return self._renderers[key]

    def render(self, world: OfflineWorld, rig: Rig) -> dict[str, np.ndarray]:
        """RGB images of every rig camera for the current world state."""
        from world.render import RenderBox, RenderLight

        ex, ey = world.ego.x, world.ego.y
        boxes = [
            RenderBox(a["center"], tuple(a["size"]), a["yaw"], a["color"])
            for a in world.actors()
            if math.hypot(a["center"][0] - ex, a["center"][1] - ey) < RENDER_BOX_RANGE_M
        ]
        lights = [
            RenderLight(lt.pole, lt.pole_yaw, world.light_state(i))
            for i, lt in enumerate(self.rmap.lights)
            if math.hypot(lt.pole[0] - ex, lt.pole[1] - ey) < RENDER_LIGHT_RANGE_M
        ]
        return self.renderer(rig).render(world.world_from_ego(), boxes, lights)

    def input_data(self, world: OfflineWorld, sensors: list[dict], rig: Rig, images: dict,
                   image_frame: int | None = None) -> dict:
        """Leaderboard `input_data` keyed by the agent's own sensor ids; the cameras carry `image_frame`
        (default: the current frame), the frame their images were rendered at."""
        from world.sensors import make_input_data

        base = make_input_data(
            images,
            world.frame,
            world.world_from_ego(),
            world.ego.v,
            world.ego_accel(),
            world.ego_gyro(),
            self.rmap.cmap,
            rig,
        )
        frame = world.frame if image_frame is None else image_frame
        out = {c.name: (frame, base[c.name][1]) for c in rig.cameras}
        for s in sensors:
            key = _BY_TYPE.get(s.get("type"))
            if key is not None:
                out[str(s["id"])] = base[key]
            elif s.get("type") == "sensor.opendrive_map":
                out[str(s["id"])] = (world.frame, {"opendrive": self.rmap.xodr})
        return out

    # --- one route -------------------------------------------------------------------------------------
    def run_route(
        self,
        agent_factory: Callable[[], object],
        spec: Route,
        index: int,
        on_step: Callable[[StepView], None] | None = None,
        max_steps: int | None = None,
        setup_world: Callable[[OfflineWorld, list], None] | None = None,
    ) -> dict:
        """Drive one route; returns the leaderboard route record (dict).

        on_step: called after every step (recording, video). max_steps: stop early (data collection).
        setup_world(world, route): called after the traffic is spawned, to plant actors or fix lights.
        """
        t_start = time.time()
        gps, route = interpolate_trajectory(self.rmap.planner, keypoint_locations(spec))
        world = OfflineWorld(self.rmap, self.cfg, seed=_route_seed(self.seed, index))
        start = route[0][0]
        p, yaw = carla_pose_to_ego(start)
        world.reset(float(p[0]), float(p[1]), yaw)
        if setup_world is not None:
            setup_world(world, route)
        crit = RouteCriteria(self.rmap, route, self.cfg.criteria, 0.5 * self.cfg.dynamics.length)
        failure = ""
        agent = None
        try:
            agent = agent_factory()
        except Exception:  # noqa: BLE001 - any agent error is the agent's failure, as in the leaderboard
            traceback.print_exc(file=sys.stderr)
            failure = scoring.REASON_AGENT_SETUP
        if agent is not None:
            try:
                agent.set_global_plan(gps, route)
                if hasattr(agent, "bind_world"):
                    agent.bind_world(world)
                sensors = list(agent.sensors())
                rig = rig_from_sensors(sensors)
                # an agent that says which ticks read its cameras (VADAgent.wants_images) gets them
                # rendered on those ticks only, and the last ones, stamped with their frame, in between
                wants = getattr(agent, "wants_images", None)
                shown: tuple[dict, int] = ({}, world.frame)  # (images the agent gets, their frame)
                steps = 0
                while not crit.done and (max_steps is None or steps < max_steps):
                    fresh = (self.render(world, rig) if rig.cameras and (wants is None or wants()
                                                                        or not shown[0]) else {})
                    if fresh:
                        shown = (fresh, world.frame)
                    control = agent.run_step(self.input_data(world, sensors, rig, *shown), world.t)
                    world.step(control)
                    crit.update(world)
                    steps += 1
                    if on_step is not None:
                        on_step(StepView(world, agent, control, fresh))
            except UserError:
                raise
            except Exception:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                failure = scoring.REASON_AGENT_CRASHED
            finally:
                try:
                    agent.destroy()
                except Exception:  # noqa: BLE001
                    traceback.print_exc(file=sys.stderr)
        return scoring.make_route_record(
            spec.name,
            index,
            crit.completion,
            crit.finalize(),
            route_length=keypoint_length(spec),
            duration_system=time.time() - t_start,
            duration_game=world.t,
            target_reached=crit.target_reached,
            failure=failure,
            extra_meta={"source": SOURCE, "town": self.rmap.name},
        )


def results_file(records: list[dict], total: int, sensors: list[dict], extra: dict | None = None) -> dict:
    """A leaderboard results file for `records`, labelled as the offline world."""
    return scoring.make_results_file(
        records,
        progress=[len(records), total],
        sensors=[s.get("type", "") for s in sensors],
        source=SOURCE,
        label=LABEL,
        meta=extra,
    )


class VideoWriter:
    """MP4 of one camera at 10 fps (every second 20 Hz step), opened lazily."""

    def __init__(self, path: Path, fps: float = 10.0):
        self.path = path
        self.fps = fps
        self._w = None

    def add(self, rgb: np.ndarray) -> None:
        if self._w is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = rgb.shape[:2]
            self._w = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        self._w.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._w is not None:
            self._w.release()
            self._w = None
