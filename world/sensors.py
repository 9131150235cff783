"""Leaderboard-format sensor data of the offline world.

`make_input_data` packs rendered images and the ego state exactly as the CARLA leaderboard hands them to
an agent's `run_step(input_data, timestamp)`: `input_data[id] = (frame, data)` with
- cameras (rig names): BGRA uint8 (H, W, 4), as `sensor.camera.rgb` raw data reshaped;
- "GPS": np.array([lat, lon, alt]) of the GNSS mount (`rig.imu_x` metres forward of the ego origin);
- "IMU": np.array([acc x, y, z, gyro x, y, z, compass]) in CARLA's sensor convention: left-handed axes
  (x forward, y right, z up), the accelerometer includes gravity (+9.81 on z at rest, CARLA PR #2795),
  gyroscope in rad/s (an axial vector: under the y mirror it becomes (-wx, wy, -wz), so a left turn reads
  negative z), compass in radians in [0, 2 pi), 0 = north = CARLA -y, clockwise (east = pi/2);
- "SPEED": {"speed": m/s}.

GNSS and compass values come from `vlmad.gnss` (the conversion math shared with the route GPS and the
deployed agent).
"""

from __future__ import annotations

import cv2
import numpy as np

from vlmad.frames import ego_imu_to_carla, ego_to_carla_xyz, transform_points, yaw_of
from vlmad.gnss import carla_xy_to_gnss, compass_from_yaw, geo_reference
from vlmad.rig import Rig

GRAVITY = 9.81  # m/s^2, as CARLA's IMU adds it


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
    acc, w = ego_imu_to_carla(specific_force(world_from_ego, accel_ego), gyro)
    compass = compass_from_yaw(yaw_of(world_from_ego))
    out["IMU"] = (frame, np.array([*acc, *w, compass]))
    out["SPEED"] = (frame, {"speed": float(speed)})
    return out
