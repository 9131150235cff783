"""Bench2Drive reader: a tiny fixture in Bench2Drive's layout, converted and checked value by value."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from nusc.bench2drive import CAMERA_DIRS, hd_map_polylines, load_hd_map
from nusc.infos import build_infos, load_nuscenes
from scripts.import_bench2drive import main as import_main
from vlmad.commands import Command, RoadOption
from vlmad.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
W, H = 64, 36


def _anno(i: int, town_offset: float) -> dict:
    """Frame i: ego drives +x (CARLA) at 5 m/s; a car 10 m ahead, 3 m to CARLA's right; a red light."""
    ex = town_offset + 0.5 * i  # 5 m/s at 10 Hz
    return {
        "speed": 5.0,
        "acceleration": [0.2, 0.1, 9.81],
        "angular_velocity": [0.01, 0.02, 0.03],
        "command_near": int(RoadOption.LEFT) if i < 5 else int(RoadOption.LANEFOLLOW),
        "bounding_boxes": [
            {"class": "ego_vehicle", "id": 1, "location": [ex, 20.0, 0.0], "rotation": [0.0, 0.0, 0.0],
             "extent": [2.4, 1.0, 0.8], "speed": 5.0},
            {"class": "vehicle", "id": 7, "type_id": "vehicle.tesla.model3", "location": [ex + 10, 23.0, 0.0],
             "rotation": [0.0, 0.0, 90.0], "extent": [2.0, 0.9, 0.7], "speed": 2.0},
            {"class": "walker", "id": 9, "location": [ex + 500, 0.0, 0.0], "rotation": [0.0, 0.0, 0.0],
             "extent": [0.3, 0.3, 0.9], "speed": 1.0},  # far away: not annotated
            {"class": "traffic_light", "id": 11, "location": [ex + 30, 20.0, 0.0], "rotation": [0, 0, 0],
             "state": 0, "affects_ego": True},
        ],
    }


def make_clip(root: Path, name: str, frames: int = 11, offset: float = 0.0) -> Path:
    clip = root / name
    (clip / "anno").mkdir(parents=True)
    for i in range(frames):
        with gzip.open(clip / "anno" / f"{i:05d}.json.gz", "wt") as f:
            json.dump(_anno(i, offset), f)
        for k, d in enumerate(CAMERA_DIRS.values()):
            (clip / "camera" / d).mkdir(parents=True, exist_ok=True)
            img = np.full((H, W, 3), 40 * k, np.uint8)
            cv2.imwrite(str(clip / "camera" / d / f"{i:05d}.jpg"), img)
    return clip


# HD map fixture (CARLA coordinates): a two-lane road along x. Lane -1 drives +x on y = 20 (the ego's
# lane), lane 1 drives -x on y = 16.5; both 3.5 m wide, so the shared centre line is at y = 18.25 and the
# road edges at y = 21.75 and 14.75. A crosswalk spans x 10..14 (Town01 only); road 99 is far away.
LANE_W = 3.5


def _lane_points(y: float, heading_deg: float, x0: float, x1: float, centre: bool) -> list:
    xs = np.arange(x0, x1, 0.05)  # Bench2Drive samples every 0.05 m
    if heading_deg == 180.0:
        xs = xs[::-1]
    return [((float(x), y, 0.0), (0.0, 0.0, heading_deg), False) if centre else
            ((float(x), y, 0.0), (0.0, 0.0, heading_deg)) for x in xs]


def _lane(y: float, heading: float, x0: float, x1: float, left_type: str, right_type: str) -> list:
    """One lane's elements: Center, then its left / right markings at -+ width / 2 along CARLA's right
    vector (+y for heading 0, -y for heading 180)."""
    right = 1.0 if heading == 0.0 else -1.0
    return [
        {"Points": _lane_points(y, heading, x0, x1, True), "Type": "Center", "Color": "White",
         "Topology": [], "TopologyType": "Normal", "Left": (None, None), "Right": (None, None)},
        {"Points": _lane_points(y - right * LANE_W / 2, heading, x0, x1, False), "Type": left_type,
         "Color": "Yellow", "Topology": []},
        {"Points": _lane_points(y + right * LANE_W / 2, heading, x0, x1, False), "Type": right_type,
         "Color": "White", "Topology": []},
    ]


def write_hd_map(path: Path, crosswalk: bool) -> None:
    from shapely.geometry import Polygon

    roads = {
        1: {-1: _lane(20.0, 0.0, -60.0, 300.0, "SolidSolid", "Solid"),
            1: _lane(16.5, 180.0, -60.0, 300.0, "SolidSolid", "Solid"),
            "Trigger_Volumes": [{"Points": [[5, 15, 0], [6, 15, 0], [6, 22, 0]], "Type": "TrafficLight",
                                 "ParentActor_Location": [5, 14, 0]}]},
        99: {-1: _lane(5000.0, 0.0, 0.0, 50.0, "Broken", "Broken")},
    }
    if crosswalk:
        roads["Crosswalks"] = [{"Polygon": Polygon([(10, 14.75), (14, 14.75), (14, 21.75), (10, 21.75)]),
                                "Location": (12, 18.25, 0)}]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, arr=np.array(list(roads.items()), dtype=object))


@pytest.fixture
def b2d(tmp_path) -> Path:
    root = tmp_path / "b2d"
    make_clip(root, "Accident_Town01_Route1_Weather0")
    make_clip(root, "ParkedObstacle_Town03_Route2_Weather1", offset=100.0)
    make_clip(root, "Accident_Town05_Route3_Weather2")
    write_hd_map(root / "maps" / "Town01_HD_map.npz", crosswalk=True)
    write_hd_map(root / "maps" / "Town03_HD_map.npz", crosswalk=False)
    return root


def test_converts_values_and_loads_in_devkit(b2d, tmp_path):
    out = tmp_path / "data"
    assert import_main(["--src", str(b2d), "--out", str(out), "--exclude-towns", "Town05",
                        "--version", "v1.0-mini"]) == 0
    nusc = load_nuscenes(out, "v1.0-mini")  # the real nuscenes-devkit
    assert len(nusc.scene) == 2 and len(nusc.sample) == 6  # 11 frames at 10 Hz -> 3 keyframes, Town05 out
    assert not (tmp_path / "data.parts").exists()
    recs = build_infos(out, "v1.0-mini", progress=False)
    first = recs[0]
    # ego pose: CARLA (0, 20) yaw 0 -> ours (0, -20); the next keyframe is 2.5 m ahead (5 frames of 0.5 m)
    np.testing.assert_allclose(first["world_from_ego"][:3, 3], [0.0, -20.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(first["ego_fut"][0], [2.5, 0.0], atol=1e-4)
    assert first["timestamp"] + 500_000 == recs[1]["timestamp"]
    # the car: CARLA (10, 23) -> 10 m ahead, 3 m to the right (y = -3), centre raised by its half height,
    # yaw CARLA 90 (clockwise) -> -pi/2; size = 2 x extent (l, w, h)
    ag = first["agents"]
    assert len(ag["boxes"]) == 1  # the far walker is dropped
    np.testing.assert_allclose(ag["boxes"][0][:3], [10.0, -3.0, 0.7], atol=1e-4)
    np.testing.assert_allclose(ag["boxes"][0][3:6], [4.0, 1.8, 1.4], atol=1e-4)
    assert math.isclose(ag["boxes"][0][6], -math.pi / 2, abs_tol=1e-4)
    # privileged state: light and the route's command (RoadOption LEFT at frame 0, LANEFOLLOW at frame 5)
    assert first["privileged"]["traffic_light"] == "red"
    assert first["privileged"]["command"] == int(Command.LEFT)
    assert recs[1]["privileged"]["command"] == int(Command.STRAIGHT)
    assert first["privileged"]["road_option"] == "LEFT"
    # the record's command is the route's, not the one the (straight) future path would give
    assert first["command"] == int(Command.LEFT) and recs[1]["command"] == int(Command.STRAIGHT)
    # CAN bus: IMU mirrored into right-handed axes, velocity from the scalar speed
    np.testing.assert_allclose(first["can_bus"][7:10], [0.2, -0.1, 9.81], atol=1e-4)
    np.testing.assert_allclose(first["can_bus"][13:16], [5.0, 0.0, 0.0], atol=1e-4)
    assert len(first["cams"]) == 6 and first["cams"]["CAM_FRONT"]["width"] == W
    img = cv2.imread(str(out / first["cams"]["CAM_BACK"]["path"]))
    assert img.shape == (H, W, 3) and abs(int(img.mean()) - 120) <= 3  # CAM_BACK was written with 3 * 40
    # map vectors from the HD map (ego at ours (0, -20), yaw 0): the shared centre line (CARLA y 18.25)
    # is one divider 1.75 m to the left; the road edges (CARLA y 21.75 / 14.75) are the boundary, at
    # y = -1.75 and 5.25; the crosswalk (CARLA x 10..14) is a ped_crossing 10..14 m ahead
    by_cls = {c: [np.asarray(m["pts"]) for m in first["map"] if m["cls"] == c] for c in range(3)}
    assert len(by_cls[0]) == 1
    np.testing.assert_allclose(by_cls[0][0][:, 1], 1.75, atol=1e-3)
    assert by_cls[0][0][:, 0].min() < -29.0 and by_cls[0][0][:, 0].max() > 29.0  # across the 60 m patch
    edge_y = np.concatenate([v[:, 1] for v in by_cls[2]])
    assert np.all(np.isclose(edge_y, -1.75, atol=1e-3) | np.isclose(edge_y, 5.25, atol=1e-3)
                  | (np.abs(edge_y) >= 14.8))  # or on the patch's border
    assert np.isclose(edge_y, -1.75, atol=1e-3).any() and np.isclose(edge_y, 5.25, atol=1e-3).any()
    [cw] = by_cls[1]
    assert cw[:, 0].min() == pytest.approx(10.0, abs=1e-3) and cw[:, 0].max() == pytest.approx(14.0, abs=1e-3)
    np.testing.assert_allclose([cw[:, 1].min(), cw[:, 1].max()], [-1.75, 5.25], atol=1e-3)
    town03 = next(r for r in recs if r["scene_token"] != first["scene_token"])
    assert not [m for m in town03["map"] if m["cls"] == 1]  # Town03's file has no crosswalks
    assert "hd_map_crosswalks: none" in nusc.get("scene", town03["scene_token"])["description"]


def test_hd_map_classes_and_crop(tmp_path):
    """The HD map's elements as the project's classes: the shared centre line once, edges not dividers,
    a 'NONE' marking never, one drivable polygon per lane, the far road cropped away."""
    path = tmp_path / "Town01_HD_map.npz"
    write_hd_map(path, crosswalk=False)
    hd = load_hd_map(path)
    polys, has_cw = hd_map_polylines(hd, np.array([[0.0, -20.0]]), path)
    kinds = [c for c, _ in polys]
    assert kinds.count("divider") == 1 and kinds.count("boundary") == 2 and not has_cw
    assert all(np.abs(p[:, 1]).max() < 100.0 for _, p in polys)  # road 99 (CARLA y 5000) is cropped
    lanes = sorted((float(p[:, 1].min()), float(p[:, 1].max())) for c, p in polys if c == "boundary")
    np.testing.assert_allclose(lanes, [(-21.75, -18.25), (-18.25, -14.75)], atol=1e-6)  # 3.5 m lanes
    # the divider becomes nothing when painted 'NONE' (a lane edge without paint)
    hd[1][-1][1]["Type"] = hd[1][1][1]["Type"] = "NONE"
    assert [c for c, _ in hd_map_polylines(hd, np.array([[0.0, -20.0]]), path)[0]].count("divider") == 0
    far = hd_map_polylines(hd, np.array([[0.0, 1000.0]]), path)[0]
    assert far == []  # nothing within MAP_MARGIN_M of this ego


def test_missing_or_malformed_hd_map_is_named(b2d, tmp_path):
    (b2d / "maps" / "Town03_HD_map.npz").unlink()
    with pytest.raises(UserError, match="Town03_HD_map.npz"):
        import_main(["--src", str(b2d), "--out", str(tmp_path / "x"), "--exclude-towns", "Town05"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.parts").exists()
    (b2d / "maps" / "Town03_HD_map.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="malformed HD map .*Town03_HD_map.npz"):
        import_main(["--src", str(b2d), "--out", str(tmp_path / "y"), "--exclude-towns", "Town05"])
    assert not (tmp_path / "y").exists()


def test_town_and_clip_filters(b2d, tmp_path):
    out = tmp_path / "only1"
    import_main(["--src", str(b2d), "--out", str(out), "--towns", "Town01", "--version", "v1.0-mini"])
    assert len(load_nuscenes(out, "v1.0-mini").scene) == 1
    out2 = tmp_path / "clip"
    import_main(["--src", str(b2d), "--out", str(out2), "--clips", "ParkedObstacle_Town03_Route2_Weather1",
                 "--version", "v1.0-mini"])
    logs = load_nuscenes(out2, "v1.0-mini").log
    assert "Town03" in logs[0]["logfile"]


def test_missing_or_malformed_clip_is_named(b2d, tmp_path):
    with pytest.raises(UserError, match="NoSuchClip"):
        import_main(["--src", str(b2d), "--out", str(tmp_path / "x"), "--clips", "NoSuchClip"])
    bad = b2d / "Accident_Town01_Route1_Weather0" / "anno" / "00003.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(UserError, match="00003.json.gz"):
        import_main(["--src", str(b2d), "--out", str(tmp_path / "y"), "--towns", "Town01"])
    assert not (tmp_path / "y").exists()  # nothing half-written
    bad.unlink()
    with pytest.raises(UserError, match=r"missing: \[3\]"):
        import_main(["--src", str(b2d), "--out", str(tmp_path / "g"), "--towns", "Town01"])
    with gzip.open(bad, "wt") as f:
        json.dump(_anno(3, 0.0), f)
    (b2d / "Accident_Town01_Route1_Weather0" / "camera" / "rgb_back" / "00005.jpg").unlink()
    with pytest.raises(UserError, match="00005.jpg"):
        import_main(["--src", str(b2d), "--out", str(tmp_path / "z"), "--towns", "Town01"])


def test_resume_reuses_converted_clips(b2d, tmp_path, monkeypatch):
    out = tmp_path / "data"
    args = ["--src", str(b2d), "--out", str(out), "--exclude-towns", "Town05", "--version", "v1.0-mini"]
    import scripts.import_bench2drive as cli

    calls = []
    real = cli.convert_clip

    def flaky(clip, idx):
        calls.append(clip.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(clip, idx)

    monkeypatch.setattr(cli, "convert_clip", flaky)
    with pytest.raises(KeyboardInterrupt):
        import_main(args)
    assert not out.exists() and len(list((tmp_path / "data.parts").glob("clip_*.npz"))) == 1
    import_main(args)
    assert calls == [calls[0], calls[1], calls[1]]  # the first clip came from the cache
    assert len(load_nuscenes(out, "v1.0-mini").sample) == 6


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_end_to_end_import_index_annotate_train_agent(tmp_path):
    root = tmp_path / "b2d"
    for k in range(2):
        make_clip(root, f"Accident_Town01_Route{k}_Weather0", frames=36, offset=200.0 * k)
    write_hd_map(tmp_path / "maps" / "Town01_HD_map.npz", crosswalk=True)
    data, store, run = tmp_path / "data", tmp_path / "store", tmp_path / "train"
    _run("scripts.import_bench2drive", "--src", str(root), "--out", str(data), "--version", "v1.0-mini",
         "--maps", str(tmp_path / "maps"))
    _run("scripts.build_infos", "--dataroot", str(data), "--version", "v1.0-mini",
         "--out", str(tmp_path / "infos.json"))
    _run("scripts.annotate", "--dataroot", str(data), "--version", "v1.0-mini", "--teacher", "rule",
         "--store", str(store), "--no-progress")
    _run("scripts.train", "--config", "vad_nano", "--dataroot", str(data), "--version", "v1.0-mini",
         "--out", str(run), "--max-steps", "2", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
         "--quiet")
    from agent.vad_agent import VADAgent

    agent = VADAgent(str(run / "driving"))
    assert len(agent.sensors()) >= 6
