"""The agent's route handling: commands on a route with turns, popping, GNSS conversions and geo reference."""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
import pytest

from agent.compat import downsample_route
from agent.route import (
    RoutePlanner,
    ego_pose_from_gnss,
    fit_geo_reference,
    planner_from_world_plan,
    road_option_value,
)
from agent.sensing import read_sensors
from synthetic.leaderboard import GEO_REF, GeoMap, camera_images, input_data, leaderboard_plans, turning_route
from vlmad.commands import Command, RoadOption
from vlmad.frames import se2_pose, yaw_of
from vlmad.gnss import gnss_to_world_xy, world_xy_to_gnss
from vlmad.rig import CARLA_RIG


def _walk(points: np.ndarray, planner: RoutePlanner) -> list[tuple[float, Command, np.ndarray]]:
    """Drive along the dense route point by point: (distance travelled, command, target) per step."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    out = []
    for dist, p in zip(s, points):
        t = planner.run_step(p)
        out.append((float(dist), t.command, t.xy))
    return out


def test_commands_on_a_route_with_turns():
    pts, opts = turning_route()
    _, world = leaderboard_plans(pts, opts)
    ids = downsample_route(world, 50)  # what the leaderboard's base class keeps
    steps = _walk(pts, planner_from_world_plan([world[i] for i in ids], 4.0, 50.0))
    opts = np.array(opts)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    left_start = s[np.argmax(opts == RoadOption.LEFT)]
    right_start = s[np.argmax(opts == RoadOption.RIGHT)]

    cmds = [c for _, c, _ in steps]
    assert cmds[0] == Command.STRAIGHT
    first_left = next(d for d, c, _ in steps if c == Command.LEFT)
    first_right = next(d for d, c, _ in steps if c == Command.RIGHT)
    # each turn is announced before the ego reaches it (the next route point's option, as in the public
    # agents: the right turn is announced once the point after the left turn is reached)
    assert 30.0 < first_left < left_start
    assert left_start < first_right < right_start
    # while LEFT is commanded the target is the first point of the left turn
    left_targets = {tuple(np.round(t, 3)) for _, c, t in steps if c == Command.LEFT}
    assert left_targets == {tuple(np.round(pts[np.argmax(opts == RoadOption.LEFT)], 3))}
    # order of the command changes along the route
    changes = [c for i, c in enumerate(cmds) if i == 0 or c != cmds[i - 1]]
    assert changes == [Command.STRAIGHT, Command.LEFT, Command.STRAIGHT, Command.RIGHT, Command.STRAIGHT]
    # at the end the final point stays the target
    assert np.allclose(steps[-1][2], pts[-1])


def test_planner_pops_reached_points_only():
    pl = RoutePlanner(np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]]), [4, 4, 1, 4])
    t = pl.run_step(np.array([0.0, 30.0]))  # far from everything: nothing popped
    assert np.allclose(t.xy, [10.0, 0.0]) and t.remaining == 3
    t = pl.run_step(np.array([8.0, 0.5]))  # within 4 m of the second point
    assert np.allclose(t.xy, [20.0, 0.0]) and t.command == Command.LEFT
    t = pl.run_step(np.array([100.0, 0.0]))  # past the end: the last point stays
    t = pl.run_step(np.array([29.0, 0.0]))
    assert np.allclose(t.xy, [30.0, 0.0]) and t.remaining == 1


def test_road_option_from_any_enum():
    class LeaderboardRoadOption(Enum):  # CARLA's agents.navigation.local_planner.RoadOption is a plain Enum
        LEFT = 1
        CHANGELANERIGHT = 6

    assert road_option_value(LeaderboardRoadOption.LEFT) == 1
    assert road_option_value(RoadOption.RIGHT) == 2
    assert road_option_value(4) == 4
    assert road_option_value(None) == RoadOption.VOID


@pytest.mark.parametrize("ref", [GEO_REF, (42.0, 2.0), (-33.9, 151.2)])
def test_geo_reference_recovered_from_the_route(ref):
    pts, opts = turning_route(spacing=5.0)
    gps, world = leaderboard_plans(pts + np.array([-250.0, 130.0]), opts, ref=ref)
    got, worst = fit_geo_reference(gps, world)
    assert got == pytest.approx(ref, abs=1e-9)
    assert worst < 1e-3


def test_gnss_round_trip():
    rng = np.random.default_rng(1)
    for xy in rng.uniform(-2000, 2000, (20, 2)):
        lat, lon = world_xy_to_gnss(xy, GEO_REF)
        assert np.allclose(gnss_to_world_xy(lat, lon, GEO_REF), xy, atol=1e-4)


@pytest.mark.parametrize("yaw_deg", [0.0, 30.0, -135.0])
def test_ego_pose_from_sensor_data(yaw_deg):
    """input_data written by the offline world's sensor code -> the agent recovers the ego pose exactly
    (GNSS mount offset, compass convention, CARLA's mirrored y all undone)."""
    sensors = CARLA_RIG.with_image_size(32, 18).carla_sensors()
    pose = se2_pose(123.4, -56.7, math.radians(yaw_deg))
    data = input_data(CARLA_RIG.with_image_size(32, 18), camera_images(sensors), 7, pose, 3.0,
                      geo_map=GeoMap(GEO_REF))
    ego = read_sensors(data, sensors, max_lag=0)
    got = ego_pose_from_gnss(gnss_to_world_xy(ego.lat, ego.lon, GEO_REF), ego.yaw, CARLA_RIG.imu_x)
    assert np.allclose(got[:2, 3], pose[:2, 3], atol=1e-3)
    assert math.isclose(math.remainder(yaw_of(got) - yaw_of(pose), 2 * math.pi), 0.0, abs_tol=1e-9)
    assert ego.speed == pytest.approx(3.0)
