"""The privileged expert of the offline world: drives a route knowing the exact world state.

A leaderboard-style agent (setup / sensors / set_global_plan / run_step / destroy) with one extra hook,
`bind_world(world)`, that the offline runner calls to give it the world (it needs no sensors). It
follows the dense route with pure pursuit, holds a cruise speed limited by the route's curvature, and
keeps an IDM gap to the nearest constraint ahead: an actor in its corridor, a red (or stoppable yellow)
light's stop line (before the crosswalk), or a junction another approach's vehicle still occupies.

Each step it also fills `self.info`, the privileged state the rule teacher reads from the dataset:
traffic light ahead, lead actor distance / speed, junction flags, the route command, why it is stopping.
"""

from __future__ import annotations

import math

import carla
import numpy as np

from vlmad.commands import RoadOption
from world.config import ExpertConfig, WorldConfig
from world.dynamics import idm_accel
from world.roadmap import xy_to_loc
from world.sim import OfflineWorld
from world.traffic import RED, STATE_NAMES, YELLOW


def get_entry_point() -> str:
    return "ExpertAgent"


class ExpertAgent:
    """Privileged route-following expert (offline world only: needs `bind_world`)."""

    def __init__(self, path_to_conf_file: str = "", cfg: ExpertConfig | None = None):
        self.cfg = cfg or ExpertConfig()
        self.world: OfflineWorld | None = None
        self._plan: list | None = None
        self.info: dict = {}
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
        if self._plan is not None:
            self._prepare()

    def destroy(self) -> None:
        self.world = None

    # --- route pre-processing --------------------------------------------------------------------------
    def _prepare(self) -> None:
        w = self.world
        rm = w.rmap
        pts = np.array([[t.location.x, -t.location.y] for t, _ in self._plan])
        keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 0.05])
        self.pts = pts[keep]
        self.options = [o for (t, o), k in zip(self._plan, keep) if k]
        d = np.linalg.norm(np.diff(self.pts, axis=0), axis=1)
        self.s = np.concatenate([[0.0], np.cumsum(d)])
        heading = np.unwrap(np.arctan2(np.diff(self.pts[:, 1]), np.diff(self.pts[:, 0])))
        heading = np.concatenate([heading, heading[-1:]])
        curv = np.zeros(len(self.pts))
        for i in range(len(self.pts)):  # heading change over a +-2 m window
            lo = int(np.searchsorted(self.s, self.s[i] - 2.0))
            hi = min(int(np.searchsorted(self.s, self.s[i] + 2.0)), len(self.pts) - 1)
            if self.s[hi] - self.s[lo] > 0.5:
                curv[i] = abs(heading[hi] - heading[lo]) / (self.s[hi] - self.s[lo])
        self.curv = curv
        self.junction = np.full(len(self.pts), -1)
        self.road = np.full(len(self.pts), -1)
        for i, p in enumerate(self.pts):
            wp = rm.cmap.get_waypoint(xy_to_loc(p))
            if wp is not None:
                self.road[i] = wp.road_id
                if wp.is_junction:
                    self.junction[i] = wp.get_junction().id
        # Junctions along the route: (index of the first junction point, index of the first point after it,
        # light index or -1).
        self.entries: list[tuple[int, int, int]] = []
        for i in range(1, len(self.pts)):
            if self.junction[i] >= 0 and self.junction[i - 1] < 0:
                loc = rm.locate(self.pts[i - 1])
                light = rm.segments[loc[0]].light if loc is not None else -1
                j = i
                while j < len(self.pts) - 1 and self.junction[j] >= 0:
                    j += 1
                self.entries.append((i, j, light))
        self.idx = 0

    # --- driving ---------------------------------------------------------------------------------------
    def run_step(self, input_data: dict, timestamp: float) -> carla.VehicleControl:
        w = self.world
        if w is None or self._plan is None:
            raise RuntimeError("ExpertAgent needs bind_world(world) and set_global_plan() before run_step")
        cfg, dyn = self.cfg, w.cfg.dynamics
        e = w.ego
        pos = np.array([e.x, e.y])
        hi = min(self.idx + 60, len(self.pts))
        self.idx += int(np.argmin(np.linalg.norm(self.pts[self.idx : hi] - pos, axis=1)))
        s_ego = float(self.s[self.idx])
        if self.idx + 1 < len(self.pts):
            seg = self.pts[self.idx + 1] - self.pts[self.idx]
            s_ego += float(
                np.clip((pos - self.pts[self.idx]) @ seg / max(seg @ seg, 1e-9), -1.0, 1.0)
                * np.linalg.norm(seg)
            )
        v = e.v
        half_len = 0.5 * dyn.length

        # Lateral: pure pursuit from the rear axle to a point `ld` ahead on the route.
        ld = float(np.clip(3.0 + 0.6 * abs(v), 4.5, 12.0))
        target = self._point_at(s_ego + ld)
        rear = pos - 0.5 * dyn.wheelbase * np.array([math.cos(e.yaw), math.sin(e.yaw)])
        rel = target - rear
        c, s = math.cos(e.yaw), math.sin(e.yaw)
        tx, ty = c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1]
        dist2 = max(tx * tx + ty * ty, 1e-6)
        wheel = math.atan(dyn.wheelbase * 2.0 * ty / dist2)
        steer = float(np.clip(-wheel / math.radians(dyn.max_steer_deg), -1.0, 1.0))

        # Longitudinal: cruise speed limited by curvature ahead, IDM gap to the nearest constraint.
        brake_dist = v * v / (2 * cfg.max_lateral_accel) + 8.0
        lo, hi = self.idx, int(np.searchsorted(self.s, s_ego + max(brake_dist, 12.0)))
        kmax = float(self.curv[lo : max(hi, lo + 1)].max())
        v0 = min(
            cfg.cruise_speed, math.sqrt(cfg.max_lateral_accel / kmax) if kmax > 1e-4 else cfg.cruise_speed
        )
        # Constraints as (IDM gap, lead speed, reason): stop lines are given with the IDM standstill gap
        # added back, so the car halts on the line rather than a standstill gap before it.
        idm = _IDM(cfg)
        constraints = []
        lead = self._lead(pos, s_ego, half_len)
        if lead is not None:
            constraints.append((lead[0] - cfg.lead_gap + idm.idm_gap, lead[1], lead[2]))
        light_state, light_dist, junction_dist = None, None, None
        first = True
        tail = half_len + 1.0  # the leaderboard checks the segment behind the tail crossing the stop line
        for entry_idx, exit_idx, light in self.entries:  # every junction within reach (some are metres apart)
            d_entry = float(self.s[entry_idx]) - s_ego
            if d_entry < -tail:
                continue
            if d_entry > cfg.lookahead_m:
                break
            if first:
                junction_dist = d_entry
            if light >= 0:
                state = int(w.traffic.light_states[light])
                if light_state is None:
                    light_state, light_dist = STATE_NAMES[state], d_entry
                pref = d_entry - w.traffic.stop_offset[light] - half_len - cfg.stop_margin
                gap = pref if pref > -0.3 else d_entry - half_len - 0.3  # on the crosswalk: stop at the line
                if gap > -0.3 and (state == RED or (state == YELLOW and gap > v * v / (2 * cfg.decel))):
                    constraints.append((max(gap, 0.0) + idm.idm_gap, 0.0, f"{STATE_NAMES[state]}_light"))
                elif state == RED and d_entry > -tail and v < 3.0:
                    # Front past the line, tail not yet (crawling in a queue): hold until green.
                    constraints.append((0.0, 0.0, "red_light"))
            if d_entry < -0.5:
                first = False
                continue
            # Yield only while the car can still stop before the junction: stopping inside it would leave
            # the tail on the stop line when the light turns red.
            yield_gap = d_entry - half_len - 0.5
            if first and 8.0 > yield_gap > v * v / (2 * 6.0) - 0.3 and self._junction_busy(entry_idx):
                constraints.append((max(yield_gap, 0.0) + idm.idm_gap, 0.0, "yield"))
            # Do not enter a junction whose exit is jammed (the car would stand in it, maybe on a red).
            exit_gap = float(self.s[exit_idx]) - s_ego + half_len + 2.0
            if first and lead is not None and lead[1] < 2.0 and lead[0] < exit_gap and 8.0 > yield_gap > -0.3:
                constraints.append((max(yield_gap, 0.0) + idm.idm_gap, 0.0, "blocked_junction"))
            first = False
        gap, lead_v, reason = min(constraints, key=lambda c_: c_[0]) if constraints else (np.inf, 0.0, None)
        acc = float(
            idm_accel(np.array([max(v, 0.0)]), np.array([v0]), np.array([gap]), np.array([v - lead_v]), idm)[
                0
            ]
        )
        throttle, brake = self._pedals(acc, v, dyn)
        if gap < idm.idm_gap + 1.0 and v < 0.3:
            throttle, brake = 0.0, 1.0
        self.info = {
            "traffic_light": light_state,
            "traffic_light_distance": light_dist,
            "lead_distance": None if lead is None else float(lead[0]),
            "lead_speed": None if lead is None else float(lead[1]),
            "lead_type": None if lead is None else lead[2],
            "is_junction": bool(w.ego_junction >= 0),
            "junction_distance": junction_dist,
            "road_option": RoadOption(self.options[self.idx]).name,
            "next_turn": self._next_turn(),
            "speed": float(v),
            "target_speed": float(v0),
            "stop_reason": reason
            if (reason is not None and gap - idm.idm_gap < v * v / (2 * cfg.decel) + 6.0)
            else None,
            "route_progress": float(s_ego / max(self.s[-1], 1e-9)),
        }
        return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)

    def _junction_busy(self, entry_idx: int) -> bool:
        """True while a vehicle that entered the route's next junction from another road still moves in it.

        One standing still there is no threat unless it is in the corridor, which `_lead` watches; waiting
        for it could wait forever."""
        w = self.world
        jn, mine = int(self.junction[entry_idx]), int(self.road[max(entry_idx - 1, 0)])
        return any(
            w.rmap.segments[veh.seg].junction == jn and veh.entry_road not in (mine, -1) and veh.v > 0.3
            for veh in w.traffic.vehicles
        )

    def _point_at(self, s: float) -> np.ndarray:
        s = min(max(s, 0.0), float(self.s[-1]))
        return np.array([np.interp(s, self.s, self.pts[:, 0]), np.interp(s, self.s, self.pts[:, 1])])

    def _lead(self, pos: np.ndarray, s_ego: float, half_len: float) -> tuple[float, float, str] | None:
        """Nearest actor in the route corridor ahead: (bumper gap, its speed, "vehicle" | "pedestrian")."""
        w = self.world
        hi = int(np.searchsorted(self.s, s_ego + self.cfg.lookahead_m))
        path = self.pts[self.idx : max(hi, self.idx + 2)]
        along = self.s[self.idx : self.idx + len(path)] - s_ego
        pts, owner, half, speed = w.traffic.obstacle_points(None)
        if not len(pts):
            return None
        near = np.linalg.norm(pts - pos, axis=1) < self.cfg.lookahead_m + 10.0
        if not near.any():
            return None
        pts, owner, half, speed = pts[near], owner[near], half[near], speed[near]
        d = np.linalg.norm(path[:, None, :] - pts[None, :, :], axis=2)
        hit = (d < 0.5 * w.cfg.dynamics.width + half[None, :] + 0.3) & (along[:, None] > 0.0)
        if not hit.any():
            return None
        r = int(np.where(hit.any(axis=1))[0][0])
        cols = np.where(hit[r])[0]
        ped_ids = {p.id for p in w.traffic.pedestrians}
        kind = "pedestrian" if any(int(owner[c_]) in ped_ids for c_ in cols) else "vehicle"
        return float(along[r] - half_len), float(max(np.min(speed[cols]), 0.0)), kind

    def _next_turn(self) -> str | None:
        for o in self.options[self.idx :]:
            if o in (RoadOption.LEFT, RoadOption.RIGHT, RoadOption.STRAIGHT):
                return RoadOption(o).name
        return None

    @staticmethod
    def _pedals(acc: float, v: float, dyn) -> tuple[float, float]:
        """Throttle / brake that produce acceleration `acc` in the ego dynamics (model-based feed-forward)."""
        resist = dyn.rolling_resistance + dyn.drag * v * v
        if acc >= -(resist + dyn.engine_brake):
            gain = dyn.max_accel * max(0.05, 1.0 - abs(v) / dyn.max_speed)
            return float(np.clip((acc + resist) / gain, 0.0, 0.9)), 0.0
        return 0.0, float(np.clip((-acc - resist) / dyn.max_brake, 0.0, 1.0))


class _IDM:
    """IDM parameters of the expert (duck-typed like TrafficConfig for `idm_accel`)."""

    def __init__(self, cfg: ExpertConfig):
        self.idm_accel = 2.0
        self.idm_decel = cfg.decel
        self.idm_gap = 2.0
        self.idm_headway = 1.0


def make_expert(cfg: WorldConfig | None = None) -> ExpertAgent:
    return ExpertAgent("", (cfg or WorldConfig()).expert)
