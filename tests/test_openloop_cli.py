"""`scripts.eval_openloop` contract on a small synthetic nuScenes dataset (perfect, shifted, lidar frame,
strict, malformed input, CSV / markdown outputs, ground-truth cache)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openloop.evaluate import evaluate_predictions
from openloop.gt import build_ground_truth, cache_file, load_cache, load_ground_truth
from scripts.eval_openloop import main
from synthetic.nuscenes import make_synthetic_dataset
from vlmad.errors import UserError
from vlmad.frames import invert_transform, lidar_xy_to_ego, pose_to_matrix, rot_z, world_to_ego, yaw_of

SCENES, KEYFRAMES = 2, 12
VALID = SCENES * (KEYFRAMES - 6)  # keyframes with 6 future keyframes in their scene


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Read with the devkit, independently of openloop.gt: (dataroot, {token: ego future (6, 2) or None},
    {token: VAD-style lidar future (6, 2) in lidar axes or None}, {token: (yaw at +3 s, lidar xy in ego)})."""
    from nuscenes.nuscenes import NuScenes

    root = make_synthetic_dataset(tmp_path_factory.mktemp("nusc"), num_scenes=SCENES,
                                  keyframes_per_scene=KEYFRAMES, image_size=(160, 90), seed=0)
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)

    def pose(sample):
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        p = nusc.get("ego_pose", sd["ego_pose_token"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        return (pose_to_matrix(p["translation"], p["rotation"]),
                pose_to_matrix(cs["translation"], cs["rotation"]))

    futures, lidar_futures, turn = {}, {}, {}
    for s in nusc.sample:
        world_from_ego, ego_from_lidar = pose(s)
        world_from_lidar = world_from_ego @ ego_from_lidar
        pts, lid, nxt = [], [], s["next"]
        while nxt and len(pts) < 6:
            nx = nusc.get("sample", nxt)
            w_e, e_l = pose(nx)
            pts.append(world_to_ego(world_from_ego, w_e[:3, 3])[:2])
            # VAD's converter: future lidar position, global -> current lidar frame, keep x, y
            lid.append(world_to_ego(world_from_lidar, (w_e @ e_l)[:3, 3])[:2])
            last_yaw = yaw_of(invert_transform(world_from_ego) @ w_e)
            nxt = nx["next"]
        ok = len(pts) == 6
        futures[s["token"]] = np.array(pts) if ok else None
        lidar_futures[s["token"]] = np.array(lid) if ok else None
        if ok:
            turn[s["token"]] = (last_yaw, ego_from_lidar[:2, 3], ego_from_lidar[:3, :3])
    return root, futures, lidar_futures, turn


def run(tmp_path, root, preds, *extra, name="m"):
    p = tmp_path / f"{name}_pred.json"
    p.write_text(json.dumps({t: np.asarray(v).tolist() for t, v in preds.items()}))
    out = tmp_path / f"{name}.json"
    main(["--dataroot", str(root), "--version", "v1.0-mini", "--predictions", str(p), "--out", str(out),
          "--quiet", *extra])
    return json.loads(out.read_text())


def valid_futures(futures):
    return {t: f for t, f in futures.items() if f is not None}


def test_perfect_predictions_score_zero(tmp_path, data):
    root, futures, *_ = data
    m = run(tmp_path, root, valid_futures(futures))
    assert m["num_samples"] == VALID
    assert m["skipped_no_future"] == SCENES * KEYFRAMES - VALID
    for conv in ("vad", "uniad"):
        for k in ("1s", "2s", "3s", "avg"):
            assert m[conv]["l2"][k] == pytest.approx(0.0, abs=1e-9)
            assert m[conv]["collision"][k] == 0.0
    assert m["unknown_tokens"]["count"] == 0 and m["missing_tokens"]["count"] == 0


def test_shifted_predictions_give_the_shift(tmp_path, data):
    root, futures, *_ = data
    m = run(tmp_path, root, {t: f + [0.3, -0.4] for t, f in valid_futures(futures).items()})
    for conv in ("vad", "uniad"):
        assert m[conv]["l2"] == pytest.approx({"1s": 0.5, "2s": 0.5, "3s": 0.5, "avg": 0.5})


def test_driving_into_an_agent_collides_everywhere(tmp_path, data):
    root, futures, *_ = data
    gt = load_ground_truth(root, "v1.0-mini", progress=False)
    preds = {}
    for t in valid_futures(futures):
        s = gt.samples[t]
        a = int(np.nonzero(s.agent_fut_mask.all(1))[0][0])  # an agent annotated over the whole horizon
        preds[t] = s.agent_fut_xy[a] - [0.5, 0.0]  # box centre (0.5 m ahead) lands near the agent's centre
    m = run(tmp_path, root, preds)
    for conv in ("vad", "uniad"):
        assert m[conv]["collision"]["avg"] == pytest.approx(100.0)
    assert m["gt_collision_steps"] == 0


def test_lidar_frame_is_vads_convention(tmp_path, data):
    root, futures, lidar_futures, turn = data
    lidar = valid_futures(lidar_futures)
    perfect = run(tmp_path, root, lidar, "--frame", "lidar", name="lidar")
    shifted = run(tmp_path, root, {t: p + [0.3, -0.4] for t, p in lidar.items()}, "--frame", "lidar",
                  name="sh")
    vad = run(tmp_path, root, lidar, "--frame", "lidar", "--geometry", "vad-code", name="vad")
    wrong = run(tmp_path, root, lidar, name="wrong")  # lidar points read as ego points
    for conv in ("vad", "uniad"):
        assert perfect[conv]["l2"]["avg"] == pytest.approx(0.0, abs=1e-9)
        assert perfect[conv]["collision"]["avg"] == vad[conv]["collision"]["avg"] == 0.0
        assert shifted[conv]["l2"] == pytest.approx({"1s": 0.5, "2s": 0.5, "3s": 0.5, "avg": 0.5})
        assert wrong[conv]["l2"]["3s"] > 5.0
    assert perfect["frame"] == "lidar" and vad["collision_geometry"]["heading"] == "fixed"
    # Rotating VAD's plans into ego axes is not enough: they move the lidar, not the ego origin. Scored as
    # ego plans, the perfect lidar plans are off by |(R(yaw) - I) t_lidar| (zero when driving straight).
    rotated = {t: lidar_xy_to_ego(p, turn[t][2]) for t, p in lidar.items()}
    m = run(tmp_path, root, rotated, name="rotated")
    lever = [np.linalg.norm(rot_z(y)[:2, :2] @ t_l - t_l) for y, t_l, _ in turn.values()]
    assert m["uniad"]["l2"]["3s"] == pytest.approx(np.mean(lever), rel=1e-6, abs=1e-9)
    assert np.mean(lever) > 0.01  # the turning scene makes the difference visible


def test_unknown_and_missing_tokens_are_reported_and_strict_fails(tmp_path, data):
    root, futures, *_ = data
    preds = valid_futures(futures)
    dropped = next(iter(preds))
    preds = {t: f for t, f in preds.items() if t != dropped}
    preds["not-a-token"] = np.zeros((6, 2))
    m = run(tmp_path, root, preds)
    assert m["num_samples"] == VALID - 1
    assert m["unknown_tokens"] == {"count": 1, "tokens": ["not-a-token"]}
    assert m["missing_tokens"] == {"count": 1, "tokens": [dropped]}
    with pytest.raises(UserError, match="--strict"):
        run(tmp_path, root, preds, "--strict", name="strict")
    assert run(tmp_path, root, valid_futures(futures), "--strict", name="ok")["num_samples"] == VALID
    with pytest.raises(UserError, match="no prediction matches"):
        run(tmp_path, root, {"not-a-token": np.zeros((6, 2))}, name="none")
    # nuScenes' official train split holds both synthetic scene names; val holds neither
    m = run(tmp_path, root, valid_futures(futures), "--split", "train", name="split")
    assert m["num_samples"] == VALID and m["split"] == "train"
    with pytest.raises(UserError, match="no scene of split 'val'"):
        run(tmp_path, root, valid_futures(futures), "--split", "val", name="split2")
    # a scope of one scene: the other scene's predictions become unknown, nothing of it is missing
    gt = load_ground_truth(root, "v1.0-mini", progress=False)
    scope = {t for t, s in gt.samples.items() if s.scene_name == "scene-0001"}
    m = evaluate_predictions(gt, valid_futures(futures), scope=scope)
    assert m["num_samples"] == VALID // 2 and m["unknown_tokens"]["count"] == VALID // 2
    assert m["missing_tokens"]["count"] == 0 and m["num_keyframes"] == KEYFRAMES


def test_predictions_for_keyframes_without_future_are_skipped(tmp_path, data):
    root, futures, *_ = data
    preds = {t: (np.zeros((6, 2)) if f is None else f) for t, f in futures.items()}
    m = run(tmp_path, root, preds)
    assert m["num_samples"] == VALID and m["skipped_predictions"] == SCENES * KEYFRAMES - VALID
    assert m["vad"]["l2"]["avg"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("content, pattern", [
    ("[1, 2]", "expected a JSON object"),
    ('{"tokA": [[0, 0], [1, 1]]}', "tokA.*shape \\[2, 2\\]"),
    ('{"tokB": [[0, 0, 0]] }', "tokB"),
    ('{"tokC": [[0, 0], [1], [2, 2], [3, 3], [4, 4], [5, 5]]}', "tokC.*ragged"),
    ('{"tokD": [[0, NaN], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]}', "tokD.*NaN"),
    ('{"tokE": "abc"}', "tokE"),
    ("{not json", "not valid JSON"),
])
def test_malformed_predictions_name_the_problem(tmp_path, data, content, pattern):
    root = data[0]
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(UserError, match=pattern):
        main(["--dataroot", str(root), "--version", "v1.0-mini", "--predictions", str(p),
              "--out", str(tmp_path / "m.json"), "--quiet"])
    assert not (tmp_path / "m.json").exists()


def test_cli_exit_code_and_one_line_error(tmp_path, data):
    p = tmp_path / "p.json"
    p.write_text("{}")
    r = subprocess.run([sys.executable, "-m", "scripts.eval_openloop", "--dataroot", str(tmp_path / "none"),
                        "--version", "v1.0-mini", "--predictions", str(p), "--out", str(tmp_path / "m.json")],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_missing_table_is_a_clear_error(tmp_path, data):
    root = data[0]
    broken = tmp_path / "broken"
    (broken / "v1.0-mini").mkdir(parents=True)
    for f in (root / "v1.0-mini").glob("*.json"):
        if f.name != "ego_pose.json":
            (broken / "v1.0-mini" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="ego_pose"):
        build_ground_truth(broken, "v1.0-mini", progress=False)


def test_csv_and_markdown_outputs(tmp_path, data):
    root, futures, *_ = data
    md, csv_path = tmp_path / "table.md", tmp_path / "rows.csv"
    preds = valid_futures(futures)
    run(tmp_path, root, preds, "--markdown", str(md), "--name", "perfect", "--csv", str(csv_path))
    for dx in (1.0, 2.0):  # the second run replaces the first by name
        shifted = {t: f + [dx, 0.0] for t, f in preds.items()}
        run(tmp_path, root, shifted, "--markdown", str(md), "--name", "off1m")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == VALID and {r["token"] for r in rows} == set(preds)
    assert float(rows[0]["l2_t6"]) == pytest.approx(0.0, abs=1e-6) and rows[0]["col_t3"] == "0"
    text = md.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| off1m ")]
    assert len(lines) == 2  # replaced by name, one row per convention
    assert lines[0].split("|")[2].strip() == "2.00"
    assert sum(ln.startswith("| perfect ") for ln in text.splitlines()) == 2
    md.write_text(text.replace('"vad":{', '"vad":{"l2":3,"x":{', 1))  # a damaged run list
    with pytest.raises(UserError, match="corrupt"):
        run(tmp_path, root, preds, "--markdown", str(md))
    other = tmp_path / "notes.md"
    other.write_text("# my notes\n")
    with pytest.raises(UserError, match="not written by eval_openloop"):
        run(tmp_path, root, preds, "--markdown", str(other))
    assert other.read_text() == "# my notes\n"


def test_table_subcommand(tmp_path, data, capsys):
    root, futures, *_ = data
    preds = valid_futures(futures)
    run(tmp_path, root, preds, name="a")
    run(tmp_path, root, {t: f + [0.0, 0.5] for t, f in preds.items()}, name="b")
    main(["table", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--names", "VAD", "VAD + VLM-AD"])
    out = capsys.readouterr().out
    assert "| VAD | 0.00" in out and "| VAD + VLM-AD | 0.50" in out
    with pytest.raises(UserError, match="not a metrics file"):
        (tmp_path / "junk.json").write_text("{}")
        main(["table", str(tmp_path / "junk.json")])


def test_ground_truth_cache_round_trip_and_staleness(tmp_path, data):
    root = data[0]
    gt = build_ground_truth(root, "v1.0-mini", progress=False)
    cache_dir = tmp_path / "cache"
    import openloop.gt as gt_mod

    gt_mod._MEMO.clear()
    first = load_ground_truth(root, "v1.0-mini", cache_dir=cache_dir, progress=False)
    path = cache_file(cache_dir, root, "v1.0-mini")
    assert path.is_file()
    cached = load_cache(path)
    assert list(cached.samples) == list(gt.samples) == list(first.samples)
    for t, s in gt.samples.items():
        c = cached.samples[t]
        assert (c.scene_name, c.frame_idx, c.valid) == (s.scene_name, s.frame_idx, s.valid)
        for f in ("ego_fut", "ego_fut_mask", "agent_box", "agent_fut_xy", "agent_fut_yaw", "agent_fut_mask",
                  "ego_from_lidar"):
            np.testing.assert_array_equal(getattr(c, f), getattr(s, f))
    assert load_cache(path, fingerprint={"something": "else"}) is None  # stale -> rebuilt by the caller
    path.write_bytes(b"corrupt")
    assert load_cache(path) is None
    gt_mod._MEMO.clear()


def test_agent_futures_match_the_devkit_boxes(data):
    """Agent positions / yaws at the keyframe and its futures, against nuscenes-devkit's own Box API."""
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    root = data[0]
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    gt = build_ground_truth(root, "v1.0-mini", progress=False)
    sample = nusc.sample[3]
    s = gt.samples[sample["token"]]
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])

    def in_ego(ann):
        b = Box(ann["translation"], ann["size"], Quaternion(ann["rotation"]))
        b.translate(-np.array(pose["translation"]))
        b.rotate(Quaternion(pose["rotation"]).inverse)
        return b.center[:2], b.orientation.yaw_pitch_roll[0]

    assert len(s.agent_box) == len(sample["anns"]) > 0
    for i, tok in enumerate(sample["anns"]):
        ann = nusc.get("sample_annotation", tok)
        xy, yaw = in_ego(ann)
        np.testing.assert_allclose(s.agent_box[i, [0, 1, 6]], [*xy, yaw], atol=1e-6)
        np.testing.assert_allclose(s.agent_box[i, 3:5], [ann["size"][1], ann["size"][0]])
        for t in range(6):
            ann = nusc.get("sample_annotation", ann["next"])
            xy, yaw = in_ego(ann)
            assert s.agent_fut_mask[i, t]
            np.testing.assert_allclose(s.agent_fut_xy[i, t], xy, atol=1e-6)
            assert abs((s.agent_fut_yaw[i, t] - yaw + np.pi) % (2 * np.pi) - np.pi) < 1e-6
