"""Offline world: generated towns, map loading, route planning and route files."""

from __future__ import annotations

import math

import carla
import numpy as np
import pytest

from agent.compat import downsample_route
from routes.parse import parse_routes, select_routes, write_routes
from vlmad.commands import RoadOption
from vlmad.errors import UserError
from vlmad.gnss import carla_xy_to_gnss, geo_reference
from world.global_planner import interpolate_trajectory, keypoint_locations
from world.road_map import RoadMap, load_map, random_routes, resolve_town
from world.xodr_gen import TownSpec, generate_town, validate_town


@pytest.fixture(scope="module")
def grid() -> RoadMap:
    return load_map("VlmadGrid1x1")


@pytest.fixture(scope="module")
def town02(shared_maps) -> RoadMap:
    return load_map("Town02", maps_dir=shared_maps)


def test_generated_town_loads_with_signalised_four_way_junctions():
    spec = TownSpec(name="T", grid_x=2, grid_y=1, lanes=3)
    xodr = generate_town(spec)
    assert xodr == generate_town(spec)  # deterministic
    summary = validate_town(xodr, "T")
    # 2x1 interior 4-way + 6 border T-junctions; 4 + 4 + 6 x 3 = 26 approaches, one light each.
    assert summary["junctions"] == 8 and summary["traffic_lights"] == 26 and summary["dead_ends"] == 0
    rm = RoadMap("T", xodr)
    approaches = sorted(rm.junction_phases.values())
    assert approaches.count(4) == 2 and approaches.count(3) == 6
    cmap = carla.Map("T", xodr)
    assert len(cmap.get_all_landmarks_of_type("1000001")) >= 26
    # every approach light governs all 3 incoming lanes of its road
    assert all(len(lt.segments) == 3 for lt in rm.lights)
    # crossing a junction straight keeps the lane: lane centres 3.5 m apart
    lt = rm.lights[0]
    assert np.allclose(
        np.sort(np.linalg.norm(lt.stop_pts - lt.stop_pts[0], axis=1)), [0, 3.5, 7.0], atol=1e-3
    )


def test_generated_town_rejects_impossible_specs():
    with pytest.raises(UserError, match="block_m"):
        generate_town(TownSpec(block_m=20.0))
    with pytest.raises(UserError, match="lanes"):
        generate_town(TownSpec(lanes=0))


def test_resolve_town_errors_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="carla-root"):
        resolve_town("Town05", maps_dir=tmp_path)
    bad = tmp_path / "bad.xodr"
    bad.write_text("<OpenDRIVE></OpenDRIVE>")
    with pytest.raises(UserError):
        load_map(str(bad))


def _heading_change(route, i0, i1):
    def yaw(t):
        return -math.radians(t.rotation.yaw)  # CARLA yaw (clockwise) -> ours

    d = yaw(route[i1][0]) - yaw(route[i0][0])
    return (d + math.pi) % (2 * math.pi) - math.pi


@pytest.mark.parametrize("which", ["grid", "town02"])
def test_route_commands_match_the_turns(which, request):
    rm = request.getfixturevalue(which)
    routes = random_routes(rm, 6, np.random.default_rng(3), 150, 350, min_junctions=1)
    seen = set()
    for spec in routes:
        _, route = interpolate_trajectory(rm.planner, keypoint_locations(spec))
        opts = [o for _, o in route]
        i = 0
        while i < len(opts):
            if opts[i] in (RoadOption.LEFT, RoadOption.RIGHT, RoadOption.STRAIGHT):
                j = i
                while j + 1 < len(opts) and opts[j + 1] == opts[i]:
                    j += 1
                turn = math.degrees(_heading_change(route, max(i - 1, 0), min(j + 1, len(route) - 1)))
                if opts[i] == RoadOption.LEFT:
                    assert turn > 45, (which, spec.id, turn)
                elif opts[i] == RoadOption.RIGHT:
                    assert turn < -45, (which, spec.id, turn)
                else:
                    assert abs(turn) < 33, (which, spec.id, turn)
                seen.add(opts[i])
                i = j + 1
            else:
                i += 1
        # dense: about 1 m between points, no jumps
        locs = np.array([[t.location.x, t.location.y] for t, _ in route])
        assert np.linalg.norm(np.diff(locs, axis=0), axis=1).max() < 2.5
    assert len(seen) >= 2  # the routes exercised more than one kind of junction command


def test_town02_right_turn_is_labelled_right(town02):
    # From a lane end before a junction, through its right-turn connector, to the exit lane.
    rm = town02
    for seg in rm.segments:
        if seg.junction < 0 and seg.light >= 0 and seg.length > 10:
            for nxt in seg.succ:
                j = rm.segments[nxt]
                turn = (j.yaw[-1] - j.yaw[0] + math.pi) % (2 * math.pi) - math.pi
                if turn < -1.2 and j.succ:
                    out = rm.segments[j.succ[0]]
                    a, b = seg.pts[len(seg.pts) // 3], out.pts[min(len(out.pts) - 1, 20)]
                    locs = [carla.Location(a[0], -a[1], 0), carla.Location(b[0], -b[1], 0)]
                    _, route = interpolate_trajectory(rm.planner, locs)
                    opts = [o for _, o in route]
                    assert opts[0] == RoadOption.LANEFOLLOW and opts[-1] == RoadOption.LANEFOLLOW
                    assert RoadOption.RIGHT in opts and RoadOption.LEFT not in opts
                    return
    pytest.fail("no right turn found in Town02")


def test_downsample_and_gps_follow_the_leaderboard(grid):
    spec = random_routes(grid, 1, np.random.default_rng(0), 200, 300)[0]
    gps, route = interpolate_trajectory(grid.planner, keypoint_locations(spec))
    assert len(gps) == len(route)
    ids = downsample_route(route, 50)
    assert ids[0] == 0 and ids[-1] == len(route) - 1
    opts = [o for _, o in route]
    for i in range(1, len(opts)):  # every option change is kept
        if opts[i] != opts[i - 1]:
            assert i in ids
    kept = np.array([[route[i][0].location.x, route[i][0].location.y] for i in ids])
    assert np.linalg.norm(np.diff(kept, axis=0), axis=1).max() < 55
    ref = geo_reference(grid.cmap)
    t = route[len(route) // 2][0].location
    lat, lon = carla_xy_to_gnss(t.x, t.y, *ref)
    g = gps[len(route) // 2][0]
    assert g["lat"] == pytest.approx(float(lat)) and g["lon"] == pytest.approx(float(lon))


def test_random_routes_are_a_route_file_that_plans_the_same(grid, tmp_path):
    """random_routes' output written as a leaderboard route file (routes.parse, the one route-XML owner)
    reads back to the same keypoints and plans the same dense route."""
    routes = random_routes(grid, 2, np.random.default_rng(5), 150, 250, first_id=7)
    assert [r.id for r in routes] == ["7", "8"] and all(r.town == grid.name for r in routes)
    back = parse_routes(write_routes(routes, tmp_path / "r.xml"))
    for r, b in zip(routes, back):
        assert [(w.x, w.y, w.z, w.yaw) for w in b.waypoints] == [(w.x, w.y, w.z, w.yaw) for w in r.waypoints]
    _, planned = interpolate_trajectory(grid.planner, keypoint_locations(routes[1]))
    _, replanned = interpolate_trajectory(grid.planner, keypoint_locations(back[1]))
    assert [(t.location.x, t.location.y, o) for t, o in planned] == [
        (t.location.x, t.location.y, o) for t, o in replanned]
    assert [r.id for r in select_routes(back, ["8"])] == ["8"]
    with pytest.raises(UserError, match="not in the route file"):
        select_routes(back, ["9"])


def _light_in_front_camera(rm: RoadMap, stop_margin: float = 0.5, ego_length: float = 4.9) -> np.ndarray:
    """(lanes,) bool: the governing light's head projects into CARLA_RIG's CAM_FRONT (160x90) for an ego
    standing at each stop line (front bumper `stop_margin` before it, as the expert stops)."""
    from vlmad.rig import CARLA_RIG
    from world.render import HEAD_CENTER_Z

    cam = CARLA_RIG.with_image_size(160, 90).camera("CAM_FRONT")
    img_from_ego = cam.img_from_ego()
    seen = []
    for lt in rm.lights:
        for pt, yaw in zip(lt.stop_pts, lt.stop_yaw):
            c, s = math.cos(yaw), math.sin(yaw)
            ego_xy = pt - (stop_margin + ego_length / 2) * np.array([c, s])
            d = lt.pole[:2] - ego_xy  # world -> ego: rotate by -yaw
            p = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1], HEAD_CENTER_Z, 1.0])
            u, v, w = (img_from_ego @ p)[:3]
            seen.append(w > 0.1 and 0 <= u / w < 160 and 0 <= v / w < 90)
    return np.array(seen)


def test_lights_are_visible_from_the_stop_line_as_in_carla_towns(shared_maps):
    """A car waiting at a red light must see it turn green. CARLA's US-style towns put the signal across
    the junction (Town04: every stop line sees its light); the generated town does the same by default,
    and its old near-side placement (`light_side="near"`) is never visible from the stop line."""
    assert _light_in_front_camera(load_map("Town04", maps_dir=shared_maps)).all()
    far = RoadMap("G", generate_town(TownSpec(name="G")))
    assert _light_in_front_camera(far).all()
    assert len({lt.id for lt in far.lights}) == len(far.lights)  # one signal per approach, none shared
    near = RoadMap("G", generate_town(TownSpec(name="G", light_side="near")))
    assert not _light_in_front_camera(near).any()
    assert [lt.phase for lt in near.lights] == [lt.phase for lt in far.lights]  # same cycle, moved pole
    with pytest.raises(UserError, match="light_side"):
        generate_town(TownSpec(light_side="left"))
