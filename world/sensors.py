"""Leaderboard-format sensor data of the offline world, and the one home of the GNSS conversion math.

`make_input_data` packs rendered images and the ego state exactly as the CARLA leaderboard hands them to
an agent's `run_step(input_data, timestamp)`: `input_data[id] = (frame, data)` with
- cameras (rig names): BGRA uint8 (H, W, 4), as `sensor.camera.rgb` raw data reshaped;
- "GPS": np.array([lat, lon, alt]) of the GNSS mount (`rig.imu_x` metres forward of the ego origin);
- "IMU": np.array([acc x, y, z, gyro x, y, z, compass]) in CARLA's sensor convention: left-handed axes
  (x forward, y right, z up), the accelerometer includes gravity (+9.81 on z at rest, CARLA PR #2795),
  gyroscope in rad/s (an axial vector: under the y mirror it becomes (-wx, wy, -wz), so a left turn reads
  negative z), compass in radians in [0, 2 pi), 0 = north = CARLA -y, clockwise (east = pi/2);
- "SPEED": {"speed": m/s}.

GNSS. Latitude/longitude follow CARLA's classic geolocation (`carla/geom/GeoLocation.cpp` up to 0.9.15,
the server of the Town05 benchmark, 0.9.10.1) which the leaderboard itself also uses to compute the GPS
route it gives to `set_global_plan` (`route_manipulation._location_to_gps`): a spherical Mercator with
scale cos(lat_ref) about the reference (lat_ref, lon_ref) = the `+lat_0` / `+lon_0` of the OpenDRIVE
header's geoReference (42.0, 2.0 when absent, as CARLA), north = CARLA -y. So the sensor GPS and the
route GPS agree, as in the benchmark. Note: the 0.9.16 PyPI client's own `Map.transform_to_geolocation`
gives the same origin but a transverse-Mercator variant with north = +y (measured here: 100 m along +y
gives +0.000899 deg latitude); we do not use it for the sensor, to stay consistent with the route plan
and with the benchmark server.
"""

from __future__ import annotations

import math
import re

import cv2
import numpy as np

from vlmad.frames import ego_to_carla_xyz, transform_points, wrap_angle, yaw_of
from vlmad.rig import Rig

EARTH_RADIUS_EQUA = 6378137.0  # metres, CARLA's (and the leaderboard's) Mercator sphere
DEFAULT_GEO_REFERENCE = (42.0, 2.0)  # CARLA's default when the OpenDRIVE header has no geoReference
GRAVITY = 9.81  # m/s^2, as CARLA's IMU adds it


# ----------------------------------------------------------------------------------------------------
# GNSS <-> CARLA x/y (the only place in the project with this math)
# ----------------------------------------------------------------------------------------------------
def geo_reference(xodr_text_or_map) -> tuple[float, float]:
    """(lat_ref, lon_ref) in degrees from an OpenDRIVE text or a `carla.Map` (its `to_opendrive()`).

    Parses `+lat_0=` / `+lon_0=` of the header's <geoReference>, as the leaderboard's `_get_latlon_ref`.
    """
    text = xodr_text_or_map if isinstance(xodr_text_or_map, str) else xodr_text_or_map.to_opendrive()
    m = re.search(r"<geoReference>(.*?)</geoReference>", text[:20000], flags=re.S)
    lat, lon = DEFAULT_GEO_REFERENCE
    if m:
        geo = m.group(1)
        mlat = re.search(r"\+lat_0=([-+0-9.eE]+)", geo)
        mlon = re.search(r"\+lon_0=([-+0-9.eE]+)", geo)
        if mlat:
            lat = float(mlat.group(1))
        if mlon:
            lon = float(mlon.group(1))
    return lat, lon


def _mercator_ref(lat_ref: float, lon_ref: float) -> tuple[float, float, float]:
    scale = math.cos(math.radians(lat_ref))
    mx = scale * math.radians(lon_ref) * EARTH_RADIUS_EQUA
    my = scale * EARTH_RADIUS_EQUA * math.log(math.tan(math.radians(90.0 + lat_ref) / 2.0))
    return scale, mx, my


def carla_xy_to_gnss(x, y, lat_ref: float, lon_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """CARLA location(s) (x east, y south, metres) -> (lat, lon) degrees. Broadcasts over arrays."""
    scale, mx0, my0 = _mercator_ref(lat_ref, lon_ref)
    mx = mx0 + np.asarray(x, dtype=np.float64)
    my = my0 - np.asarray(y, dtype=np.float64)
    lon = np.degrees(mx / (EARTH_RADIUS_EQUA * scale))
    lat = 2.0 * np.degrees(np.arctan(np.exp(my / (EARTH_RADIUS_EQUA * scale)))) - 90.0
    return lat, lon


def gnss_to_carla_xy(lat, lon, lat_ref: float, lon_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `carla_xy_to_gnss`: (lat, lon) degrees -> CARLA (x, y) metres. Broadcasts."""
    scale, mx0, my0 = _mercator_ref(lat_ref, lon_ref)
    mx = np.radians(np.asarray(lon, dtype=np.float64)) * EARTH_RADIUS_EQUA * scale
    lat = np.asarray(lat, dtype=np.float64)
    my = scale * EARTH_RADIUS_EQUA * np.log(np.tan(np.radians(90.0 + lat) / 2.0))
    return mx - mx0, my0 - my


def compass_from_yaw(yaw: float) -> float:
    """Our world yaw (radians, CCW from east) -> CARLA compass (radians in [0, 2 pi), 0 north, clockwise)."""
    return float((math.pi / 2.0 - yaw) % (2.0 * math.pi))


def yaw_from_compass(compass: float) -> float:
    """Inverse of `compass_from_yaw`, wrapped to [-pi, pi)."""
    return float(wrap_angle(math.pi / 2.0 - compass))


# ----------------------------------------------------------------------------------------------------
# input_data
# ----------------------------------------------------------------------------------------------------
_GEO_REFS: dict[int, tuple[object, tuple[float, float]]] = {}


def _map_geo_reference(carla_map) -> tuple[float, float]:
    hit = _GEO_REFS.get(id(carla_map))
    if hit is None or hit[0] is not carla_map:
        hit = (carla_map, geo_reference(carla_map))
        _GEO_REFS.clear()  # one map at a time is the norm; never let stale ids accumulate
        _GEO_REFS[id(carla_map)] = hit
    return hit[1]


def specific_force(world_from_ego: np.ndarray, accel_ego: np.ndarray) -> np.ndarray:
    """(3,) what an accelerometer reads, in our ego frame: kinematic acceleration `accel_ego` (ego frame,
    m/s^2, no gravity) plus +9.81 m/s^2 along world up. The one definition of the IMU / CAN bus `accel`
    convention (nuScenes pose messages and CARLA's IMU include gravity): the agent's IMU and the collected
    dataset's CAN bus both come from here, so the model sees the same values in training and in closed loop.
    """
    r_ego_from_world = np.asarray(world_from_ego, dtype=np.float64)[:3, :3].T
    return np.asarray(accel_ego, dtype=np.float64).reshape(3) + r_ego_from_world @ [0.0, 0.0, GRAVITY]


def make_input_data(images: dict[str, np.ndarray], frame: int, world_from_ego: np.ndarray, speed: float,
                    accel_ego: np.ndarray, gyro: np.ndarray, carla_map, rig: Rig) -> dict:
    """Leaderboard `input_data` for one tick.

    images: camera name -> (H, W, 3) uint8 RGB (every rig camera must be present).
    world_from_ego: (4, 4) ego pose, world frame (right-handed, y north).
    speed: forward speed, m/s. accel_ego: (3,) kinematic acceleration in the ego frame, m/s^2, WITHOUT
    gravity (the IMU adds it). gyro: (3,) angular velocity in the ego frame (right-handed), rad/s.
    """
    out: dict = {}
    for name in rig.camera_names:
        if name not in images:
            raise KeyError(f"make_input_data: no image for camera {name!r}; got {sorted(images)}")
        img = np.asarray(images[name])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"camera {name!r}: expected (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
        out[name] = (frame, cv2.cvtColor(img, cv2.COLOR_RGB2BGRA))
    world_from_ego = np.asarray(world_from_ego, dtype=np.float64)
    mount = transform_points(world_from_ego, np.array([rig.imu_x, 0.0, 0.0]))
    cx, cy, cz = ego_to_carla_xyz(mount)
    lat, lon = carla_xy_to_gnss(cx, cy, *_map_geo_reference(carla_map))
    out["GPS"] = (frame, np.array([float(lat), float(lon), float(cz)]))
    acc = specific_force(world_from_ego, accel_ego)
    w = np.asarray(gyro, dtype=np.float64).reshape(3)
    compass = compass_from_yaw(yaw_of(world_from_ego))
    out["IMU"] = (frame, np.array([acc[0], -acc[1], acc[2], -w[0], w[1], -w[2], compass]))
    out["SPEED"] = (frame, {"speed": float(speed)})
    return out
