"""The plan-following PID: steering signs in CARLA's left-handed convention, speed and brake rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.controller import PID, ControllerConfig, PlanController, angle_right


def arc_plan(speed: float, curvature: float, steps: int = 6) -> np.ndarray:
    """Ego-frame plan (x fwd, y left) along a circle of signed curvature (positive = left), 0.5 s steps."""
    s = speed * 0.5 * np.arange(1, steps + 1)
    if abs(curvature) < 1e-9:
        return np.stack([s, np.zeros_like(s)], 1)
    r = 1.0 / curvature
    return np.stack([r * np.sin(s / r), r * (1 - np.cos(s / r))], 1)


def test_angle_sign_is_carla_steering():
    assert angle_right(np.array([10.0, 0.0])) == pytest.approx(0.0)
    assert angle_right(np.array([0.0, -5.0])) == pytest.approx(1.0)  # 90 deg to the right -> +1
    assert angle_right(np.array([0.0, 5.0])) == pytest.approx(-1.0)
    assert angle_right(np.array([5.0, -5.0])) == pytest.approx(0.5)


@pytest.mark.parametrize("curvature, sign", [(-0.05, 1), (0.05, -1), (0.0, 0)])
def test_plan_steers_toward_its_side(curvature, sign):
    """A plan bending right (y < 0 in our frame) must give positive CARLA steer, left negative."""
    ctrl = PlanController(ControllerConfig(use_route_target=False))
    out = ctrl.step(arc_plan(5.0, curvature), speed=5.0)
    if sign == 0:
        assert abs(out.steer) < 1e-9
    else:
        assert np.sign(out.steer) == sign and abs(out.steer) > 0.01


@pytest.mark.parametrize("side, sign", [(-1.0, 1), (1.0, -1)])
def test_near_route_target_overrides_a_straight_plan(side, sign):
    """The public agent's rule: a near target far off the plan's heading wins; steer goes to its side."""
    ctrl = PlanController()
    target = np.array([5.0, 5.0 * side])
    out = ctrl.step(arc_plan(4.0, 0.0), speed=4.0, target=target)
    assert out.info["aim_is_target"]
    assert np.sign(out.steer) == sign
    # the same target far ahead, on the plan's heading, does not override (no steering at all)
    out = PlanController().step(arc_plan(4.0, 0.0), speed=4.0, target=np.array([40.0, 0.0]))
    assert not out.info["aim_is_target"] and abs(out.steer) < 1e-9


def test_closed_loop_lateral_offset_converges():
    """A kinematic car left of a straight path (y = +1.5 m) steers right and settles toward it."""
    ctrl = PlanController(ControllerConfig(use_route_target=False))
    x, y, yaw, v, dt, wheelbase, max_wheel = 0.0, 1.5, 0.0, 5.0, 0.05, 2.9, math.radians(35)
    first_steer, ys = None, []
    for _ in range(400):
        # the plan: the path y = 0 ahead of the ego, in the ego frame
        xs = x + v * 0.5 * np.arange(1, 7)
        pts = np.stack([xs - x, -y * np.ones(6)], 1)
        c, s = math.cos(yaw), math.sin(yaw)
        plan = pts @ np.array([[c, -s], [s, c]])  # world offsets -> ego frame (rotate by -yaw)
        out = ctrl.step(plan, v)
        first_steer = out.steer if first_steer is None else first_steer
        # CARLA steer +1 = full right: our yaw rate is negative for positive steer
        yaw += -v / wheelbase * math.tan(out.steer * max_wheel) * dt
        x += v * math.cos(yaw) * dt
        y += v * math.sin(yaw) * dt
        ys.append(y)
    assert first_steer > 0 and ys[20] < 1.0  # turns right, toward the path
    # the public gains oscillate a little around the path (window integral) but the error decays
    assert np.abs(ys[-100:]).max() < 0.5 * 1.5


def test_speed_and_brake_rules():
    cfg = ControllerConfig()
    plan = arc_plan(4.0, 0.0)  # 2 m per 0.5 s -> desired 4 m/s
    out = PlanController(cfg).step(plan, speed=0.0)
    assert out.info["desired_speed"] == pytest.approx(4.0)
    assert out.brake == 0.0 and 0.0 < out.throttle <= cfg.max_throttle
    out = PlanController(cfg).step(plan, speed=4.0 * 1.2)  # faster than 1.1 x desired
    assert out.brake == 1.0 and out.throttle == 0.0
    out = PlanController(cfg).step(np.zeros((6, 2)), speed=0.0)  # a stop plan
    assert out.brake == 1.0 and out.throttle == 0.0
    out = PlanController(cfg).step(arc_plan(30.0, 0.0), speed=0.0)  # throttle is capped
    assert out.throttle == pytest.approx(cfg.max_throttle)


def test_pid_window_integral_and_derivative():
    pid = PID(kp=1.0, ki=2.0, kd=3.0, n=4)
    assert pid.step(1.0) == pytest.approx(1.0 + 2.0 * 0.25 + 3.0 * 1.0)
    for _ in range(4):
        out = pid.step(1.0)
    assert out == pytest.approx(1.0 + 2.0 * 1.0 + 0.0)  # window full of 1s, no change


def test_short_plan_rejected():
    with pytest.raises(ValueError):
        PlanController().step(np.zeros((1, 2)), speed=0.0)
