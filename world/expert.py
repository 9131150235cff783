"""The privileged expert of the offline world: drives a route knowing the exact world state.

A leaderboard-style agent (setup / sensors / set_global_plan / run_step / destroy) with one extra hook,
`bind_world(world)`, that the offline runner calls to give it the world (it needs no sensors). Its
decisions are world.expert_core.ExpertDriver's (the same logic drives the CARLA collector,
carla_eval/collect_agent.py); this module is the offline world's backend of `ExpertWorld`.

Each step it also fills `self.info`, the privileged state the rule teacher reads from the dataset:
traffic light ahead, lead actor distance / speed, junction flags, the route command, why it is stopping.
"""

from __future__ import annotations

import carla
import numpy as np

from vlmad.frames import ego_to_carla_location
from world.config import ExpertConfig
from world.expert_core import EgoState, ExpertDriver, LanePoint, Obstacles
from world.sim import OfflineWorld


def get_entry_point() -> str:
    return "ExpertAgent"


class OfflineExpertWorld:
    """`ExpertWorld` over the offline world (world.sim.OfflineWorld): its exact state, no sensing."""

    def __init__(self, world: OfflineWorld):
        self.w = world
        self.dynamics = world.cfg.dynamics

    def ego(self) -> EgoState:
        e = self.w.ego
        return EgoState(e.x, e.y, e.yaw, e.v)

    def ego_in_junction(self) -> bool:
        return self.w.ego_junction >= 0

    def lane_at(self, xy: np.ndarray) -> LanePoint | None:
        wp = self.w.rmap.cmap.get_waypoint(ego_to_carla_location(xy))
        if wp is None:
            return None
        return LanePoint(wp.road_id, wp.get_junction().id if wp.is_junction else -1)

    def approach_light(self, xy: np.ndarray) -> int:
        rm = self.w.rmap
        loc = rm.locate(xy)
        return rm.segments[loc[0]].light if loc is not None else -1

    def light_state(self, light: int) -> int:
        return int(self.w.traffic.light_states[light])

    def stop_offset(self, light: int) -> float:
        return self.w.traffic.stop_offset[light]

    def obstacles(self) -> Obstacles:
        tr = self.w.traffic
        pts, owner, half, speed = tr.obstacle_points(None)
        return Obstacles(pts, owner, half, speed, frozenset(p.id for p in tr.pedestrians))

    def junction_busy(self, junction_id: int, my_road: int) -> bool:
        w = self.w
        return any(
            w.rmap.segments[veh.seg].junction == junction_id and veh.entry_road not in (my_road, -1)
            and veh.v > 0.3
            for veh in w.traffic.vehicles
        )


class ExpertAgent(ExpertDriver):
    """Privileged route-following expert (offline world only: needs `bind_world`)."""

    def __init__(self, path_to_conf_file: str = "", cfg: ExpertConfig | None = None):
        super().__init__(cfg)
        self.world: OfflineWorld | None = None
        self.setup(path_to_conf_file)

    # --- leaderboard interface -------------------------------------------------------------------------
    def setup(self, path_to_conf_file: str) -> None:
        self.track = "MAP"  # privileged: not a sensors-only agent

    def sensors(self) -> list[dict]:
        return [{"type": "sensor.speedometer", "id": "SPEED", "reading_frequency": 20}]

    def set_global_plan(self, global_plan_gps, global_plan_world_coord) -> None:
        self._plan = list(global_plan_world_coord)  # the dense route: the expert does not downsample
        if self.world is not None:
            self._prepare()

    def bind_world(self, world: OfflineWorld) -> None:
        self.world = world
        self.view = OfflineExpertWorld(world)
        if self._plan is not None:
            self._prepare()

    def destroy(self) -> None:
        self.world = None
        self.view = None

    def run_step(self, input_data: dict, timestamp: float) -> carla.VehicleControl:
        if self.world is None or self._plan is None:
            raise RuntimeError("ExpertAgent needs bind_world(world) and set_global_plan() before run_step")
        throttle, steer, brake = self.decide()
        return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)
