"""Rig descriptions as checkpoints record them, and their comparison (vlmad.rig)."""

from __future__ import annotations

import dataclasses
import json

from vlmad.rig import (
    CARLA_RIG,
    NUSCENES_RIG,
    describe_calibration,
    describe_rig,
    rig_differences,
    rig_mismatch,
)


def _record_cams(rig, width=400, height=225) -> dict:
    """A record's `cams` as nusc.records writes them (calibration at the stored image size)."""
    r = rig.with_image_size(width, height)
    return {c.name: {"intrinsics": c.intrinsics().tolist(), "ego_from_cam": c.ego_from_cam().tolist(),
                     "width": width, "height": height} for c in r.cameras}


def test_description_is_plain_json_in_our_conventions():
    d = describe_rig(CARLA_RIG)
    assert json.loads(json.dumps(d)) == d
    front, back = d["cameras"]["CAM_FRONT"], d["cameras"]["CAM_BACK"]
    assert front == {"xyz": [0.8, 0.0, 1.6], "yaw_deg": 0.0, "pitch_deg": 0.0, "fov_deg": 70.0}
    assert back["yaw_deg"] == 180.0 and back["fov_deg"] == 110.0
    assert d["cameras"]["CAM_FRONT_LEFT"]["yaw_deg"] == 55.0  # CARLA yaw -55 (left) is +55 in ours


def test_calibration_is_matched_to_its_rig_whatever_the_image_size():
    assert describe_calibration(_record_cams(NUSCENES_RIG))["name"] == "nuscenes_nominal"
    assert describe_calibration(_record_cams(CARLA_RIG, 1600, 900))["name"] == "carla_vad"
    moved = dataclasses.replace(CARLA_RIG, cameras=(
        dataclasses.replace(CARLA_RIG.cameras[0], x=1.5), *CARLA_RIG.cameras[1:]))
    assert describe_calibration(_record_cams(moved))["name"] == "custom"


def test_differences_name_camera_and_quantity():
    same = describe_rig(CARLA_RIG)
    assert rig_differences(same, describe_rig(CARLA_RIG.with_image_size(320, 180))) == []
    cams = list(CARLA_RIG.cameras)
    cams[0] = dataclasses.replace(cams[0], fov_deg=90.0)
    cams[3] = dataclasses.replace(cams[3], yaw_deg=cams[3].yaw_deg + 5.0, z=2.0)
    other = dataclasses.replace(CARLA_RIG, name="other", cameras=tuple(cams))
    diffs = rig_differences(same, describe_rig(other))
    assert diffs == ["CAM_FRONT: fov 70 vs 90 deg", "CAM_BACK: mount [-2.0, 0.0, 1.6] vs [-2.0, 0.0, 2.0] m",
                     "CAM_BACK: yaw 180 vs -175 deg"]
    # within the tolerances (2 cm, 0.5 deg) is the same rig
    cams = [dataclasses.replace(c, x=c.x + 0.02, yaw_deg=c.yaw_deg + 0.5) for c in CARLA_RIG.cameras]
    assert rig_differences(same, describe_rig(dataclasses.replace(CARLA_RIG, cameras=tuple(cams)))) == []


def test_mismatch_line_names_both_rigs_or_is_none():
    line = rig_mismatch(describe_rig(NUSCENES_RIG), CARLA_RIG)
    assert "'nuscenes_nominal'" in line and "'carla_vad'" in line and "CAM_FRONT: mount" in line
    assert "\n" not in line and "more" in line  # 12 differences, 6 listed
    assert rig_mismatch(describe_rig(CARLA_RIG), CARLA_RIG) is None
    assert rig_mismatch(None, CARLA_RIG) is None  # a checkpoint that records no rig (random init)
