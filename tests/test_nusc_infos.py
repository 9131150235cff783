"""The sample index: cache reuse and invalidation, JSON round trip, the build_infos CLI, the synthetic set."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from nusc import infos as infos_mod
from nusc.infos import build_or_load_infos, default_cache_path, fingerprint, is_cached
from nusc.records import record_from_json, record_to_json
from scripts import build_infos as cli
from synthetic.nuscenes import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("i") / "ds", keyframes_per_scene=8)


@pytest.fixture
def ds(synth, tmp_path):
    """A private copy (tests below modify files)."""
    return shutil.copytree(synth, tmp_path / "ds")


def _count_builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = infos_mod.build_infos

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(infos_mod, "build_infos", counting)
    return calls


def test_cache_is_reused_then_invalidated(ds, monkeypatch):
    calls = _count_builds(monkeypatch)
    first = build_or_load_infos(ds, "v1.0-mini", progress=False)
    cache = default_cache_path(ds, "v1.0-mini")
    assert cache.is_file() and len(calls) == 1 and is_cached(ds, "v1.0-mini")
    second = build_or_load_infos(ds, "v1.0-mini", progress=False)
    assert len(calls) == 1  # reused
    assert [r["token"] for r in first] == [r["token"] for r in second]
    assert all(
        np.array_equal(a["ego_fut"], b["ego_fut"])
        and np.array_equal(a["agents"]["boxes"], b["agents"]["boxes"])
        for a, b in zip(first, second)
    )
    # touching an input table changes the fingerprint -> rebuild
    table = ds / "v1.0-mini" / "sample_annotation.json"
    st = table.stat()
    os.utime(table, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not is_cached(ds, "v1.0-mini")
    build_or_load_infos(ds, "v1.0-mini", progress=False)
    assert len(calls) == 2
    # a change to the CAN bus expansion too
    pose = ds / "can_bus" / "scene-0001_pose.json"
    pose.write_text(pose.read_text() + " ")
    build_or_load_infos(ds, "v1.0-mini", progress=False)
    assert len(calls) == 3
    # a corrupt cache is just rebuilt (it is only a cache)
    cache.write_text("{not json")
    again = build_or_load_infos(ds, "v1.0-mini", progress=False)
    assert len(calls) == 4 and len(again) == len(first)


def test_cache_path_and_code_version_are_part_of_the_key(ds, tmp_path, monkeypatch):
    calls = _count_builds(monkeypatch)
    out = tmp_path / "elsewhere" / "infos.json"
    build_or_load_infos(ds, "v1.0-mini", cache=out, progress=False)
    assert out.is_file() and not default_cache_path(ds, "v1.0-mini").exists()
    fp = fingerprint(ds, "v1.0-mini")
    assert json.loads(out.read_text())["fingerprint"] == fp
    monkeypatch.setattr(infos_mod, "_code_hash", lambda: "another-code-version")
    assert fingerprint(ds, "v1.0-mini") != fp
    build_or_load_infos(ds, "v1.0-mini", cache=out, progress=False)
    assert len(calls) == 2


def test_record_json_round_trip_keeps_shapes_and_dtypes(synth, tmp_path):
    recs = build_or_load_infos(synth, "v1.0-mini", cache=tmp_path / "c.json", progress=False)
    rec = recs[3]
    back = record_from_json(json.loads(json.dumps(record_to_json(rec))))
    assert back["ego_fut"].shape == (6, 2) and back["ego_fut_mask"].dtype == bool
    assert back["can_bus"].shape == (18,) and back["ego_his"].shape == (2, 2)
    n = len(rec["agents"]["labels"])
    assert back["agents"]["boxes"].shape == (n, 7) and back["agents"]["fut"].shape == (n, 6, 2)
    assert back["agents"]["labels"].dtype == np.int64 and back["agents"]["fut_mask"].dtype == bool
    assert all(m["pts"].shape == (20, 2) for m in back["map"])
    assert back["cams"]["CAM_FRONT"]["intrinsics"].shape == (3, 3)
    assert np.allclose(back["cams"]["CAM_BACK"]["ego_from_cam"], rec["cams"]["CAM_BACK"]["ego_from_cam"])
    # records without agents keep well-formed empty arrays
    empty = {**record_to_json(rec), "agents": {k: [] for k in rec["agents"]}, "map": []}
    e = record_from_json(empty)
    assert e["agents"]["boxes"].shape == (0, 7) and e["agents"]["fut"].shape == (0, 6, 2)


def test_cli_builds_then_reuses(synth, tmp_path, capsys):
    out = tmp_path / "infos.json"
    assert cli.main(["--dataroot", str(synth), "--version", "v1.0-mini", "--out", str(out), "--quiet"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("built") and "16 samples in 2 scenes" in first
    assert cli.main(["--dataroot", str(synth), "--version", "v1.0-mini", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("reused")
    assert cli.main(["--dataroot", str(synth), "--out", str(out), "--quiet", "--rebuild"]) == 0
    assert capsys.readouterr().out.startswith("built")


def test_synthetic_dataset_is_deterministic_and_has_both_commands(tmp_path):
    a = make_synthetic_dataset(
        tmp_path / "a", num_scenes=3, keyframes_per_scene=8, image_size=(64, 36), seed=5
    )
    b = make_synthetic_dataset(
        tmp_path / "b", num_scenes=3, keyframes_per_scene=8, image_size=(64, 36), seed=5
    )
    c = make_synthetic_dataset(
        tmp_path / "c", num_scenes=3, keyframes_per_scene=8, image_size=(64, 36), seed=6
    )
    for name in ("sample.json", "sample_annotation.json", "ego_pose.json"):
        assert (a / "v1.0-mini" / name).read_bytes() == (b / "v1.0-mini" / name).read_bytes()
    assert (a / "v1.0-mini" / "ego_pose.json").read_bytes() != (
        c / "v1.0-mini" / "ego_pose.json"
    ).read_bytes()
    recs = build_or_load_infos(a, "v1.0-mini", progress=False)
    assert {r["command"] for r in recs} == {0, 1, 2}  # straight, left and right scenes


def test_synthetic_scenes_can_carry_official_split_names(tmp_path):
    from nuscenes.utils.splits import create_splits_scenes

    root = make_synthetic_dataset(
        tmp_path / "m", keyframes_per_scene=4, image_size=(64, 36), scene_names=["scene-0061", "scene-0103"]
    )
    recs = build_or_load_infos(root, "v1.0-mini", progress=False)
    val = set(create_splits_scenes()["mini_val"])
    assert [r["scene_name"] in val for r in recs] == [False] * 4 + [True] * 4
    assert not any(r["can_bus_derived"] for r in recs)  # the CAN bus files follow the scene names
    with pytest.raises(ValueError, match="2 names for 3 scenes"):
        make_synthetic_dataset(tmp_path / "n", num_scenes=3, scene_names=["scene-0061", "scene-0103"])



def test_resampled_map_vectors_are_uniform_and_batched_equals_one_by_one():
    """Map pieces are resampled in one vectorised call; each must equal its own resampling, points evenly
    spaced along the line with both ends kept (a closed ring stays closed)."""
    from shapely.geometry import LineString, Point

    from nusc.records import MAP_POINTS, resample_line, resample_lines

    rng = np.random.default_rng(0)
    lines = [LineString(np.cumsum(rng.normal(size=(k, 2)), axis=0)) for k in (2, 3, 7, 30)]
    lines.append(LineString([(0, 0), (4, 0), (4, 3), (0, 0)]))  # closed ring, perimeter 12
    batched = resample_lines(lines)
    assert batched.shape == (len(lines), MAP_POINTS, 2)
    for line, pts in zip(lines, batched, strict=True):
        assert np.array_equal(pts, resample_line(np.asarray(line.coords)))
        assert np.allclose(pts[[0, -1]], np.asarray(line.coords)[[0, -1]])
        along = [line.project(Point(p)) for p in pts[:-1]]  # (a ring's end projects onto its start)
        assert np.allclose(np.diff(along), line.length / (MAP_POINTS - 1), atol=1e-9)
    assert resample_lines([]).shape == (0, MAP_POINTS, 2)
