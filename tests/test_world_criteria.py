"""OutsideRouteLanesTest on planted drives: the ego is placed pose by pose beside its route.

The ego is set directly on a real `OfflineWorld` (no agent, no physics), so the planted path can leave
the road without the layout contact stopping the car: each case isolates the lane criterion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlmad.frames import ego_to_carla_location
from world.config import CriteriaConfig, WorldConfig
from world.criteria import RouteCriteria
from world.dynamics import EgoState
from world.global_planner import interpolate_trajectory
from world.road_map import RoadMap, load_map
from world.sim import OfflineWorld

START_S, END_S = 10.0, 100.0  # route along one straight lane, arc length from the lane start (m)
STRAY_FROM, STRAY_TO = 40.0, 60.0  # where the planted drive leaves its lane (m)


@pytest.fixture(scope="module")
def grid() -> RoadMap:
    return load_map("VlmadGrid1x1")


@pytest.fixture(scope="module")
def lane(grid):
    """A straight driving lane (not in a junction) at least 110 m long, on the kerb side of its road.

    VlmadGrid1x1 roads: per direction two 3.5 m driving lanes, then a 2 m sidewalk; looking along the
    lane, left +3.5 m is the same-direction lane, +7 m the opposite-direction one, -3.5 m the sidewalk
    and -4.5 m off the road."""
    for seg in grid.segments:
        if seg.junction >= 0 or seg.length < END_S + 10.0:
            continue
        mid = len(seg.pts) // 2
        normal = np.array([-math.sin(seg.yaw[mid]), math.cos(seg.yaw[mid])])
        right = grid.driving_lane_at(seg.pts[mid] - 3.5 * normal)
        if right is None:  # nothing drivable on the right: the kerb lane
            return seg
    raise AssertionError("no long straight kerb lane on the grid")


def _pose(seg, s: float, offset: float) -> tuple[float, float, float]:
    """(x, y, yaw) at arc length `s` on `seg`, `offset` metres to the left of its centre line."""
    i = int(np.clip(np.searchsorted(seg.s, s), 0, len(seg.s) - 1))
    yaw = float(seg.yaw[i])
    x, y = seg.pts[i]
    return x - offset * math.sin(yaw), y + offset * math.cos(yaw), yaw


def _drive(grid, seg, offset_at) -> dict[str, list]:
    """Planted drive along `seg` from START_S to END_S in 0.5 m steps, `offset_at(s)` metres left of the
    lane centre; returns the route's infractions."""
    keys = [ego_to_carla_location(_pose(seg, s, 0.0)[:2]) for s in (START_S, END_S)]
    _, route = interpolate_trajectory(grid.planner, keys)
    world = OfflineWorld(grid, WorldConfig())
    x, y, yaw = _pose(seg, START_S, 0.0)
    world.reset(x, y, yaw, speed=5.0, spawn_traffic=False)
    crit = RouteCriteria(grid, route, CriteriaConfig(), ego_half_length=2.4)
    for s in np.arange(START_S, END_S + 8.0, 0.5):
        world.t += 0.1
        world.ego = EgoState(*_pose(seg, float(s), offset_at(float(s))), v=5.0)
        world.contacts = []  # planted: nothing is touched
        crit.update(world)
    assert crit.target_reached, "the planted drive did not reach the end of its route"
    return crit.finalize()


def _ramp(offset: float):
    """Offset profile: on the lane, then `offset` between STRAY_FROM and STRAY_TO (2 m ramps), back."""

    def at(s: float) -> float:
        if s < STRAY_FROM - 2.0 or s > STRAY_TO + 2.0:
            return 0.0
        if s < STRAY_FROM:
            return offset * (s - STRAY_FROM + 2.0) / 2.0
        if s > STRAY_TO:
            return offset * (STRAY_TO + 2.0 - s) / 2.0
        return offset

    return at


def test_staying_in_the_lane_or_changing_to_a_same_direction_lane_is_clean(grid, lane):
    assert _drive(grid, lane, lambda s: 0.0)["outside_route_lanes"] == []
    assert _drive(grid, lane, _ramp(3.5))["outside_route_lanes"] == []  # the lane to the left, same way


@pytest.mark.parametrize(
    "offset, why",
    [(-4.5, "off the road beside the kerb"), (-3.5, "on the sidewalk"), (7.0, "in the oncoming lane")],
)
def test_driving_off_the_lanes_or_against_the_traffic_is_counted(grid, lane, offset, why):
    events = _drive(grid, lane, _ramp(offset))["outside_route_lanes"]
    assert len(events) == 1, why
    ev = events[0]
    route_len = END_S - START_S
    # The criterion counts whole route steps (~1 m) while the ego is out: the 20 m stray, +- the ramps.
    assert 17.0 <= ev["distance"] <= 25.0, (why, ev)
    assert ev["percentage"] == pytest.approx(100.0 * ev["distance"] / route_len, rel=0.05), (why, ev)
