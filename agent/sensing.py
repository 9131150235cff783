"""Leaderboard `input_data` -> what the model and the controller need, with every check that can fail.

input_data[id] = (frame, data) (docs/facts.md section 8): cameras BGRA uint8 (H, W, 4); "GPS" [lat, lon, alt];
"IMU" [acc x, y, z, gyro x, y, z, compass] in CARLA's left-handed axes (accelerometer with gravity,
compass 0 = north, clockwise); "SPEED" {"speed": m/s}. `read_sensors` raises `SensorError` (one line,
no traceback) for anything missing, malformed, non-finite or stale; the agent brakes on it.

Poses. GNSS gives the absolute position (for the route) but the leaderboard adds ~0.5 m of noise per
reading, far too much for the ego motion between two BEV frames. `Odometry` integrates speedometer and
compass (both clean) from the first GNSS fix; its poses feed `cur_from_prev`, the CAN bus and ego history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.features import can_bus_delta, normalize_images, resize_image, resized_size
from models.vad import VADConfig
from nusc.records import can_bus_vector
from vlmad.frames import carla_imu_to_ego, se2_pose
from vlmad.gnss import yaw_from_compass
from vlmad.rig import Rig

GNSS_TYPE, IMU_TYPE, SPEED_TYPE, CAMERA_TYPE = (
    "sensor.other.gnss", "sensor.other.imu", "sensor.speedometer", "sensor.camera.rgb")


class SensorError(Exception):
    """A sensor reading the agent cannot drive on (missing, malformed, non-finite or stale)."""


@dataclass
class EgoReading:
    """The non-image sensors of one tick, converted to our right-handed ego frame (x fwd, y left, z up)."""

    lat: float  # GNSS latitude, degrees
    lon: float  # GNSS longitude, degrees
    alt: float  # GNSS altitude, metres
    accel: np.ndarray  # (3,) accelerometer, m/s^2, includes gravity (+9.81 on z at rest), as nuScenes' pose
    gyro: np.ndarray  # (3,) angular velocity, rad/s, right-handed (a left turn is positive z)
    yaw: float  # heading in our world frame (radians CCW from east), from the compass
    speed: float  # forward speed, m/s (negative when reversing)


def read_sensors(input_data: dict, specs: Sequence[dict], max_lag: int,
                 input_sizes: dict[str, tuple[int, int]] | None = None) -> EgoReading:
    """Check every sensor of `specs` in `input_data`; return the ego reading. Raises SensorError.

    Cameras must come at the size `specs` asks for or, when `input_sizes` names one (W, H) for the camera,
    already resized to it (the agent bridge resizes on the simulator side, see `input_image_sizes`)."""
    frames: dict[str, int] = {}
    by_type: dict[str, object] = {}
    for s in specs:
        sid = str(s["id"])
        item = input_data.get(sid)
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise SensorError(f"sensor {sid!r} missing from input_data (have {sorted(map(str, input_data))})")
        frame, data = item
        try:
            frames[sid] = int(frame)
        except (TypeError, ValueError):
            raise SensorError(f"sensor {sid!r}: frame {frame!r} is not an integer") from None
        if s["type"] == CAMERA_TYPE:
            arr = data
            want = {(int(s["width"]), int(s["height"]))}
            if input_sizes and sid in input_sizes:
                want.add(tuple(int(v) for v in input_sizes[sid]))
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 4:
                got = (arr.dtype, arr.shape) if isinstance(arr, np.ndarray) else type(arr).__name__
                raise SensorError(f"camera {sid!r}: expected BGRA uint8 (H, W, 4), got {got}")
            if (arr.shape[1], arr.shape[0]) not in want:
                raise SensorError(f"camera {sid!r}: image {arr.shape[1]}x{arr.shape[0]}, expected one of "
                                  f"{sorted(f'{w}x{h}' for w, h in want)}")
        else:
            by_type[s["type"]] = data
    newest = max(frames.values())
    stale = {k: newest - f for k, f in frames.items() if newest - f > max_lag}
    if stale:
        raise SensorError(f"stale sensor(s) {stale} frames behind frame {newest}")
    return _ego_reading(by_type)


def _vector(data: object, n: int, what: str) -> np.ndarray:
    try:
        v = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SensorError(f"{what}: not numeric ({type(data).__name__})") from None
    if v.size < n:
        raise SensorError(f"{what}: expected {n} values, got {v.size}")
    if not np.isfinite(v[:n]).all():
        raise SensorError(f"{what}: NaN or inf in {np.round(v[:n], 4).tolist()}")
    return v[:n]


def _ego_reading(by_type: dict[str, object]) -> EgoReading:
    for t in (GNSS_TYPE, IMU_TYPE, SPEED_TYPE):
        if t not in by_type:
            raise SensorError(f"no {t} among the agent's sensors")
    gps = _vector(by_type[GNSS_TYPE], 3, "GNSS")
    imu = _vector(by_type[IMU_TYPE], 7, "IMU")
    spd = by_type[SPEED_TYPE]
    speed = _vector(spd.get("speed") if isinstance(spd, dict) else spd, 1, "speedometer")[0]
    accel, gyro = carla_imu_to_ego(imu[0:3], imu[3:6])  # world/sensors.py writes the inverse
    yaw = yaw_from_compass(float(imu[6]))
    return EgoReading(float(gps[0]), float(gps[1]), float(gps[2]), accel, gyro, yaw, float(speed))


class ImageInput:
    """Camera images -> the model's normalised, resized, padded tensor and matching `img_from_ego`.

    The checkpoint's config decides everything, through the model-input contract (models/features.py) the
    dataset uses too: output size = `resized_size(img_size_raw, img_scale)`, padded at the bottom/right to
    `cfg.img_hw` with zeros after normalisation, channels and normalisation per `img_norm` (RGB ImageNet,
    or caffe BGR). Projections come from the rig camera at the received size, scaled by the resize factors.
    """

    def __init__(self, cfg: VADConfig, rig: Rig) -> None:
        self.cfg = cfg
        self.names = rig.camera_names[: cfg.num_cams]
        self.rig = rig
        w_raw, h_raw = cfg.img_size_raw
        self.size = resized_size(w_raw, h_raw, cfg.img_scale)  # (w, h)
        self.padded_hw = cfg.img_hw
        self._proj: dict[tuple[str, int, int], np.ndarray] = {}

    def img_from_ego(self, name: str, width: int, height: int) -> np.ndarray:
        """(4, 4) projection of camera `name` for an image received at width x height, after the resize."""
        key = (name, width, height)
        if key not in self._proj:
            w, h = self.size
            scale = np.diag([w / width, h / height, 1.0, 1.0])
            self._proj[key] = scale @ self.rig.camera(name).resized(width, height).img_from_ego(1.0)
        return self._proj[key]

    def __call__(self, input_data: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """-> img (Ncam, 3, Hp, Wp) float32 on `device`, img_from_ego (Ncam, 4, 4) float32 on `device`."""
        w, h = self.size
        frames, mats = [], []
        for name in self.names:
            bgra = input_data[name][1]
            mats.append(self.img_from_ego(name, bgra.shape[1], bgra.shape[0]))
            frames.append(cv2.cvtColor(resize_image(bgra, w, h), cv2.COLOR_BGRA2RGB))
        rgb = torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2)  # uint8 (N, 3, h, w)
        img = normalize_images(rgb, self.cfg.img_norm)
        hp, wp = self.padded_hw
        img = F.pad(img, (0, wp - w, 0, hp - h))
        return img, torch.as_tensor(np.stack(mats), dtype=torch.float32, device=device)


class Odometry:
    """Planar dead reckoning from speed and compass, anchored at the first GNSS fix (see module docstring)."""

    def __init__(self) -> None:
        self.x = self.y = self.z = self.yaw = 0.0
        self.started = False

    def reset(self, xy: np.ndarray, yaw: float, z: float) -> None:
        self.x, self.y, self.z, self.yaw, self.started = float(xy[0]), float(xy[1]), z, yaw, True

    def update(self, speed: float, yaw: float, dt: float, z: float) -> np.ndarray:
        """Advance by dt seconds at `speed` along the mean heading; returns world_from_ego (4, 4)."""
        dyaw = math.remainder(yaw - self.yaw, 2 * math.pi)
        mid = self.yaw + 0.5 * dyaw
        self.x += speed * dt * math.cos(mid)
        self.y += speed * dt * math.sin(mid)
        self.yaw, self.z = yaw, z
        return self.pose()

    def pose(self) -> np.ndarray:
        return se2_pose(self.x, self.y, self.yaw, self.z)


def can_bus(world_from_ego: np.ndarray, ego: EgoReading,
            prev_world_from_ego: np.ndarray | None) -> np.ndarray:
    """The 18-value CAN bus of docs/data_contract.md in the queue form nusc.dataset feeds too
    (`models.features.can_bus_delta`): [0:3] the translation since the previous BEV frame (world axes) and
    [17] the yaw change in degrees, both zero without a previous frame; the rest absolute (quaternion,
    accel, rotation rate, velocity, yaw)."""
    vec = can_bus_vector(world_from_ego, ego.accel, ego.gyro, np.array([ego.speed, 0.0, 0.0]))
    prev = None
    if prev_world_from_ego is not None:
        prev = can_bus_vector(prev_world_from_ego, ego.accel, ego.gyro, np.zeros(3))
    return can_bus_delta(vec, prev)
