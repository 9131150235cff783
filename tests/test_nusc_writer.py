"""Writer -> nuscenes-devkit -> records round trip, checked against the drives the data was written from."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import LineString, Polygon

from nusc.classes import CATEGORY_TO_CLASS, DETECTION_CLASSES, detection_label
from nusc.infos import build_infos, load_nuscenes
from nusc.records import MAP_POINTS, PATCH_X, PATCH_Y
from nusc.writer import AgentBox, DriveFrame, RecordedDrive, ego_frame_boxes, write_nuscenes
from synthetic.nuscenes import LANE_W, make_drive
from vlmad.commands import command_from_future
from vlmad.frames import se2_pose, world_to_ego, yaw_of
from vlmad.rig import NUSCENES_RIG

SIZE = (400, 225)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Three procedural drives (gentle curve, left turn, gentle curve) written and indexed."""
    rng = np.random.default_rng(3)
    drives = [make_drive(i, 10, SIZE, rng) for i in range(3)]
    root = write_nuscenes(tmp_path_factory.mktemp("w") / "ds", "v1.0-mini", drives)
    return root, drives, build_infos(root, "v1.0-mini", progress=False)


def _keys(drive):
    return [f for f in drive.frames if f.is_keyframe]


def test_devkit_loads_all_tables(written):
    root, drives, recs = written
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus
    from nuscenes.map_expansion.map_api import NuScenesMap

    nusc = load_nuscenes(root, "v1.0-mini")
    assert len(nusc.scene) == 3 and len(nusc.sample) == sum(len(_keys(d)) for d in drives) == len(recs)
    sample = nusc.sample[0]
    assert set(sample["data"]) == set(NUSCENES_RIG.camera_names) | {"LIDAR_TOP"}
    # every keyframe box was annotated, with nuScenes' (w, l, h) size order
    ann = nusc.get("sample_annotation", sample["anns"][0])
    box = _keys(drives[0])[0].boxes[0]
    assert ann["size"] == pytest.approx([box.size[1], box.size[0], box.size[2]])
    assert len(nusc.sample_annotation) == sum(len(f.boxes) for d in drives for f in _keys(d))
    pose_msgs = NuScenesCanBus(dataroot=str(root)).get_messages("scene-0002", "pose")
    assert len(pose_msgs) == len(drives[1].frames)  # non-keyframes feed the CAN bus too
    nmap = NuScenesMap(dataroot=str(root), map_name="singapore-onenorth")
    assert len(nmap.lane_divider) == 3 and len(nmap.road_segment) == 3 and len(nmap.ped_crossing) == 3
    # camera calibration comes from the rig at the written image size
    cs = nusc.get(
        "calibrated_sensor", nusc.get("sample_data", sample["data"]["CAM_FRONT"])["calibrated_sensor_token"]
    )
    k = NUSCENES_RIG.with_image_size(*SIZE).camera("CAM_FRONT").intrinsics()
    assert np.allclose(cs["camera_intrinsic"], k)


def test_ego_future_history_and_command_match_the_drive(written):
    _, drives, recs = written
    by_name = {d.scene_name: d for d in drives}
    commands = set()
    for rec in recs:
        keys = _keys(by_name[rec["scene_name"]])
        k = rec["frame_idx"]
        pose = keys[k].world_from_ego
        assert np.allclose(rec["world_from_ego"], pose, atol=1e-6)
        n_fut = min(6, len(keys) - 1 - k)
        assert rec["ego_fut_mask"].tolist() == [True] * n_fut + [False] * (6 - n_fut)
        exp = np.zeros((6, 2))
        for j in range(n_fut):
            exp[j] = world_to_ego(pose, keys[k + 1 + j].world_from_ego[:2, 3])
            yaw = math.remainder(yaw_of(keys[k + 1 + j].world_from_ego) - yaw_of(pose), 2 * math.pi)
            assert rec["ego_fut_yaw"][j] == pytest.approx(yaw, abs=1e-5)
        assert np.allclose(rec["ego_fut"], exp, atol=1e-5)
        assert rec["command"] == int(command_from_future(exp, rec["ego_fut_mask"]))
        commands.add(rec["command"])
        for j in range(2):  # history at -1.0 s, -0.5 s
            if k - 2 + j >= 0:
                assert rec["ego_his_mask"][j]
                assert np.allclose(
                    rec["ego_his"][j], world_to_ego(pose, keys[k - 2 + j].world_from_ego[:2, 3]), atol=1e-5
                )
            else:
                assert not rec["ego_his_mask"][j]
    assert commands == {0, 1, 2}  # scene-0001 curves gently, scene-0002 turns left, scene-0003 right


def test_agents_match_the_drive_in_the_ego_frame(written):
    _, drives, recs = written
    by_name = {d.scene_name: d for d in drives}
    for rec in recs:
        keys = _keys(by_name[rec["scene_name"]])
        k = rec["frame_idx"]
        frame = keys[k]
        expected = [
            b
            for b in frame.boxes
            if detection_label(b.category) >= 0
            and np.linalg.norm(b.center[:2] - frame.world_from_ego[:2, 3]) <= 80.0
        ]
        exp_boxes = ego_frame_boxes(frame.world_from_ego, expected)
        got = rec["agents"]
        assert len(got["labels"]) == len(expected)
        for b, eb in zip(expected, exp_boxes):
            i = int(np.argmin(np.linalg.norm(got["boxes"][:, :3] - eb[:3], axis=1)))
            assert np.allclose(got["boxes"][i, :6], eb[:6], atol=1e-4)
            assert math.remainder(got["boxes"][i, 6] - eb[6], 2 * math.pi) == pytest.approx(0, abs=1e-5)
            assert DETECTION_CLASSES[got["labels"][i]] == CATEGORY_TO_CLASS[b.category]
            # velocity: the devkit re-derives it from the neighbouring annotations (centred differences),
            # which on a bend is the chord direction: check that, and the speed against the drive's
            j0, j1 = max(k - 1, 0), min(k + 1, len(keys) - 1)
            first, last = ([x for x in keys[j].boxes if x.instance_id == b.instance_id][0] for j in (j0, j1))
            chord = (last.center[:2] - first.center[:2]) / (0.5 * (j1 - j0))
            assert np.allclose(got["velocity"][i], frame.world_from_ego[:2, :2].T @ chord, atol=1e-3)
            assert np.linalg.norm(got["velocity"][i]) == pytest.approx(
                np.linalg.norm(b.velocity), rel=0.05, abs=1e-3
            )
            # future: the same instance's centre at the next keyframes, in the current ego frame
            for j in range(6):
                later = (
                    [x for x in keys[k + 1 + j].boxes if x.instance_id == b.instance_id]
                    if k + 1 + j < len(keys)
                    else []
                )
                assert got["fut_mask"][i, j] == bool(later)
                if later:
                    assert np.allclose(
                        got["fut"][i, j], world_to_ego(frame.world_from_ego, later[0].center[:2]), atol=1e-4
                    )


def test_map_vectors_lie_on_the_written_polylines(written):
    _, drives, recs = written
    by_name = {d.scene_name: d for d in drives}
    for rec in recs:
        drive = by_name[rec["scene_name"]]
        pose = rec["world_from_ego"]
        lines = {
            c: [world_to_ego(pose, p) for cls, p in drive.map_polylines if cls == c]
            for c in ("divider", "boundary", "ped_crossing")
        }
        divider = LineString(lines["divider"][0])
        boundary = Polygon(lines["boundary"][0]).exterior
        crossing = Polygon(lines["ped_crossing"][0]).exterior
        classes = [m["cls"] for m in rec["map"]]
        assert classes.count(0) >= 1 and classes.count(2) >= 2  # the ego is always on the road
        for m in rec["map"]:
            pts = m["pts"]
            assert pts.shape == (MAP_POINTS, 2)
            assert np.all(np.abs(pts[:, 0]) <= PATCH_X / 2 + 1e-6) and np.all(
                np.abs(pts[:, 1]) <= PATCH_Y / 2 + 1e-6
            )
            step = np.linalg.norm(np.diff(pts, axis=0), axis=1)
            target = {0: divider, 1: crossing, 2: boundary}[m["cls"]]
            on_edge = (np.abs(np.abs(pts[:, 0]) - PATCH_X / 2) < 1e-3) | (
                np.abs(np.abs(pts[:, 1]) - PATCH_Y / 2) < 1e-3
            )
            dist = np.array([target.distance(LineString([p, p + 1e-9])) for p in pts])
            # crossings cut by the patch keep the cut edge (as VAD does); other vectors lie on their polyline
            assert np.all((dist < 0.02) | (on_edge & (m["cls"] == 1)))
            if m["cls"] != 1:  # resampled uniformly along the (polyline) piece
                assert step.max() - step.min() < 0.05 * step.mean() + 1e-3
            else:
                assert np.allclose(pts[0], pts[-1], atol=1e-6)  # crossings are closed rings
        # the ego drives in the right lane: the divider is LANE_W / 2 to its left
        d0 = [m for m in rec["map"] if m["cls"] == 0][0]["pts"]
        i0 = int(np.argmin(np.abs(d0[:, 0])))
        assert d0[i0, 1] == pytest.approx(LANE_W / 2, abs=0.3)


def test_can_bus_comes_from_the_expansion(tmp_path):
    """Explicit CAN values in the drive appear in the record (not re-derived from poses)."""
    frames = []
    for k in range(7):
        frames.append(
            DriveFrame(
                timestamp_us=10**15 + k * 250_000,
                world_from_ego=se2_pose(100.0 + 2.0 * k, 50.0, 0.3),
                images={c: np.full((90, 160, 3), 100, np.uint8) for c in NUSCENES_RIG.camera_names}
                if k % 2 == 0
                else {},
                boxes=[],
                is_keyframe=k % 2 == 0,
                accel=np.array([0.7, 0.1, 9.8]),
                velocity=np.array([8.1, 0.2, 0.0]),
                rotation_rate=np.array([0.0, 0.0, 0.05]),
                privileged={"k": k} if k % 2 == 0 else None,
            )
        )
    drive = RecordedDrive("scene-0007", "Town01", NUSCENES_RIG, frames)
    root = write_nuscenes(tmp_path / "ds", "v1.0-mini", [drive])
    recs = build_infos(root, "v1.0-mini", progress=False)
    assert len(recs) == 4
    rec = recs[1]
    assert not rec["can_bus_derived"]
    assert np.allclose(rec["can_bus"][7:10], [0.7, 0.1, 9.8]) and np.allclose(
        rec["can_bus"][13:16], [8.1, 0.2, 0]
    )
    assert np.allclose(rec["can_bus"][10:13], [0, 0, 0.05])
    assert np.allclose(rec["can_bus"][:3], [104.0, 50.0, 0.0])
    assert rec["can_bus"][16] == pytest.approx(0.3) and rec["can_bus"][17] == pytest.approx(math.degrees(0.3))
    assert rec["ego_speed"] == pytest.approx(8.1) and rec["privileged"] == {"k": 2}
    assert rec["map"] == []  # no polylines were written
    # a non-nuScenes location name is aliased to a location the devkit's map API accepts
    nusc = load_nuscenes(root, "v1.0-mini")
    assert nusc.log[0]["location"] == "singapore-onenorth" and "Town01" in nusc.log[0]["logfile"]


def test_derived_can_bus_without_the_expansion(written, tmp_path):
    import shutil

    root, drives, recs = written
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "can_bus")
    derived = build_infos(copy, "v1.0-mini", progress=False)
    for a, b in zip(recs, derived):
        assert b["can_bus_derived"] and not a["can_bus_derived"]
        assert np.allclose(a["can_bus"][:7], b["can_bus"][:7]) and a["can_bus"][16] == b["can_bus"][16]
        assert b["ego_speed"] == pytest.approx(a["ego_speed"], rel=0.02)  # constant-speed drives
    keys = _keys(drives[0])
    speed = np.linalg.norm(keys[3].world_from_ego[:2, 3] - keys[2].world_from_ego[:2, 3]) / 0.5
    assert recs[2]["ego_speed"] == pytest.approx(speed, rel=0.02)


def test_writer_is_tidy_and_refuses_to_overwrite(tmp_path):
    rng = np.random.default_rng(0)
    drive = make_drive(0, 3, (64, 36), rng)
    root = write_nuscenes(tmp_path / "ds", "v1.0-mini", [drive])
    with pytest.raises(FileExistsError):
        write_nuscenes(root, "v1.0-mini", [drive])
    write_nuscenes(root, "v1.0-mini", [drive], overwrite=True)
    other = tmp_path / "user_data"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not written by vlmad"):
        write_nuscenes(other, "v1.0-mini", [drive], overwrite=True)
    assert (other / "keep.txt").is_file()
    # a failure half-way (second drive's image has another size) leaves nothing behind
    bad = make_drive(1, 3, (64, 36), rng)
    bad.frames[-1].images["CAM_BACK"] = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="share one size"):
        write_nuscenes(tmp_path / "new", "v1.0-mini", [drive, bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "user_data"]
    with pytest.raises(ValueError, match="scene-0001"):
        write_nuscenes(
            tmp_path / "x", "v1.0-mini", [RecordedDrive("town01_route3", "Town01", drive.rig, drive.frames)]
        )
    missing_cam = make_drive(2, 3, (64, 36), rng)
    del missing_cam.frames[0].images["CAM_FRONT"]
    with pytest.raises(ValueError, match="CAM_FRONT"):
        write_nuscenes(tmp_path / "y", "v1.0-mini", [missing_cam])


def test_agent_box_world_to_ego_convention():
    """A box 10 m ahead of an ego facing +y (world) is at x = +10 in the ego frame, with yaw 0."""
    pose = se2_pose(5.0, 5.0, math.pi / 2)
    b = AgentBox(
        "a", "vehicle.car", np.array([5.0, 15.0, 0.8]), np.array([4.5, 1.9, 1.6]), math.pi / 2, np.zeros(2)
    )
    eb = ego_frame_boxes(pose, [b])[0]
    assert np.allclose(eb, [10.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.0], atol=1e-9)


def test_a_town_map_shared_by_many_drives_is_written_once(tmp_path):
    """Every drive of a town carries the whole town's map; the location's map expansion must hold each
    element once, so that a sample's map vectors do not repeat (they repeated once per drive)."""
    import dataclasses
    import json

    rng = np.random.default_rng(5)
    d0, d1, d2 = (make_drive(i, 4, SIZE, rng) for i in range(3))
    extra = ("divider", np.array([[0.0, 50.0], [30.0, 50.0]]))  # one element only drive 2 has
    d1 = dataclasses.replace(d1, location=d0.location, map_polylines=list(d0.map_polylines))
    d2 = dataclasses.replace(d2, location=d0.location, map_polylines=[*d0.map_polylines, extra])
    root = write_nuscenes(tmp_path / "ds", "v1.0-mini", [d0, d1, d2])
    (exp,) = (root / "maps" / "expansion").glob("*.json")
    layers = json.loads(exp.read_text())
    n_div = sum(cls == "divider" for cls, _ in d0.map_polylines)
    n_poly = sum(cls != "divider" for cls, _ in d0.map_polylines)
    assert len(layers["lane_divider"]) == n_div + 1 and len(layers["polygon"]) == n_poly
    for rec in build_infos(root, "v1.0-mini", progress=False):
        pts = [m["pts"].round(3).tobytes() for m in rec["map"]]
        assert len(pts) == len(set(pts)), rec["scene_name"]
