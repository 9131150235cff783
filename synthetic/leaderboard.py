"""Synthetic routes and leaderboard `input_data` for the agent's tests and scripts/bench_agent.py.

Not a simulator: a route with turns as the leaderboard would hand it to `set_global_plan` (GPS twin and
CARLA transforms with RoadOptions), and one tick of sensor data for a given ego pose, packed by the
offline world's own `world.sensors.make_input_data` (so the conventions are the project's one copy).
"""

from __future__ import annotations

import math

import carla
import numpy as np

from vlmad.commands import RoadOption
from vlmad.frames import ego_to_carla_xyz, ego_yaw_to_carla
from vlmad.gnss import carla_xy_to_gnss
from vlmad.rig import Rig
from world.sensors import make_input_data

GEO_REF = (49.0, 8.0)  # deliberately not CARLA's default (42, 2): the agent must recover it from the route


class GeoMap:
    """The one thing `make_input_data` asks of a carla.Map: OpenDRIVE text with a geoReference."""

    def __init__(self, ref: tuple[float, float] = GEO_REF) -> None:
        self.ref = ref

    def to_opendrive(self) -> str:
        return (f"<OpenDRIVE><header><geoReference><![CDATA[+proj=tmerc +lat_0={self.ref[0]} "
                f"+lon_0={self.ref[1]}]]></geoReference></header></OpenDRIVE>")


def turning_route(spacing: float = 1.0, radius: float = 10.0) -> tuple[np.ndarray, list[int]]:
    """Dense route in our world frame (x east, y north): 60 m east, a LEFT turn, 40 m north, a RIGHT turn,
    40 m east. Returns (points (N, 2), RoadOption per point) like the leaderboard's interpolated route."""
    pts: list[tuple[float, float]] = []
    opts: list[int] = []

    def straight(start: np.ndarray, direction: np.ndarray, length: float) -> None:
        for s in np.arange(0.0, length, spacing):
            pts.append(tuple(start + s * direction))
            opts.append(int(RoadOption.LANEFOLLOW))

    def arc(centre: np.ndarray, a0: float, sweep: float, option: RoadOption) -> None:
        n = max(2, math.ceil(abs(sweep) * radius / spacing))
        for a in np.linspace(a0, a0 + sweep, n, endpoint=False):
            pts.append((centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a)))
            opts.append(int(option))

    straight(np.array([0.0, 0.0]), np.array([1.0, 0.0]), 60.0)
    arc(np.array([60.0, radius]), -math.pi / 2, math.pi / 2, RoadOption.LEFT)  # east -> north
    straight(np.array([60.0 + radius, radius]), np.array([0.0, 1.0]), 40.0)
    arc(np.array([60.0 + 2 * radius, 40.0 + radius]), math.pi, -math.pi / 2, RoadOption.RIGHT)  # -> east
    straight(np.array([60.0 + 2 * radius, 40.0 + 2 * radius]), np.array([1.0, 0.0]), 40.0 + spacing)
    return np.array(pts), opts


def leaderboard_plans(points: np.ndarray, options: list[int], ref: tuple[float, float] = GEO_REF
                      ) -> tuple[list, list]:
    """(gps_plan, world_plan) as `set_global_plan` receives them, for a route in our world frame."""
    pts = np.asarray(points, dtype=np.float64)
    d = np.gradient(pts, axis=0)
    yaws = np.arctan2(d[:, 1], d[:, 0])
    world, gps = [], []
    for (x, y), yaw, opt in zip(pts, yaws, options):
        cx, cy, cz = ego_to_carla_xyz(np.array([x, y, 0.0]))
        tf = carla.Transform(carla.Location(float(cx), float(cy), float(cz)),
                             carla.Rotation(yaw=float(ego_yaw_to_carla(yaw))))
        lat, lon = carla_xy_to_gnss(cx, cy, *ref)
        world.append((tf, RoadOption(opt)))
        gps.append(({"lat": float(lat), "lon": float(lon), "z": 0.0}, RoadOption(opt)))
    return gps, world


def camera_images(sensors: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """Random RGB images at the size each camera of `sensors` asks for."""
    rng = np.random.default_rng(seed)
    return {str(s["id"]): rng.integers(0, 256, (int(s["height"]), int(s["width"]), 3), dtype=np.uint8)
            for s in sensors if s["type"] == "sensor.camera.rgb"}


def input_data(rig: Rig, images: dict[str, np.ndarray], frame: int, world_from_ego: np.ndarray, speed: float,
               accel: np.ndarray | None = None, gyro: np.ndarray | None = None,
               geo_map: GeoMap | None = None) -> dict:
    """Leaderboard input_data for one tick (cameras BGRA, GPS, IMU, SPEED), ids as the rig's sensors()."""
    return make_input_data(images, frame, world_from_ego, speed, np.zeros(3) if accel is None else accel,
                           np.zeros(3) if gyro is None else gyro, geo_map or GeoMap(), rig)
