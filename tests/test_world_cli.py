"""Offline world CLIs: collect -> nuScenes dataset, drive -> leaderboard results (determinism, resume)."""

from __future__ import annotations

import json

import pytest
from nuscenes.nuscenes import NuScenes

from carla_eval import report
from scripts import collect as collect_cli
from scripts import drive as drive_cli
from scripts import make_town
from vlmad.errors import UserError

SMALL = ["--set", "traffic.num_vehicles=6", "traffic.num_pedestrians=2", "traffic.green_s=5.0"]


def _strip_wall_clock(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    for r in data["_checkpoint"]["records"]:
        r["meta"].pop("duration_system")
    return data


def test_collect_writes_a_dataset_the_devkit_and_index_load(tmp_path):
    out = tmp_path / "ds"
    argv = [
        "--town",
        "VlmadGrid1x1",
        "--drives",
        "2",
        "--frames",
        "5",
        "--seed",
        "3",
        "--out",
        str(out),
        "--image-size",
        "160x90",
        *SMALL,
    ]
    assert collect_cli.main(argv) == 0
    nusc = NuScenes("v1.0-mini", str(out), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 10
    assert "offline world" in nusc.scene[0]["description"]
    from nusc.infos import build_or_load_infos

    infos = build_or_load_infos(out, "v1.0-mini")
    assert len(infos) == 10
    priv = [r["privileged"] for r in infos]
    assert all(p is not None and p["source"] == "offline_world" and "traffic_light" in p for p in priv)
    # boxes keep their instance across the keyframes of a scene
    inst = [set(r["agents"]["instance"]) for r in infos[:5]]
    assert any(a & b for a, b in zip(inst, inst[1:]))
    with pytest.raises(UserError, match="exists"):
        collect_cli.main(argv)  # never silently overwrites


def test_drive_is_deterministic_resumable_and_reportable(tmp_path):
    base = [
        "--expert",
        "--town",
        "VlmadGrid1x1",
        "--num-routes",
        "2",
        "--min-length",
        "60",
        "--max-length",
        "90",
        "--seed",
        "4",
        *SMALL,
    ]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert drive_cli.main([*base, "--out", str(a)]) == 0
    assert drive_cli.main([*base, "--out", str(b)]) == 0
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert _strip_wall_clock(da) == _strip_wall_clock(db)  # same seed, same results (wall-clock aside)
    assert da["meta"]["source"] == "offline_world" and da["entry_status"] == "Finished" and da["eligible"]
    recs = da["_checkpoint"]["records"]
    assert [r["route_id"] for r in recs] == ["RouteScenario_0", "RouteScenario_1"]
    assert da["_checkpoint"]["progress"] == [2, 2]
    # an interrupted run (one route written) resumes with the second route only
    partial = json.loads(a.read_text())
    partial["_checkpoint"]["records"] = partial["_checkpoint"]["records"][:1]
    partial["_checkpoint"]["progress"] = [1, 2]
    a.write_text(json.dumps(partial))
    assert drive_cli.main([*base, "--out", str(a), "--resume"]) == 0
    resumed = json.loads(a.read_text())
    assert resumed["_checkpoint"]["records"][0] == partial["_checkpoint"]["records"][0]
    assert _strip_wall_clock(resumed) == _strip_wall_clock(da)
    with pytest.raises(UserError, match="other settings"):
        drive_cli.main([*base[: -len(SMALL)], "--seed", "5", "--out", str(a), "--resume"])
    with pytest.raises(UserError, match="exists"):
        drive_cli.main([*base, "--out", str(a)])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        drive_cli.main([*base, "--out", str(tmp_path / "bad.json"), "--resume"])
    # the project's report reads it unchanged and labels it
    md = tmp_path / "r.md"
    assert report.main([str(a), "--json", str(tmp_path / "r.json"), "--markdown", str(md)]) == 0
    assert "offline_world" in md.read_text()


def test_drive_without_an_agent_package_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="importing no_such_agent_module failed: ModuleNotFoundError"):
        drive_cli.main(
            ["--agent", "no_such_agent_module", "--agent-config", "x", "--out", str(tmp_path / "r.json")]
        )


def test_make_town_writes_a_loadable_map(tmp_path):
    out = tmp_path / "t.xodr"
    assert make_town.main(["--out", str(out), "--grid", "1x1", "--lanes", "1"]) == 0
    assert "<OpenDRIVE>" in out.read_text()
    with pytest.raises(UserError):
        make_town.main(["--out", str(out), "--grid", "nope"])
