"""The privileged expert's decisions, behind a small world interface with two backends.

One implementation of the expert (pure pursuit on the dense route, a cruise speed limited by the route's
curvature, an IDM gap to the nearest constraint ahead: an actor in its corridor, a red or stoppable
yellow light's stop line, a junction another approach's vehicle still occupies or whose exit is jammed)
reads the world only through `ExpertWorld`. Backends:
- `world.expert.OfflineExpertWorld`: the offline world (world.sim.OfflineWorld);
- `carla_eval.expert_carla.CarlaExpertWorld`: a CARLA server through the leaderboard's CarlaDataProvider.

Everything here is in the project's right-handed frame (docs/coordinate_systems.md: x east, y north,
yaw counter-clockwise radians); a backend converts its world once, through vlmad.frames.

Each step fills `info`, the privileged state the rule teacher reads from the dataset: traffic light ahead,
lead actor distance / speed, junction flags, the route's RoadOption, why the expert is stopping.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import numpy as np

from vlmad.commands import RoadOption
from vlmad.frames import carla_locations_to_ego_xy
from vlmad.horizon import TICK_S
from world.config import DynamicsConfig, ExpertConfig
from world.dynamics import idm_accel

RED, YELLOW, GREEN = 0, 1, 2  # light states: the values of carla.TrafficLightState (and world.traffic)
STATE_NAMES = ("red", "yellow", "green")


class EgoState(NamedTuple):
    """The ego's planar state: position (m), yaw (rad, CCW), speed along its heading (m/s)."""

    x: float
    y: float
    yaw: float
    v: float


class LanePoint(NamedTuple):
    """The lane under a point: its road id and junction id (-1 outside junctions)."""

    road_id: int
    junction_id: int


class Obstacles(NamedTuple):
    """Sample points of the other actors: (P, 2) points, (P,) owner id, (P,) half width, (P,) speed, and
    the owner ids that are pedestrians. Vehicles give points on their long axis, pedestrians one."""

    pts: np.ndarray
    owner: np.ndarray
    half: np.ndarray
    speed: np.ndarray
    pedestrian_ids: frozenset[int]


class ExpertWorld(Protocol):
    """What the expert reads of the world (all in the project's frame)."""

    dynamics: DynamicsConfig  # the ego's size and the pedal model the feed-forward inverts

    def ego(self) -> EgoState: ...

    def ego_in_junction(self) -> bool: ...

    def lane_at(self, xy: np.ndarray) -> LanePoint | None:
        """The lane nearest to (2,) point `xy`, None off the road network."""
        ...

    def approach_light(self, xy: np.ndarray) -> int:
        """Index of the traffic light controlling the lane at `xy` (the last route point before a
        junction), -1 when none."""
        ...

    def light_state(self, light: int) -> int:
        """RED / YELLOW / GREEN of light `light`."""
        ...

    def stop_offset(self, light: int) -> float:
        """How far (m) before the junction entry light `light`'s stop line lies."""
        ...

    def obstacles(self) -> Obstacles: ...

    def junction_busy(self, junction_id: int, my_road: int) -> bool:
        """True while a vehicle that entered junction `junction_id` from a road other than `my_road` moves
        in it (> 0.3 m/s)."""
        ...


class ExpertDriver:
    """The expert's decision logic over an `ExpertWorld` (`self.view`) and a dense route (`self._plan`:
    [(carla.Transform-like, RoadOption)], the leaderboard's `global_plan_world_coord`).

    `_prepare()` pre-processes the route once both are set; `decide()` returns (throttle, steer, brake)
    and fills `self.info`. Subclasses bind a backend (world.expert.ExpertAgent, the CARLA collector)."""

    def __init__(self, cfg: ExpertConfig | None = None):
        self.cfg = cfg or ExpertConfig()
        self.view: ExpertWorld | None = None
        self._plan: list | None = None
        self.info: dict = {}
        self._held = False  # standing, held by a stop line or a lead (ExpertConfig.start_delay_s)
        self._clear_ticks = 0  # ticks standing since the hold cleared

    # --- route pre-processing --------------------------------------------------------------------------
    def _prepare(self) -> None:
        v = self.view
        pts = carla_locations_to_ego_xy(t.location for t, _ in self._plan)
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
            lane = v.lane_at(p)
            if lane is not None:
                self.road[i] = lane.road_id
                if lane.junction_id >= 0:
                    self.junction[i] = lane.junction_id
        # Junctions along the route: (index of the first junction point, index of the first point after it,
        # light index or -1).
        self.entries: list[tuple[int, int, int]] = []
        for i in range(1, len(self.pts)):
            if self.junction[i] >= 0 and self.junction[i - 1] < 0:
                light = v.approach_light(self.pts[i - 1])
                j = i
                while j < len(self.pts) - 1 and self.junction[j] >= 0:
                    j += 1
                self.entries.append((i, j, light))
        self.idx = 0

    # --- driving ---------------------------------------------------------------------------------------
    def decide(self) -> tuple[float, float, float]:
        """(throttle, steer, brake) for the current world state; fills `self.info`."""
        w = self.view
        cfg, dyn = self.cfg, w.dynamics
        e = w.ego()
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
                state = int(w.light_state(light))
                if light_state is None:
                    light_state, light_dist = STATE_NAMES[state], d_entry
                pref = d_entry - w.stop_offset(light) - half_len - cfg.stop_margin
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
            self._held, self._clear_ticks = True, 0
        elif self._held and v < 0.3 and self._clear_ticks * TICK_S < cfg.start_delay_s:
            # the way has cleared (green, the lead pulled away): pull away only after the start delay
            self._clear_ticks += 1
            throttle, brake = 0.0, 1.0
        else:
            self._held = False
        self.info = {
            "traffic_light": light_state,
            "traffic_light_distance": light_dist,
            "lead_distance": None if lead is None else float(lead[0]),
            "lead_speed": None if lead is None else float(lead[1]),
            "lead_type": None if lead is None else lead[2],
            "is_junction": bool(w.ego_in_junction()),
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
        return throttle, steer, brake

    def _junction_busy(self, entry_idx: int) -> bool:
        """True while a vehicle that entered the route's next junction from another road still moves in it.

        One standing still there is no threat unless it is in the corridor, which `_lead` watches; waiting
        for it could wait forever."""
        jn, mine = int(self.junction[entry_idx]), int(self.road[max(entry_idx - 1, 0)])
        return self.view.junction_busy(jn, mine)

    def _point_at(self, s: float) -> np.ndarray:
        s = min(max(s, 0.0), float(self.s[-1]))
        return np.array([np.interp(s, self.s, self.pts[:, 0]), np.interp(s, self.s, self.pts[:, 1])])

    def _lead(self, pos: np.ndarray, s_ego: float, half_len: float) -> tuple[float, float, str] | None:
        """Nearest actor in the route corridor ahead: (bumper gap, its speed, "vehicle" | "pedestrian")."""
        w = self.view
        hi = int(np.searchsorted(self.s, s_ego + self.cfg.lookahead_m))
        path = self.pts[self.idx : max(hi, self.idx + 2)]
        along = self.s[self.idx : self.idx + len(path)] - s_ego
        obs = w.obstacles()
        pts, owner, half, speed = obs.pts, obs.owner, obs.half, obs.speed
        if not len(pts):
            return None
        near = np.linalg.norm(pts - pos, axis=1) < self.cfg.lookahead_m + 10.0
        if not near.any():
            return None
        pts, owner, half, speed = pts[near], owner[near], half[near], speed[near]
        d = np.linalg.norm(path[:, None, :] - pts[None, :, :], axis=2)
        hit = (d < 0.5 * w.dynamics.width + half[None, :] + 0.3) & (along[:, None] > 0.0)
        if not hit.any():
            return None
        r = int(np.where(hit.any(axis=1))[0][0])
        cols = np.where(hit[r])[0]
        kind = "pedestrian" if any(int(owner[c_]) in obs.pedestrian_ids for c_ in cols) else "vehicle"
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
