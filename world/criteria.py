"""Leaderboard-1.0 route criteria, evaluated on the offline world (scenario_runner `atomic_criteria.py`).

Each criterion follows its leaderboard counterpart step by step, in CARLA coordinates (the messages quote
CARLA locations, as the real result files do):
- collisions (CollisionTest): one event per new contact; the same actor is ignored for 5 s, and any
  contact within 3 m of an earlier one is ignored until the ego has moved 5 m away; vehicle / walker /
  static (layout) classes;
- red lights (RunningRedLightTest): the segment behind the ego's tail crossing a red light's stop line
  (0.8 lane width wide, at the last lane point before the junction) on the light's own lane, lights
  within 15 m, each light counted once until another one is run;
- route completion (RouteCompletionTest): advance along the dense route when past a route point (dot with
  the lane direction), 10 m from the target at > 99 % = completed;
- route deviation (InRouteTest, ends the route): nearest route point farther than 30 m, or more than 30 %
  of the route driven farther than 15 m;
- outside route lanes (OutsideRouteLanesTest): distance driven off the driving lanes (> lane width / 2 +
  1.3 m) or in a lane of the opposite direction, as a percentage of the completed route;
- agent blocked (ActorSpeedAboveThresholdTest, ends the route): speed < 0.1 m/s for 180 s;
- timeout (ends the route): 0.8 s per metre of route + 5 s of simulated time.
Stop signs are not modelled (the offline world has none); `stop_infraction` stays empty.
"""

from __future__ import annotations

import math

import carla
import numpy as np

from carla_eval import scoring
from vlmad.commands import RoadOption
from vlmad.frames import ego_to_carla_location, ego_to_carla_xyz, ego_yaw_to_carla
from world.config import CriteriaConfig
from world.road_map import RoadMap
from world.sim import OfflineWorld
from world.traffic import RED

COLLISION_MIN_AREA = 3.0  # CollisionTest.MIN_AREA_OF_COLLISION
COLLISION_MAX_AREA = 5.0  # CollisionTest.MAX_AREA_OF_COLLISION
COLLISION_MAX_ID_TIME = 5.0  # CollisionTest.MAX_ID_TIME
RED_LIGHT_DISTANCE = 15.0  # RunningRedLightTest.DISTANCE_LIGHT
OUT_LANE_ALLOWED = 1.3  # OutsideRouteLanesTest.ALLOWED_OUT_DISTANCE
MAX_VEHICLE_ANGLE = 120.0
MAX_WAYPOINT_ANGLE = 150.0
IN_ROUTE_WINDOW = 5
IN_ROUTE_MAX_PERCENTAGE = 30.0
COMPLETION_WINDOW = 2
OUT_LANE_WINDOW = 3


def _segments_cross(p1, p2, q1, q2) -> bool:
    """True when 2-D segments p1-p2 and q1-q2 intersect (touching counts, as shapely's intersects)."""

    def orient(a, b, c):
        v = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        return 0 if abs(v) < 1e-12 else (1 if v > 0 else -1)

    def on_seg(a, b, c):
        return (
            min(a[0], b[0]) - 1e-12 <= c[0] <= max(a[0], b[0]) + 1e-12
            and min(a[1], b[1]) - 1e-12 <= c[1] <= max(a[1], b[1]) + 1e-12
        )

    o1, o2, o3, o4 = orient(p1, p2, q1), orient(p1, p2, q2), orient(q1, q2, p1), orient(q1, q2, p2)
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and on_seg(p1, p2, q1))
        or (o2 == 0 and on_seg(p1, p2, q2))
        or (o3 == 0 and on_seg(q1, q2, p1))
        or (o4 == 0 and on_seg(q1, q2, p2))
    )


class RouteCriteria:
    """All criteria of one route. Call `update(world)` after every world step; `done` ends the route."""

    def __init__(
        self,
        rmap: RoadMap,
        route: list[tuple[carla.Transform, RoadOption]],
        cfg: CriteriaConfig,
        ego_half_length: float,
    ):
        if len(route) < 2:
            raise ValueError("a route needs at least 2 points")
        self.rmap, self.cmap, self.cfg = rmap, rmap.cmap, cfg
        self.half_len = ego_half_length
        self.locs = np.array([[t.location.x, t.location.y, t.location.z] for t, _ in route])
        steps = np.linalg.norm(np.diff(self.locs, axis=0), axis=1)
        self.accum = np.concatenate([[0.0], np.cumsum(steps)])
        self.length = float(self.accum[-1])
        fwd = []
        for t, _ in route:
            f = self.cmap.get_waypoint(t.location).transform.get_forward_vector()
            fwd.append((f.x, f.y, f.z))
        self.fwd = np.array(fwd)
        self.timeout = int(cfg.seconds_per_meter * self.length + cfg.initial_delay_s)
        self.events: dict[str, list] = scoring.empty_infractions()
        self.done = False
        self.target_reached = False
        self.completion = 0.0
        # collision state
        self._registered: list[np.ndarray] = []
        self._last_id: int | None = None
        self._collision_time = 0.0
        # route completion / in-route / outside-lanes indices
        self._rc_index = 0
        self._ir_index = 0
        self._ir_out_distance = 0.0
        self._ir_safe = True
        self._ol_index = 0
        self._ol_total = 0.0
        self._ol_wrong = 0.0
        self._ol_outside = False
        self._ol_wrong_lane = False
        self._ol_last_key: tuple[int, int] | None = None
        self._ol_pre_wp = None
        # red lights
        self._lights = []
        for i, lt in enumerate(rmap.lights):
            wps = []
            for p, yaw in zip(lt.stop_pts, lt.stop_yaw):
                back = (p[0] - 0.4 * math.cos(yaw), p[1] - 0.4 * math.sin(yaw))
                wp = self.cmap.get_waypoint(ego_to_carla_location(back))
                if wp is not None:
                    wps.append(wp)
            centre = lt.stop_pts.mean(axis=0)
            self._lights.append((i, lt, ego_to_carla_xyz([centre[0], centre[1], 0.0])[:2], wps))
        self._last_red: int | None = None
        # blocked
        self._blocked_since: float | None = None

    # ------------------------------------------------------------------------------------------------
    def update(self, world: OfflineWorld) -> None:
        if self.done:
            return
        t = world.t
        e = world.ego
        loc = ego_to_carla_xyz([e.x, e.y, world.ego_z])  # CARLA location of the ego
        yaw_deg = float(ego_yaw_to_carla(e.yaw))
        self._collisions(world, loc, t)
        self._red_lights(world, loc, yaw_deg)
        self._outside_lanes(loc, yaw_deg)
        self._route_completion(loc)
        if self.target_reached:
            self.done = True
            return
        self._in_route(loc)
        self._blocked(abs(e.v), loc, t)
        if not self.done and t > self.timeout:
            self.events["route_timeout"].append(scoring.MSG_ROUTE_TIMEOUT)
            self.done = True

    # --- CollisionTest ---------------------------------------------------------------------------------
    def _collisions(self, world: OfflineWorld, loc: np.ndarray, t: float) -> None:
        self._registered = [
            c for c in self._registered if np.linalg.norm(loc[:2] - c[:2]) <= COLLISION_MAX_AREA
        ]
        if self._last_id is not None and t - self._collision_time > COLLISION_MAX_ID_TIME:
            self._last_id = None
        for c in world.contacts:
            if self._last_id == c.actor_id:
                continue
            if any(np.linalg.norm(loc[:2] - r[:2]) <= COLLISION_MIN_AREA for r in self._registered):
                continue
            key = {
                "vehicle": "collisions_vehicle",
                "walker": "collisions_pedestrian",
                "static": "collisions_layout",
            }[c.kind]
            self.events[key].append(scoring.msg_collision(c.type_id, c.actor_id, *loc))
            self._collision_time = t
            self._registered.append(loc.copy())
            if c.actor_id != 0:
                self._last_id = c.actor_id

    # --- RunningRedLightTest ---------------------------------------------------------------------------
    def _red_lights(self, world: OfflineWorld, loc: np.ndarray, yaw_deg: float) -> None:
        yr = math.radians(yaw_deg)
        c, s = math.cos(yr), math.sin(yr)
        tail_close = (loc[0] - 0.8 * self.half_len * c, loc[1] - 0.8 * self.half_len * s)
        tail_far = (loc[0] - (self.half_len + 1.0) * c, loc[1] - (self.half_len + 1.0) * s)
        tail_wp = None
        for i, lt, centre, wps in self._lights:
            if self._last_red is not None and self._last_red == i:
                continue
            if math.hypot(centre[0] - loc[0], centre[1] - loc[1]) > RED_LIGHT_DISTANCE:
                continue
            if world.traffic.light_states[i] != RED:
                continue
            if tail_wp is None:
                tail_wp = self.cmap.get_waypoint(carla.Location(tail_far[0], tail_far[1], loc[2]))
            for wp in wps:
                wf = wp.transform.get_forward_vector()
                if not (
                    tail_wp.road_id == wp.road_id
                    and tail_wp.lane_id == wp.lane_id
                    and c * wf.x + s * wf.y > 0
                ):
                    continue
                wl = wp.transform.location
                wy = math.radians(wp.transform.rotation.yaw)
                half = 0.4 * wp.lane_width
                left = (wl.x + half * math.cos(wy + math.pi / 2), wl.y + half * math.sin(wy + math.pi / 2))
                right = (wl.x + half * math.cos(wy - math.pi / 2), wl.y + half * math.sin(wy - math.pi / 2))
                if _segments_cross(tail_close, tail_far, left, right):
                    pole = lt.pole
                    self.events["red_light"].append(scoring.msg_red_light(lt.id, *ego_to_carla_xyz(pole)))
                    self._last_red = i
                    break

    # --- RouteCompletionTest ---------------------------------------------------------------------------
    def _passed(self, index: int, loc: np.ndarray) -> bool:
        return float((loc - self.locs[index]) @ self.fwd[index]) > 0

    def _route_completion(self, loc: np.ndarray) -> None:
        n = len(self.locs)
        for i in range(self._rc_index, min(self._rc_index + COMPLETION_WINDOW + 1, n)):
            if self._passed(i, loc):
                self._rc_index = i
                self.completion = 100.0 * self.accum[i] / max(self.length, 1e-9)
        if self.completion > 99.0 and np.linalg.norm(loc - self.locs[-1]) < self.cfg.completion_distance_m:
            self.target_reached = True
            self.completion = 100.0

    # --- InRouteTest -----------------------------------------------------------------------------------
    def _in_route(self, loc: np.ndarray) -> None:
        n = len(self.locs)
        lo, hi = self._ir_index, min(self._ir_index + IN_ROUTE_WINDOW + 1, n)
        d = np.hypot(self.locs[lo:hi, 0] - loc[0], self.locs[lo:hi, 1] - loc[1])
        closest = lo + int(len(d) - 1 - np.argmin(d[::-1]))  # last minimum, as the `<=` scan
        shortest = float(d[closest - lo])
        off_route = True
        if shortest < self.cfg.offroute_max_m:
            off_route = False
            self._ir_safe = shortest < self.cfg.offroute_max_m / 2
        if closest != self._ir_index:
            if not self._ir_safe:
                self._ir_out_distance += self.accum[closest] - self.accum[self._ir_index]
                if 100.0 * self._ir_out_distance / max(self.length, 1e-9) > IN_ROUTE_MAX_PERCENTAGE:
                    off_route = True
            self._ir_index = closest
        if off_route:
            self.events["route_dev"].append(scoring.msg_route_dev(*loc))
            self.done = True

    # --- OutsideRouteLanesTest -------------------------------------------------------------------------
    def _outside_lanes(self, loc: np.ndarray, yaw_deg: float) -> None:
        cl = carla.Location(float(loc[0]), float(loc[1]), float(loc[2]))
        drive = self.cmap.get_waypoint(cl, project_to_road=True, lane_type=carla.LaneType.Driving)
        park = self.cmap.get_waypoint(cl, project_to_road=True, lane_type=carla.LaneType.Parking)
        d_drive = cl.distance(drive.transform.location) if drive is not None else float("inf")
        d_park = cl.distance(park.transform.location) if park is not None else float("inf")
        if d_drive >= d_park:
            dist, width = d_park, park.lane_width
        else:
            dist, width = d_drive, drive.lane_width
        self._ol_outside = bool(dist > width / 2 + OUT_LANE_ALLOWED)
        # wrong lane
        if drive is not None:
            key = (drive.road_id, drive.lane_id)
            if self._ol_pre_wp is None:
                self._ol_pre_wp = drive
            if drive.is_junction:
                self._ol_wrong_lane = False
            elif key != self._ol_last_key:
                if self._ol_pre_wp.is_junction:
                    angle = (drive.transform.rotation.yaw % 360 - yaw_deg % 360) % 360
                    self._ol_wrong_lane = not (angle < MAX_VEHICLE_ANGLE or angle > 360 - MAX_VEHICLE_ANGLE)
                else:
                    angle = (
                        self._ol_pre_wp.transform.rotation.yaw % 360 - drive.transform.rotation.yaw % 360
                    ) % 360
                    if MAX_WAYPOINT_ANGLE <= angle <= 360 - MAX_WAYPOINT_ANGLE:
                        self._ol_wrong_lane = not self._ol_wrong_lane
                    else:
                        self._ol_wrong_lane = False
            self._ol_last_key = key
            self._ol_pre_wp = drive
        # distance accounting
        n = len(self.locs)
        for i in range(self._ol_index + 1, min(self._ol_index + OUT_LANE_WINDOW + 1, n)):
            if self._passed(i, loc):
                new = float(np.linalg.norm(self.locs[self._ol_index] - self.locs[i]))
                self._ol_index = i
                self._ol_total += new
                if self._ol_outside or self._ol_wrong_lane:
                    self._ol_wrong += new

    # --- AgentBlockedTest ------------------------------------------------------------------------------
    def _blocked(self, speed: float, loc: np.ndarray, t: float) -> None:
        if speed < self.cfg.blocked_speed and self._blocked_since is not None:
            if t - self._blocked_since > self.cfg.blocked_time_s:
                self.events["vehicle_blocked"].append(scoring.msg_blocked(*loc))
                self.done = True
        else:
            self._blocked_since = t

    # ------------------------------------------------------------------------------------------------
    def finalize(self) -> dict[str, list]:
        """Terminate (adds the outside-lanes event) and return the infraction lists.

        The off-road entry is a dict {distance, percentage} so the penalty uses the unrounded percentage
        (as the leaderboard); `scoring.make_route_record` turns it into the leaderboard's message."""
        events = {k: list(v) for k, v in self.events.items()}
        if self._ol_wrong > 0 and self._ol_total > 0:
            events["outside_route_lanes"].append(
                {"distance": self._ol_wrong, "percentage": self._ol_wrong / self._ol_total * 100.0}
            )
        return events
