"""Vehicle dynamics of the offline world: a kinematic bicycle for the ego, IDM for the traffic.

Ego control follows CARLA's `VehicleControl`: throttle and brake in [0, 1], steer in [-1, 1] with positive
steer turning RIGHT (CARLA is left-handed), `reverse` flips the drive direction, `hand_brake` brakes. The
state lives in our right-handed world frame (yaw CCW), reference point at the body centre as a CARLA
actor's location (so the rig's camera mounts apply unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from world.config import DynamicsConfig, TrafficConfig


@dataclass
class EgoState:
    """Ego vehicle state in the world frame."""

    x: float  # metres
    y: float  # metres
    yaw: float  # radians CCW
    v: float = 0.0  # signed longitudinal speed, m/s (negative when reversing)
    wheel_angle: float = 0.0  # current front-wheel angle, radians (positive = left)
    accel: float = 0.0  # longitudinal acceleration of the last step, m/s^2
    yaw_rate: float = 0.0  # rad/s
    lat_accel: float = 0.0  # lateral acceleration, m/s^2 (positive = left)

    def copy(self) -> EgoState:
        return EgoState(**self.__dict__)


def _clip01(v: float) -> float:
    v = float(v)
    return 0.0 if not math.isfinite(v) else min(max(v, 0.0), 1.0)


def step_ego(st: EgoState, control, cfg: DynamicsConfig, dt: float) -> EgoState:
    """Advance the ego by `dt` under a carla.VehicleControl-like `control` (NaN inputs count as 0)."""
    throttle, brake = _clip01(control.throttle), _clip01(control.brake)
    steer = float(control.steer) if math.isfinite(float(control.steer)) else 0.0
    steer = min(max(steer, -1.0), 1.0)
    direction = -1.0 if bool(getattr(control, "reverse", False)) else 1.0

    # Steering actuator: first-order lag towards the commanded wheel angle (CARLA steer > 0 = right).
    target = -steer * math.radians(cfg.max_steer_deg)
    alpha = 1.0 - math.exp(-dt / max(cfg.steer_time_constant, 1e-6))
    wheel = st.wheel_angle + alpha * (target - st.wheel_angle)

    # Longitudinal: throttle pushes in the drive direction, everything else opposes the motion.
    v = st.v
    push = throttle * cfg.max_accel * max(0.0, 1.0 - abs(v) / cfg.max_speed) * direction
    if direction < 0 and v <= -cfg.max_reverse_speed:
        push = 0.0
    resist = brake * cfg.max_brake + cfg.rolling_resistance + cfg.drag * v * v
    if bool(getattr(control, "hand_brake", False)):
        resist += cfg.hand_brake_decel
    if throttle == 0.0 and brake == 0.0:
        resist += cfg.engine_brake
    v_new = v + push * dt
    dec = resist * dt  # resistance opposes the motion and never reverses it (brakes hold a stopped car)
    v_new = 0.0 if abs(v_new) <= dec else v_new - math.copysign(dec, v_new)

    # Lateral: kinematic bicycle about the body centre, curvature limited by grip.
    tan_d = math.tan(wheel)
    beta = math.atan(0.5 * tan_d)
    curvature = math.cos(beta) * tan_d / cfg.wheelbase
    v_mid = 0.5 * (v + v_new)
    if v_mid * v_mid * abs(curvature) > cfg.max_lateral_accel:
        curvature = math.copysign(cfg.max_lateral_accel / (v_mid * v_mid), curvature)
        beta = math.atan(0.5 * cfg.wheelbase * curvature)
    yaw_rate = v_mid * curvature
    heading = st.yaw + 0.5 * yaw_rate * dt + beta
    x = st.x + v_mid * math.cos(heading) * dt
    y = st.y + v_mid * math.sin(heading) * dt
    yaw = (st.yaw + yaw_rate * dt + math.pi) % (2 * math.pi) - math.pi
    return EgoState(x, y, yaw, v_new, wheel, (v_new - v) / dt, yaw_rate, v_mid * yaw_rate)


def idm_accel(
    v: np.ndarray, v0: np.ndarray, gap: np.ndarray, dv: np.ndarray, cfg: TrafficConfig
) -> np.ndarray:
    """Intelligent Driver Model acceleration (vectorised).

    v: (N,) speeds; v0: (N,) desired speeds; gap: (N,) bumper-to-bumper distance to the obstacle ahead
    (inf when free); dv: (N,) approach rate v - v_lead. Returns (N,) m/s^2, floored at -9.
    """
    s_star = cfg.idm_gap + np.maximum(
        0.0, v * cfg.idm_headway + v * dv / (2 * math.sqrt(cfg.idm_accel * cfg.idm_decel))
    )
    free = 1.0 - (v / np.maximum(v0, 0.1)) ** 4
    inter = (s_star / np.maximum(gap, 0.1)) ** 2
    return np.maximum(cfg.idm_accel * (free - inter), -9.0)
