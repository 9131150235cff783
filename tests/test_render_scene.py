"""Road geometry extraction and the camera renderer of the offline world (world/geometry.py, render.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

carla = pytest.importorskip("carla")

from vlmad.frames import carla_to_ego_xyz, carla_yaw_to_ego, project_points, se2_pose, transform_points  # noqa: E402
from vlmad.rig import CAMERA_NAMES, CARLA_RIG  # noqa: E402
from world.geometry import RoadGeometry  # noqa: E402
from world.render import ASPHALT, RenderBox, Renderer, RenderLight  # noqa: E402

# A 200 m straight two-way road along world +x (OpenDRIVE y is our y), lanes 3.5 m, sidewalks 2 m,
# broken yellow centre line, solid white edge lines.
SIMPLE_XODR = """<?xml version="1.0" standalone="yes"?>
<OpenDRIVE><header revMajor="1" revMinor="4" name="simple" version="1.00">
<geoReference><![CDATA[+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0]]></geoReference></header>
<road name="straight" length="200.0" id="1" junction="-1"><link/>
<planView><geometry s="0.0" x="-100.0" y="0.0" hdg="0.0" length="200.0"><line/></geometry></planView>
<elevationProfile/><lateralProfile/><lanes><laneSection s="0.0">
<left>
<lane id="2" type="sidewalk" level="false"><link/><width sOffset="0.0" a="2.0" b="0" c="0" d="0"/>
<roadMark sOffset="0" type="none" color="standard" width="0.15"/></lane>
<lane id="1" type="driving" level="false"><link/><width sOffset="0.0" a="3.5" b="0" c="0" d="0"/>
<roadMark sOffset="0" type="solid" color="standard" width="0.15"/></lane>
</left>
<center><lane id="0" type="driving" level="false"><link/>
<roadMark sOffset="0" type="broken" color="yellow" width="0.15"/></lane></center>
<right>
<lane id="-1" type="driving" level="false"><link/><width sOffset="0.0" a="3.5" b="0" c="0" d="0"/>
<roadMark sOffset="0" type="solid" color="standard" width="0.15"/></lane>
<lane id="-2" type="sidewalk" level="false"><link/><width sOffset="0.0" a="2.0" b="0" c="0" d="0"/>
<roadMark sOffset="0" type="none" color="standard" width="0.15"/></lane>
</right>
</laneSection></lanes></road></OpenDRIVE>
"""

W, H = 160, 90  # tiny images keep the tests fast


@pytest.fixture(scope="module")
def simple_map():
    return carla.Map("simple", SIMPLE_XODR)


@pytest.fixture(scope="module")
def simple_geo(simple_map) -> RoadGeometry:
    return RoadGeometry.from_map(simple_map)


@pytest.fixture(scope="module")
def town02(shared_maps):
    return carla.Map("Town02", (shared_maps / "Town02.xodr").read_text())


@pytest.fixture(scope="module")
def simple_renderer(simple_geo) -> Renderer:
    return Renderer(simple_geo, CARLA_RIG, W, H)


# Ego on the right-hand lane (lane -1, y = -1.75) heading east, mid-road.
EGO = se2_pose(-50.0, -1.75, 0.0)


def _world(p_ego) -> np.ndarray:
    return transform_points(EGO, np.asarray(p_ego, float))


def _front(r: Renderer) -> np.ndarray:
    """img_from_ego of the renderer's front camera, from the rig (never hand-copied)."""
    return r.rig.camera("CAM_FRONT").img_from_ego()


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).sum(-1) > 30


# ----------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------
def test_simple_geometry_lanes_markings_boundary(simple_geo):
    g = simple_geo
    assert sorted(s.lane_id for s in g.lanes) == [-1, 1]
    for s in g.lanes:  # world frame: OpenDRIVE y is ours, lane -1 is south of the reference line
        assert np.allclose(s.center[:, 1], -1.75 if s.lane_id < 0 else 1.75, atol=1e-3)
    classes = [c for c, _ in g.map_polylines()]
    assert set(classes) <= {"divider", "ped_crossing", "boundary"}
    dividers = [p for c, p in g.map_polylines() if c == "divider"]
    assert len(dividers) == 1 and np.allclose(dividers[0][:, 1], 0.0, atol=1e-3)  # centre line only, once
    assert {(m.kind, m.colour) for m in g.markings} == {("broken", "yellow"), ("solid", "white")}
    bounds = [p for c, p in g.map_polylines() if c == "boundary"]
    assert len(bounds) == 1
    b = bounds[0]
    assert np.allclose(b[0], b[-1])  # closed
    assert abs(b[:, 1].min() + 3.5) < 0.3 and abs(b[:, 1].max() - 3.5) < 0.3  # drivable width 2 x 3.5 m
    assert b[:, 0].max() - b[:, 0].min() > 195
    sidewalks = [s for s in g.outer_lanes if s.kind == "sidewalk"]
    assert len(sidewalks) == 2 and all(s.kerb is not None for s in sidewalks)
    assert all(abs(abs(s.kerb[0, 1]) - 3.5) < 1e-3 for s in sidewalks)  # kerb on the road side


def test_town02_geometry(town02):
    g = RoadGeometry.from_map(town02, step=2.0)
    assert RoadGeometry.from_map(town02, step=2.0) is g  # computed once per map
    # Frame: every geometry point is a CARLA location with y flipped.
    wp = town02.generate_waypoints(2.0)[10]
    p = carla_to_ego_xyz(wp.transform.location.x, wp.transform.location.y)[:2]
    dmin = min(np.linalg.norm(s.center[:, :2] - p, axis=1).min() for s in g.lanes)
    assert dmin < 1.5
    assert g.bounds[1] < -99 and g.bounds[3] < 0  # Town02 lies at CARLA y > 0, i.e. our y < 0
    polys = g.map_polylines()
    counts = {c: sum(1 for k, _ in polys if k == c) for c in ("divider", "ped_crossing", "boundary")}
    assert counts["divider"] > 10 and counts["boundary"] >= 1 and counts["ped_crossing"] == 0
    assert all(p.ndim == 2 and p.shape[1] == 2 and len(p) >= 2 and np.isfinite(p).all() for _, p in polys)
    ids = {lm.id for lm in town02.get_all_landmarks_of_type("1000001")}
    assert {s.landmark_id for s in g.lights} == {str(i) for i in ids}
    for s in g.lights:
        # Pole right of the lane (right of the travel direction), facing approaching traffic.
        right = np.array([math.sin(s.lane_yaw), -math.cos(s.lane_yaw)])
        off = (s.position[:2] - s.stop_point[:2]) @ right
        assert 2.0 < off < 4.5
        assert abs(math.cos(s.yaw - s.lane_yaw) + 1.0) < 1e-6


def test_crosswalks_become_ped_crossings(shared_maps):
    m = carla.Map("Town10HD", (shared_maps / "Town10HD.xodr").read_text())
    g = RoadGeometry.from_map(m, step=2.0)
    walks = [p for c, p in g.map_polylines() if c == "ped_crossing"]
    assert len(walks) == len(m.get_crosswalks()) // 5 > 0  # CARLA lists 4 corners + the closing point
    for p in walks:
        assert np.allclose(p[0], p[-1]) and len(p) >= 4
        span = np.linalg.norm(p.max(0) - p.min(0))
        assert 3.0 < span < 40.0


# ----------------------------------------------------------------------------------------------------
# Renderer
# ----------------------------------------------------------------------------------------------------
def test_shapes_and_dtypes(simple_renderer):
    imgs = simple_renderer.render(EGO, [], [])
    assert list(imgs) == list(CAMERA_NAMES)
    for img in imgs.values():
        assert img.shape == (H, W, 3) and img.dtype == np.uint8


def test_road_below_sky_above(simple_renderer):
    front = simple_renderer.render(EGO)["CAM_FRONT"].astype(int)
    road = front[int(H * 0.85), W // 2]
    assert np.abs(road - np.array(ASPHALT)).max() < 30  # the ego's own lane
    sky = front[2, W // 2]
    assert sky[2] > sky[0] + 20  # blue above the horizon
    # Solid white edge line 1.75 m to the right, 8 m ahead, where the rig projects it.
    k = simple_renderer.rig.camera("CAM_FRONT").img_from_ego()
    uv, _, ok = project_points(k, np.array([[8.0, -1.75, 0.0]]))
    u, v = np.round(uv[0]).astype(int)
    patch = front[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3)
    assert ok[0] and (patch.min(1) > 150).any()
    # Yellow centre line (broken) 1.75 m to the left somewhere 5..20 m ahead.
    pts = np.array([[x, 1.75, 0.0] for x in np.arange(5.0, 20.0, 0.5)])
    uv, _, _ = project_points(k, pts)
    px = front[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)]
    assert ((px[:, 0] > px[:, 2] + 60) & (px[:, 1] > px[:, 2] + 40)).any()


def test_town02_road_in_front_lower_half(town02):
    g = RoadGeometry.from_map(town02, step=2.0)
    lane = max(g.lanes, key=lambda s: len(s.center))
    i = len(lane.center) // 2
    d = lane.center[i + 1, :2] - lane.center[i, :2]
    pose = se2_pose(lane.center[i, 0], lane.center[i, 1], math.atan2(d[1], d[0]), lane.center[i, 2])
    front = Renderer(g, CARLA_RIG, W, H, texture_res=0.3).render(pose)["CAM_FRONT"].astype(int)
    lower = front[int(H * 0.7):, W // 2 - 4:W // 2 + 4].reshape(-1, 3)
    asphalt = (np.abs(lower - np.array(ASPHALT)).max(1) < 30).mean()
    assert asphalt > 0.8


def test_box_ahead_at_centre_column(simple_renderer):
    base = simple_renderer.render(EGO)
    box = RenderBox(_world([10.0, 0.0, 1.0]), (0.6, 0.6, 0.6), 0.0, (250, 0, 250))
    imgs = simple_renderer.render(EGO, [box], [])
    mask = _changed(imgs["CAM_FRONT"], base["CAM_FRONT"])
    assert mask.sum() > 4
    cols = np.nonzero(mask.any(0))[0]
    assert abs(cols.mean() - (W - 1) / 2) < 1.5
    # The rig's own projection agrees about where the box is.
    uv, _, _ = project_points(_front(simple_renderer), np.array([[10.0, 0.0, 1.0]]))
    rows = np.nonzero(mask.any(1))[0]
    assert rows.min() - 1 <= uv[0, 1] <= rows.max() + 1
    assert not _changed(imgs["CAM_BACK"], base["CAM_BACK"]).any()


def test_box_on_the_left_only_in_left_cameras(simple_renderer):
    base = simple_renderer.render(EGO)
    car = RenderBox(_world([3.0, 6.0, 0.75]), (4.5, 1.9, 1.5), 0.0, (200, 30, 30))
    imgs = simple_renderer.render(EGO, [car], [])
    diff = {n: _changed(imgs[n], base[n]).sum() for n in CAMERA_NAMES}
    assert diff["CAM_FRONT_LEFT"] > 50
    assert diff["CAM_FRONT_RIGHT"] == 0 and diff["CAM_BACK_RIGHT"] == 0


def test_near_box_hides_far_box_whatever_the_order(simple_renderer):
    near = RenderBox(_world([8.0, 0.0, 1.0]), (1.0, 1.0, 1.0), 0.0, (250, 20, 20))
    far = RenderBox(_world([16.0, 0.0, 1.2]), (1.0, 3.0, 2.4), 0.0, (20, 20, 250))
    uv, _, _ = project_points(_front(simple_renderer), np.array([[8.0, 0.0, 1.0]]))
    u, v = np.round(uv[0]).astype(int)
    for order in ([near, far], [far, near]):
        px = simple_renderer.render(EGO, order, [])["CAM_FRONT"][v, u].astype(int)
        assert px[0] > px[2] + 50


def test_box_across_the_near_plane(simple_renderer):
    # A long truck beside the ego reaching behind the front camera: clipped, drawn, no error.
    truck = RenderBox(_world([1.0, 2.6, 1.5]), (12.0, 2.5, 3.0), 0.0, (30, 160, 30))
    base = simple_renderer.render(EGO)
    imgs = simple_renderer.render(EGO, [truck], [])
    assert _changed(imgs["CAM_FRONT_LEFT"], base["CAM_FRONT_LEFT"]).mean() > 0.2


def test_traffic_light_state_changes_lamp_pixels():
    g = RoadGeometry.from_map(carla.Map("simple", SIMPLE_XODR))
    r = Renderer(g, CARLA_RIG, 320, 180)
    pos = _world([15.0, 0.0, 0.0])
    k = r.rig.camera("CAM_FRONT").img_from_ego()

    def lamp_px(img, dz):
        from world.render import HEAD_CENTER_Z, HEAD_SIZE
        uv, _, _ = project_points(k, np.array([[15.0 - HEAD_SIZE[0] / 2, 0.0, HEAD_CENTER_Z + dz]]))
        u, v = np.round(uv[0]).astype(int)
        return img[v, u].astype(int)

    imgs = {s: r.render(EGO, [], [RenderLight(pos, math.pi, s)])["CAM_FRONT"] for s in ("red", "green")}
    red_on, green_on = lamp_px(imgs["red"], 0.34), lamp_px(imgs["green"], -0.34)
    assert red_on[0] > 200 and red_on[1] < 100
    assert green_on[1] > 200 and green_on[0] < 100
    assert lamp_px(imgs["green"], 0.34)[0] < 120  # red lamp off when green
    assert lamp_px(imgs["red"], -0.34)[1] < 120
    # Seen from behind (facing away), no lamp shows.
    back = r.render(EGO, [], [RenderLight(pos, 0.0, "red")])["CAM_FRONT"]
    assert lamp_px(back, 0.34)[0] < 120


def test_bad_inputs_raise(simple_renderer):
    bad = EGO.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError):
        simple_renderer.render(bad)
    with pytest.raises(ValueError):
        simple_renderer.render(EGO, [RenderBox(np.array([np.nan, 0, 0]), (1, 1, 1), 0.0, (1, 2, 3))])
    with pytest.raises(ValueError):
        simple_renderer.render(EGO, [], [RenderLight(np.zeros(3), float("inf"), "red")])


def test_carla_yaw_convention_of_lanes(town02):
    # Lane samples head the way CARLA's waypoints do (yaw converted with carla_yaw_to_ego).
    g = RoadGeometry.from_map(town02, step=2.0)
    wp = town02.generate_waypoints(2.0)[42]
    yaw = float(carla_yaw_to_ego(wp.transform.rotation.yaw))
    p = carla_to_ego_xyz(wp.transform.location.x, wp.transform.location.y)[:2]
    strips = [s for s in g.lanes if (s.road_id, s.lane_id) == (wp.road_id, wp.lane_id)]
    s = min(strips, key=lambda s: np.linalg.norm(s.center[:, :2] - p, axis=1).min())
    d = np.linalg.norm(s.center[:, :2] - p, axis=1)
    j = int(np.argmin(d))
    assert d[j] < 2.0
    j = min(max(j, 1), len(s.center) - 2)
    t = s.center[j + 1, :2] - s.center[j - 1, :2]
    assert math.cos(math.atan2(t[1], t[0]) - yaw) > 0.95
    # Left edge on the left of the travel direction.
    assert float(np.cross(t, s.left[j] - s.center[j, :2])) > 0
