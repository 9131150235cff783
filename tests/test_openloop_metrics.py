"""Open-loop metrics against hand-computed cases (docs/metrics.md): L2, collision, both conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from openloop.metrics import (
    CollisionConfig,
    box_collisions,
    horizon_values,
    l2_per_step,
    rasterise_agents,
    rasterise_ego,
    summarise,
    trajectory_headings,
)

CFG = CollisionConfig()
STRAIGHT = np.array([[5.0 * t, 0.0] for t in range(1, 7)])  # 10 m/s along x


def agents(*boxes):
    """boxes: (x, y, yaw, length, width, mask6) static over the horizon -> the 4 agent arrays."""
    xy = np.array([[[b[0], b[1]]] * 6 for b in boxes], dtype=float).reshape(-1, 6, 2)
    yaw = np.array([[b[2]] * 6 for b in boxes], dtype=float).reshape(-1, 6)
    size = np.array([[b[3], b[4]] for b in boxes], dtype=float).reshape(-1, 2)
    mask = np.array([b[5] for b in boxes], dtype=bool).reshape(-1, 6)
    return xy, yaw, size, mask


ALL = [True] * 6


def test_l2_constant_offset_is_the_offset_under_both_conventions():
    pred = STRAIGHT + np.array([0.3, -0.4])
    l2 = l2_per_step(pred, STRAIGHT)[None]
    np.testing.assert_allclose(l2, 0.5)
    out = summarise(l2, np.zeros((1, 6), bool), np.zeros((1, 6), bool))
    for conv in ("vad", "uniad"):
        assert out[conv]["l2"] == pytest.approx({"1s": 0.5, "2s": 0.5, "3s": 0.5, "avg": 0.5})


def test_error_only_at_last_step_separates_the_conventions():
    pred = STRAIGHT.copy()
    pred[5, 1] += 1.2
    out = summarise(l2_per_step(pred, STRAIGHT)[None], np.zeros((1, 6), bool), np.zeros((1, 6), bool))
    # VAD: 3 s = mean of 6 steps = 1.2 / 6; UniAD: 3 s = step 6 alone
    assert out["vad"]["l2"] == pytest.approx({"1s": 0.0, "2s": 0.0, "3s": 0.2, "avg": 0.2 / 3})
    assert out["uniad"]["l2"] == pytest.approx({"1s": 0.0, "2s": 0.0, "3s": 1.2, "avg": 0.4})


def test_linearly_growing_error_by_hand():
    err = 0.1 * np.arange(1, 7)  # 0.1 .. 0.6 m
    vad = horizon_values(err[None], "vad")[0]
    uniad = horizon_values(err[None], "uniad")[0]
    np.testing.assert_allclose(vad, [0.15, 0.25, 0.35])  # (0.1+0.2)/2, (0.1+..+0.4)/4, (0.1+..+0.6)/6
    np.testing.assert_allclose(uniad, [0.2, 0.4, 0.6])
    with pytest.raises(ValueError):
        horizon_values(err[None], "stp3")


def test_curve_against_closed_form():
    # ground truth on a circle of radius 20 m (left turn), prediction straight with the same arc lengths
    r, s = 20.0, 5.0 * np.arange(1, 7)
    gt = np.stack([r * np.sin(s / r), r * (1 - np.cos(s / r))], 1)
    pred = np.stack([s, np.zeros(6)], 1)
    expected = [math.hypot(si - r * math.sin(si / r), r * (1 - math.cos(si / r))) for si in s]
    l2 = l2_per_step(pred, gt)
    np.testing.assert_allclose(l2, expected)
    out = summarise(l2[None], np.zeros((1, 6), bool), np.zeros((1, 6), bool))
    assert out["uniad"]["l2"]["3s"] == pytest.approx(expected[5])
    assert out["vad"]["l2"]["3s"] == pytest.approx(np.mean(expected))
    assert out["vad"]["l2"]["1s"] == pytest.approx((expected[0] + expected[1]) / 2)


def test_headings_follow_the_path_and_hold_when_standing():
    traj = np.array([[1.0, 1.0], [1.0, 1.05], [1.0, 3.0], [1.0, 3.0], [0.0, 3.0], [0.0, 3.0]])
    h = trajectory_headings(traj, min_step=0.2)
    np.testing.assert_allclose(h, [math.pi / 4, math.pi / 4, math.pi / 2, math.pi / 2, math.pi, math.pi])
    np.testing.assert_allclose(trajectory_headings(np.zeros((6, 2))), 0.0)  # never moved: initial heading


def test_agent_on_the_path_collides_only_where_the_boxes_share_cells():
    # ego box spans x in [5t - 1.542, 5t + 2.542]; a 4 m x 2 m car parked at x = 20 spans [18, 22]
    a = agents((20.0, 0.0, 0.0, 4.0, 2.0, ALL))
    col = box_collisions(STRAIGHT, *a, CFG)
    np.testing.assert_array_equal(col, [0, 0, 0, 1, 0, 0])
    out = summarise(np.zeros((1, 6)), col[None], np.zeros((1, 6), bool))
    assert out["vad"]["collision"] == pytest.approx({"1s": 0.0, "2s": 25.0, "3s": 100 / 6,
                                                     "avg": (25.0 + 100 / 6) / 3})
    assert out["uniad"]["collision"] == pytest.approx({"1s": 0.0, "2s": 100.0, "3s": 0.0, "avg": 100 / 3})


def test_lateral_clearance_is_decided_on_cell_centres():
    # ego footprint covers cell centres y = +-0.25, +-0.75 (half width 0.925 m)
    near = agents((20.0, 1.7, 0.0, 4.0, 2.0, ALL))  # spans y >= 0.70: covers the 0.75 centre
    far = agents((20.0, 1.8, 0.0, 4.0, 2.0, ALL))  # spans y >= 0.80: real overlap of 0.125 m, below a cell
    assert box_collisions(STRAIGHT, *near, CFG)[3]
    assert not box_collisions(STRAIGHT, *far, CFG).any()


def test_invalid_agent_future_steps_are_not_obstacles():
    a = agents((20.0, 0.0, 0.0, 4.0, 2.0, [True, True, True, False, True, True]))
    assert not box_collisions(STRAIGHT, *a, CFG).any()
    assert not box_collisions(STRAIGHT, *agents(), CFG).any()  # no agents at all


def test_ground_truth_collision_steps_are_not_counted():
    # agent A parked at x = 20 (all steps); agent B at x = 25 only annotated at step 5
    a = agents((20.0, 0.0, 0.0, 4.0, 2.0, ALL), (25.0, 0.0, 0.0, 4.0, 2.0, [False] * 4 + [True, False]))
    pred = STRAIGHT
    gt = STRAIGHT.copy()
    gt[4:, 1] = 10.0  # the ground truth swerves away after hitting A at step 4
    col, gt_col = box_collisions(pred, *a, CFG), box_collisions(gt, *a, CFG)
    np.testing.assert_array_equal(col, [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(gt_col, [0, 0, 0, 1, 0, 0])
    out = summarise(np.zeros((1, 6)), col[None], gt_col[None])
    # counted steps: only step 5 -> VAD 3 s = 1/6, UniAD 3 s = step 6 = 0
    assert out["vad"]["collision"] == pytest.approx({"1s": 0.0, "2s": 0.0, "3s": 100 / 6, "avg": 100 / 18})
    assert out["uniad"]["collision"] == pytest.approx({"1s": 0.0, "2s": 0.0, "3s": 0.0, "avg": 0.0})


def test_box_orientation_follows_the_trajectory():
    # driving along +y: the oriented box is 1.85 m wide in x; the axis-aligned one (VAD code) is 4.084 m long
    traj = np.array([[0.0, 5.0 * t] for t in range(1, 7)])
    a = agents((2.0, 20.0, 0.0, 2.0, 2.0, ALL))  # spans x in [1, 3] beside the path
    assert not box_collisions(traj, *a, CFG).any()
    fixed = CollisionConfig(heading="fixed")
    np.testing.assert_array_equal(box_collisions(traj, *a, fixed), [0, 0, 0, 1, 0, 0])


def test_origin_moves_the_reference_point():
    # standing still; a 2 m box centred 4 m ahead spans x in [3, 5]
    a = agents((4.0, 0.0, 0.0, 2.0, 2.0, ALL))
    assert not box_collisions(np.zeros((6, 2)), *a, CFG).any()  # ego front at 2.542 m
    # a plan of the LIDAR_TOP point (0.94 m ahead of the ego origin): front at 3.482 m
    assert box_collisions(np.zeros((6, 2)), *a, CFG, origin=np.array([0.94, 0.0])).all()


def test_rotated_agent_box():
    # a 6 m x 1 m bar across the road at x = 20, rotated 90 degrees: blocks y in [-0.5, 5.5]
    a = agents((20.0, 2.5, math.pi / 2, 6.0, 1.0, ALL))
    assert box_collisions(STRAIGHT, *a, CFG)[3]
    a_unrot = agents((20.0, 2.5, 0.0, 6.0, 1.0, ALL))  # same bar along the road: y in [2, 3], clear
    assert not box_collisions(STRAIGHT, *a_unrot, CFG).any()


def test_outside_the_grid_never_collides():
    far = np.array([[60.0 + 5 * t, 0.0] for t in range(6)])  # beyond the 50 m half extent
    a = agents((70.0, 0.0, 0.0, 4.0, 2.0, ALL))
    assert not box_collisions(far, *a, CFG).any()


def test_fast_path_equals_full_rasterisation():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(15):
        traj = np.cumsum(rng.normal([3.0, 0.0], [1.5, 1.0], size=(6, 2)), axis=0)
        n = 6
        xy = traj[None] + rng.normal(0, 3.0, size=(n, 6, 2))
        yaw = rng.uniform(-np.pi, np.pi, size=(n, 6))
        size = rng.uniform([0.5, 0.5], [6.0, 2.5], size=(n, 2))
        mask = rng.random((n, 6)) > 0.2
        for cfg in (CFG, CollisionConfig(heading="fixed")):
            fast = box_collisions(traj, xy, yaw, size, mask, cfg)
            full = (rasterise_ego(traj, cfg) & rasterise_agents(xy, yaw, size, mask, cfg)).any(axis=(1, 2))
            np.testing.assert_array_equal(fast, full)
            hits += int(fast.sum())
    assert hits > 10  # the random scenes do exercise collisions


def test_ego_raster_has_the_expected_cell_count():
    # axis-aligned at the origin: centres x in {-1.25..2.25} (8) x y in {-0.75..0.75} (4) = 32 cells, as VAD's
    grid = rasterise_ego(np.zeros((6, 2)), CollisionConfig(heading="fixed"))
    assert grid.sum(axis=(1, 2)).tolist() == [32] * 6


def test_shape_errors():
    with pytest.raises(ValueError):
        l2_per_step(np.zeros((6, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        CollisionConfig(heading="sideways")
