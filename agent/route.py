"""The route: global plan -> next target point, sparse goal point and driving command.

The leaderboard hands the agent its route twice, as GPS and as CARLA transforms, each with a RoadOption
(`set_global_plan`); the base class keeps a copy downsampled to ~50 m (plus every option change).
`RoutePlanner` is the planner of the public leaderboard agents: it pops route points once the ego has come
within `min_distance` of them (searching at most `max_distance` of route ahead) and returns the next one,
whose RoadOption gives VAD's command (vlmad.commands) and whose position is the sparse goal point.

GNSS. The ego position comes from the GNSS sensor. Two conventions exist (`GnssFrame`):
- "classic": CARLA <= 0.9.15 servers (the benchmark's 0.9.10.1), the offline world, and the leaderboard's
  own route GPS: a Mercator about the map's geo reference. The route carries both coordinates of every
  point, so `fit_geo_reference` recovers that reference exactly (no server or map query needed).
- "carla_map": CARLA 0.9.16 changed the map's geolocation (a transverse Mercator in which latitude grows
  with CARLA +y; measured with the 0.9.16 client), which its GNSS sensor follows; the live map's own
  `geolocation_to_transform` inverts it. The conversion math of the classic one lives in vlmad.gnss.

All positions here are in our right-handed world frame (x = CARLA x, y = -CARLA y), metres.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from vlmad.commands import Command, RoadOption, command_from_road_option
from vlmad.frames import carla_location_to_ego, carla_locations_to_ego_xy, se2_pose
from vlmad.gnss import DEFAULT_GEO_REFERENCE, gnss_to_carla_xy, gnss_to_world_xy

log = logging.getLogger("agent.vad")


def road_option_value(option) -> int:
    """The integer of a RoadOption: CARLA's enum (agents.navigation.local_planner), ours, or an int."""
    value = getattr(option, "value", option)
    try:
        return int(value)
    except (TypeError, ValueError):
        return int(RoadOption.VOID)


def ego_pose_from_gnss(gnss_xy: np.ndarray, yaw: float, gnss_x: float) -> np.ndarray:
    """world_from_ego (4, 4) of the ego origin from the GNSS position (world frame) of a receiver mounted
    `gnss_x` metres forward of it (the rig's imu_x, negative = behind) and the compass yaw (radians)."""
    heading = np.array([np.cos(yaw), np.sin(yaw)])
    xy = np.asarray(gnss_xy, dtype=np.float64)[:2] - gnss_x * heading
    return se2_pose(float(xy[0]), float(xy[1]), float(yaw))


def live_carla_map():
    """The CARLA map of the running leaderboard (CarlaDataProvider), or None outside the leaderboard."""
    try:
        from srunner.scenariomanager.carla_data_provider import CarlaDataProvider

        return CarlaDataProvider.get_map()
    except Exception:  # noqa: BLE001 - not under the leaderboard, or no world yet
        return None


class GnssFrame:
    """GNSS fix -> position in our world frame, under the convention of the server that produced it."""

    MODES = ("classic", "carla_map")

    def __init__(self, mode: str, ref: tuple[float, float], carla_map=None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"GNSS convention {mode!r}; valid: {self.MODES}")
        if mode == "carla_map" and not hasattr(carla_map, "geolocation_to_transform"):
            raise ValueError("the carla_map GNSS convention needs a carla.Map with geolocation_to_transform "
                             "(CARLA >= 0.9.16)")
        self.mode, self.ref, self.map = mode, ref, carla_map

    def world_xy(self, lat: float, lon: float, alt: float = 0.0) -> np.ndarray:
        if self.mode == "classic":
            return gnss_to_world_xy(lat, lon, self.ref)
        import carla

        loc = self.map.geolocation_to_transform(carla.GeoLocation(float(lat), float(lon), float(alt)))
        loc = getattr(loc, "location", loc)  # a Location (0.9.16) or a Transform
        return carla_location_to_ego(loc)[:2]


def fit_geo_reference(gps_plan: list, world_plan: list,
                      max_pairs: int = 64) -> tuple[tuple[float, float], float]:
    """(lat_ref, lon_ref) that maps the route's GPS onto its CARLA coordinates, and the worst residual (m).

    gps_plan: [({"lat", "lon", "z"}, option)]; world_plan: [(carla.Transform, option)], same length and
    order (what `set_global_plan` receives). With fewer than one pair, CARLA's default (42.0, 2.0).
    """
    n = min(len(gps_plan), len(world_plan))
    if n == 0:
        return DEFAULT_GEO_REFERENCE, float("nan")
    idx = np.unique(np.linspace(0, n - 1, min(n, max_pairs)).round().astype(int))
    lat = np.array([float(gps_plan[i][0]["lat"]) for i in idx])
    lon = np.array([float(gps_plan[i][0]["lon"]) for i in idx])
    cx = np.array([float(world_plan[i][0].location.x) for i in idx])
    cy = np.array([float(world_plan[i][0].location.y) for i in idx])

    def residual(ref: np.ndarray) -> np.ndarray:
        x, y = gnss_to_carla_xy(lat, lon, float(ref[0]), float(ref[1]))
        return np.concatenate([x - cx, y - cy])

    # start from the first point's own coordinates moved back by its offset (~1e-5 deg per metre)
    x0 = np.array([lat[0] + cy[0] / 111_000.0, lon[0] - cx[0] / (111_000.0 * np.cos(np.radians(lat[0])))])
    sol = least_squares(residual, x0, x_scale=[1e-3, 1e-3], xtol=1e-15, ftol=1e-15, gtol=1e-15)
    worst = float(np.abs(residual(sol.x)).max())
    return (float(sol.x[0]), float(sol.x[1])), worst


@dataclass
class RouteTarget:
    """What the route says at one tick."""

    xy: np.ndarray  # (2,) next route point, world frame
    option: int  # its RoadOption value
    command: Command  # VAD's planning mode derived from the option
    remaining: int  # route points left (including this one)


class RoutePlanner:
    """Pops reached route points and returns the next one (the public leaderboard agents' planner)."""

    def __init__(self, points: np.ndarray, options: list[int], min_distance: float = 4.0,
                 max_distance: float = 50.0) -> None:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0 or len(pts) != len(options):
            raise ValueError(f"a route needs >= 1 point and one option per point, got {len(pts)} points, "
                             f"{len(options)} options")
        self.route: deque[tuple[np.ndarray, int]] = deque(zip(pts, (int(o) for o in options)))
        self.min_distance, self.max_distance = min_distance, max_distance

    def run_step(self, pos: np.ndarray) -> RouteTarget:
        """Advance along the route for the ego at `pos` (2,) and return the target."""
        pos = np.asarray(pos, dtype=np.float64)[:2]
        if len(self.route) > 1:
            to_pop, farthest, cumulative = 0, -np.inf, 0.0
            for i in range(1, len(self.route)):
                if cumulative > self.max_distance:
                    break
                cumulative += float(np.linalg.norm(self.route[i][0] - self.route[i - 1][0]))
                d = float(np.linalg.norm(self.route[i][0] - pos))
                if d <= self.min_distance and d > farthest:  # the farthest reached point within range
                    farthest, to_pop = d, i
            for _ in range(to_pop):
                if len(self.route) > 2:  # always keep the last two (the final target stays)
                    self.route.popleft()
        xy, option = self.route[1] if len(self.route) > 1 else self.route[0]
        return RouteTarget(xy.copy(), option, command_from_road_option(option), len(self.route) - 1)


def planner_from_world_plan(world_plan: list, min_distance: float, max_distance: float) -> RoutePlanner:
    """RoutePlanner over [(carla.Transform, option)] (the downsampled plan)."""
    pts = carla_locations_to_ego_xy(t.location for t, _ in world_plan)
    return RoutePlanner(pts, [road_option_value(o) for _, o in world_plan], min_distance, max_distance)
