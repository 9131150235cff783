"""Trajectory overlay: projection of known points, near-plane clipping, line drawn / not drawn."""

from __future__ import annotations

import numpy as np
import pytest

from teacher.overlay import (
    RED,
    OverlayConfig,
    draw_trajectory,
    encode_jpeg,
    front_overlay,
    image_hash,
    img_from_ego,
    is_still,
    project_polyline,
    trajectory_points,
)
from vlmad.errors import UserError
from vlmad.frames import project_points
from vlmad.rig import NUSCENES_RIG

CAM = NUSCENES_RIG.camera("CAM_FRONT").resized(400, 225)


def cam_dict(cam=CAM) -> dict:
    """A record camera entry built from the rig (as the data layer writes it)."""
    return {"path": "x.jpg", "intrinsics": cam.intrinsics(), "ego_from_cam": cam.ego_from_cam(),
            "width": cam.width, "height": cam.height}


def record(fut, mask=None) -> dict:
    fut = np.asarray(fut, float)
    return {"token": "t", "ego_fut": fut, "ego_fut_mask": np.ones(len(fut), bool) if mask is None else mask,
            "cams": {"CAM_FRONT": cam_dict()}}


def red_mask(img: np.ndarray) -> np.ndarray:
    return (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)


def test_record_projection_matches_rig_and_geometry():
    proj = img_from_ego(cam_dict())
    np.testing.assert_allclose(proj, CAM.img_from_ego(), atol=1e-9)
    # a ground point straight ahead of the camera: centre column, below the horizon by f * height / depth
    d = 20.0
    pt = np.array([[CAM.x + d, CAM.y, 0.0]])
    uv, depth, ok = project_points(proj, pt)
    assert ok[0] and depth[0] == pytest.approx(d)
    assert uv[0, 0] == pytest.approx(CAM.width / 2, abs=1e-6)
    assert uv[0, 1] == pytest.approx(CAM.height / 2 + CAM.focal * CAM.z / d, abs=1e-6)
    # a point 2 m to the left lands left of centre
    uv, _, _ = project_points(proj, np.array([[CAM.x + d, CAM.y + 2.0, 0.0]]))
    assert uv[0, 0] == pytest.approx(CAM.width / 2 - CAM.focal * 2.0 / d, abs=1e-6)


def test_polyline_clipped_at_near_plane():
    proj = img_from_ego(cam_dict())
    pts = trajectory_points(record([[10, 0], [20, 0]]))
    assert pts.shape == (3, 3) and (pts[:, 2] == 0).all() and (pts[0] == 0).all()
    runs = project_polyline(proj, pts, near_m=0.5)
    assert len(runs) == 1 and len(runs[0]) == 3
    # the ego origin is behind the camera: the line starts where the ground crosses depth 0.5 m
    assert runs[0][0][1] == pytest.approx(CAM.height / 2 + CAM.focal * CAM.z / 0.5, rel=1e-6)
    # everything behind: nothing
    assert project_polyline(proj, trajectory_points(record([[-3, 0], [-6, 0]])), 0.5) == []
    # out and back in: two runs
    back = np.array([[10, 0, 0], [-10, 0, 0], [10, 1, 0]], float)
    assert len(project_polyline(proj, back, 0.5)) == 2


def test_overlay_drawn_when_moving():
    img = np.full((225, 400, 3), 90, np.uint8)
    out, drawn = draw_trajectory(img, cam_dict(), record([[4 * i, 0.0] for i in range(1, 7)]))
    assert drawn
    red = red_mask(out)
    assert red.sum() > 100
    rows, cols = np.nonzero(red)
    # straight ahead: centred, between the horizon and the bottom edge
    assert abs(cols.mean() - 200) < 10 and rows.min() > 112 and rows.max() == 224
    assert (img == 90).all()  # input untouched


def test_overlay_follows_a_left_curve():
    fut = [[4 * i, 0.08 * (4 * i) ** 2 / 4] for i in range(1, 7)]
    out, drawn = draw_trajectory(np.zeros((225, 400, 3), np.uint8), cam_dict(), record(fut))
    rows, cols = np.nonzero(red_mask(out))
    assert drawn and cols[rows < rows.min() + 10].mean() < 200 - 20  # far end is left of centre


def test_no_line_when_still_or_behind_or_masked():
    img = np.full((225, 400, 3), 90, np.uint8)
    still = record([[0.1 * i, 0.0] for i in range(1, 7)])
    assert is_still(still, 1.0)
    out, drawn = draw_trajectory(img, cam_dict(), still)
    assert not drawn and (out == img).all()
    reverse = record([[-2.0 * i, 0.0] for i in range(1, 7)])
    out, drawn = draw_trajectory(img, cam_dict(), reverse)
    assert not drawn and not red_mask(out).any()
    none_valid = record([[4 * i, 0.0] for i in range(1, 7)], mask=np.zeros(6, bool))
    assert not draw_trajectory(img, cam_dict(), none_valid)[1]
    # only the first 2 keyframes valid: shorter line (top of the line lower in the image)
    full = red_mask(draw_trajectory(img, cam_dict(), record([[5 * i, 0.0] for i in range(1, 7)]))[0])
    short = red_mask(draw_trajectory(img, cam_dict(), record([[5 * i, 0.0] for i in range(1, 7)],
                                                              mask=np.array([1, 1, 0, 1, 1, 1], bool)))[0])
    assert np.nonzero(short)[0].min() > np.nonzero(full)[0].min() + 5
    # the threshold is configurable
    slow = record([[2.0 * i, 0.0] for i in range(1, 7)])  # 12 m in 3 s
    assert draw_trajectory(img, cam_dict(), slow)[1]
    assert not draw_trajectory(img, cam_dict(), slow, OverlayConfig(still_threshold_m=15.0))[1]


def test_scaled_image_and_hash(tmp_path):
    rec = record([[4 * i, 0.0] for i in range(1, 7)])
    big, _ = draw_trajectory(np.zeros((450, 800, 3), np.uint8), cam_dict(), rec)
    cols = np.nonzero(red_mask(big))[1]
    assert abs(cols.mean() - 400) < 15  # pixel coordinates scaled with the image
    assert image_hash(big) != image_hash(np.zeros_like(big))
    assert encode_jpeg(big)[:2] == b"\xff\xd8"
    with pytest.raises(UserError, match="missing"):
        front_overlay(tmp_path, rec)
    assert RED == (255, 0, 0)
