"""Plan -> steer / throttle / brake: the lateral and longitudinal PID of the public VAD CARLA agent.

The planner outputs 6 ego positions at 0.5 s steps (ego frame: x forward, y left, metres). As in the
public VAD / TransFuser leaderboard agents (docs/facts.md section 8):
- desired speed = mean spacing of consecutive plan points x 2 (points are 0.5 s apart);
- steering aims at the plan point whose segment midpoint is nearest `aim_dist` (~4 m) ahead; the route
  target point is used instead when it needs less steering, or when the plan's last heading disagrees
  with it strongly while it is near (helps with sudden turn commands, removes outlier plans);
- the steering error is the angle to the aim point in units of 90 degrees, positive to the RIGHT,
  because CARLA's steer is positive to the right (its frame is left-handed: y points right);
- brake when the desired speed is below `brake_speed` or the ego is more than `brake_ratio` times faster
  than desired; otherwise throttle = speed PID on the (clipped) speed deficit, capped at `max_throttle`.

Each PID keeps a window of its last `n` errors: integral = window mean, derivative = last difference.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vlmad.horizon import STEP_S


@dataclass
class ControllerConfig:
    """Gains and thresholds of the plan-following controller (defaults: the public VAD CARLA agent)."""

    turn_kp: float = 0.75  # steering PID proportional gain (error = angle / 90 deg, positive right)
    turn_ki: float = 0.75  # steering PID integral gain (on the mean of the error window)
    turn_kd: float = 0.3  # steering PID derivative gain (on the last error difference)
    turn_n: int = 40  # steering PID window length, ticks
    speed_kp: float = 5.0  # throttle PID proportional gain (error = clipped speed deficit, m/s)
    speed_ki: float = 0.5  # throttle PID integral gain
    speed_kd: float = 1.0  # throttle PID derivative gain
    speed_n: int = 40  # throttle PID window length, ticks
    max_throttle: float = 0.75  # throttle cap
    brake_speed: float = 0.4  # m/s; a plan slower than this means "stop": brake
    brake_ratio: float = 1.1  # brake when speed / desired speed exceeds this
    clip_delta: float = 0.25  # m/s; the speed deficit fed to the throttle PID is clipped to [0, clip_delta]
    aim_dist: float = 4.0  # metres; steer toward the plan point whose segment midpoint is nearest this
    use_route_target: bool = True  # steer to the route target point when it needs less steering or the
    # plan disagrees with a near target (the public agent's rule); False = always steer along the plan
    angle_thresh: float = 0.3  # |target angle - plan end heading| (units of 90 deg) counted as disagreement
    dist_thresh: float = 10.0  # metres ahead; a target nearer than this may override the plan's aim point


class PID:
    """PID over a sliding window of errors (integral = mean of the window, derivative = last step)."""

    def __init__(self, kp: float, ki: float, kd: float, n: int) -> None:
        self.kp, self.ki, self.kd = kp, ki, kd
        self.window: deque[float] = deque([0.0] * n, maxlen=n)

    def step(self, error: float) -> float:
        self.window.append(float(error))
        integral = float(np.mean(self.window))
        derivative = self.window[-1] - self.window[-2] if len(self.window) >= 2 else 0.0
        return self.kp * error + self.ki * integral + self.kd * derivative


def angle_right(xy: np.ndarray) -> float:
    """Angle of an ego-frame point or direction (x fwd, y left) from straight ahead, in units of 90 deg,
    positive to the right (CARLA's steering sign). Straight ahead 0, 90 deg right +1, 90 deg left -1."""
    return math.degrees(math.atan2(-float(xy[1]), float(xy[0]))) / 90.0


@dataclass
class ControlOutput:
    """One tick of control, in CARLA's conventions (steer in [-1, 1], positive right)."""

    steer: float
    throttle: float
    brake: float
    info: dict = field(default_factory=dict)  # desired_speed, aim, angles, which aim was used


class PlanController:
    """Tracks a plan (T, 2) in the current ego frame with the two PIDs; one instance per route."""

    def __init__(self, cfg: ControllerConfig | None = None) -> None:
        self.cfg = cfg or ControllerConfig()
        c = self.cfg
        self.turn = PID(c.turn_kp, c.turn_ki, c.turn_kd, c.turn_n)
        self.speed = PID(c.speed_kp, c.speed_ki, c.speed_kd, c.speed_n)

    def step(self, plan: np.ndarray, speed: float, target: np.ndarray | None = None) -> ControlOutput:
        """plan: (T >= 2, 2) ego positions STEP_S apart (x fwd, y left); speed: m/s; target: (2,) route
        target point in the ego frame, or None. The plan must be finite (the agent checks it)."""
        c = self.cfg
        wp = np.asarray(plan, dtype=np.float64).reshape(-1, 2)
        if len(wp) < 2:
            raise ValueError(f"a plan needs at least 2 points, got {len(wp)}")
        steps = np.linalg.norm(np.diff(wp, axis=0), axis=1)
        desired = float(steps.mean() / STEP_S)  # metres per plan step -> m/s
        # aim point: the plan point whose segment midpoint is nearest aim_dist (public agent's rule)
        mids = np.linalg.norm((wp[1:] + wp[:-1]) / 2.0, axis=1)
        aim = wp[int(np.argmin(np.abs(mids - c.aim_dist)))]
        angle = angle_right(aim)
        angle_last = angle_right(wp[-1] - wp[-2])
        use_target = False
        angle_target = float("nan")
        if target is not None and c.use_route_target:
            angle_target = angle_right(target)
            use_target = abs(angle_target) < abs(angle) or (
                abs(angle_target - angle_last) > c.angle_thresh and float(target[0]) < c.dist_thresh)
        angle_final = angle_target if use_target else angle
        steer = float(np.clip(self.turn.step(angle_final), -1.0, 1.0))

        brake = desired < c.brake_speed or speed / max(desired, 1e-6) > c.brake_ratio
        delta = float(np.clip(desired - speed, 0.0, c.clip_delta))
        throttle = float(np.clip(self.speed.step(delta), 0.0, c.max_throttle))
        if brake:
            throttle = 0.0
        info = {"desired_speed": desired, "aim": aim.tolist(), "angle": angle, "angle_target": angle_target,
                "angle_last": angle_last, "aim_is_target": use_target}
        return ControlOutput(steer, throttle, 1.0 if brake else 0.0, info)
