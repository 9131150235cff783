"""GNSS and compass conventions: the one home of the GNSS conversion math (the offline world's sensors,
its route GPS and the deployed agent all use it, so none of them needs the others).

Latitude/longitude follow CARLA's classic geolocation (`carla/geom/GeoLocation.cpp` up to 0.9.15, the
server of the Town05 benchmark, 0.9.10.1) which the leaderboard itself also uses to compute the GPS route
it gives to `set_global_plan` (`route_manipulation._location_to_gps`): a spherical Mercator with scale
cos(lat_ref) about the reference (lat_ref, lon_ref) = the `+lat_0` / `+lon_0` of the OpenDRIVE header's
geoReference (42.0, 2.0 when absent, as CARLA), north = CARLA -y. So the sensor GPS and the route GPS
agree, as in the benchmark. Note: the 0.9.16 PyPI client's own `Map.transform_to_geolocation` gives the
same origin but a transverse-Mercator variant with north = +y (measured here: 100 m along +y gives
+0.000899 deg latitude); the offline world does not use it for the sensor, to stay consistent with the
route plan and with the benchmark server (the agent's `agent.route.GnssFrame` handles both).

Compass: CARLA's IMU compass is radians in [0, 2 pi), 0 = north = CARLA -y, clockwise (east = pi/2).
Our world frame is the right-handed one of `vlmad.frames` (x east, y north = -CARLA y).
"""

from __future__ import annotations

import math
import re

import numpy as np

from vlmad.frames import carla_to_ego_xyz, ego_to_carla_xyz, wrap_angle

EARTH_RADIUS_EQUA = 6378137.0  # metres, CARLA's (and the leaderboard's) Mercator sphere
DEFAULT_GEO_REFERENCE = (42.0, 2.0)  # CARLA's default when the OpenDRIVE header has no geoReference


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


def gnss_to_world_xy(lat: float, lon: float, ref: tuple[float, float]) -> np.ndarray:
    """GNSS (degrees) -> (2,) position in our right-handed world frame for the map reference `ref`."""
    cx, cy = gnss_to_carla_xy(lat, lon, *ref)
    return carla_to_ego_xyz(float(cx), float(cy))[:2]


def world_xy_to_gnss(xy: np.ndarray, ref: tuple[float, float]) -> tuple[float, float]:
    """Inverse of `gnss_to_world_xy`: (2,) world position -> (lat, lon) degrees."""
    cx, cy, _ = ego_to_carla_xyz([float(xy[0]), float(xy[1]), 0.0])
    lat, lon = carla_xy_to_gnss(float(cx), float(cy), *ref)
    return float(lat), float(lon)


def compass_from_yaw(yaw: float) -> float:
    """Our world yaw (radians, CCW from east) -> CARLA compass (radians in [0, 2 pi), 0 north, clockwise)."""
    return float((math.pi / 2.0 - yaw) % (2.0 * math.pi))


def yaw_from_compass(compass: float) -> float:
    """Inverse of `compass_from_yaw`, wrapped to [-pi, pi)."""
    return float(wrap_angle(math.pi / 2.0 - compass))
