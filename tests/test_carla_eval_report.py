"""Report on hand-made leaderboard results (shards, repetitions, partial, duplicated, crashed, missing) and on
results files written by the real leaderboard's StatisticsManager (../shared/reference/leaderboard)."""

from __future__ import annotations

import json

import pytest

from carla_eval import report, scoring
from routes.parse import parse_routes, write_routes
from vlmad.errors import UserError
from vlmad.io import atomic_write_json


def _file(path, records, progress=None, sensors=("sensor.camera.rgb",) * 6, **kw):
    atomic_write_json(path, scoring.make_results_file(records, progress, sensors=sensors, **kw))
    return path


def _rec(route, index, rc, infr=None, length=1000.0, failure=""):
    # the stand-in for the route-completed event: full RC without a failure
    return scoring.make_route_record(route, index, rc, infr or {}, route_length=length, failure=failure,
                                     target_reached=rc >= 100.0 and not failure)


@pytest.fixture()
def four_routes(tmp_path, shared_reference):
    return write_routes(
        parse_routes(shared_reference / "routes_town05_short.xml")[:4], tmp_path / "routes.xml"
    )


def test_shards_and_repetitions_merge(tmp_path, four_routes):
    R = 2
    # shard A: routes 0, 1 (indices route_pos * R + rep); shard B: routes 2, 3
    a = [
        _rec(0, 0, 100.0),
        _rec(0, 1, 80.0, {"collisions_vehicle": ["v"]}),
        _rec(1, 2, 50.0, {"red_light": ["r"], "outside_route_lanes": [{"percentage": 10.0}]}, length=2000.0),
        _rec(1, 3, 100.0),
    ]
    b = [
        _rec(2, 0, 100.0, {"collisions_pedestrian": ["p"]}),
        _rec(2, 1, 100.0),
        _rec(3, 2, 30.0, {"vehicle_blocked": ["b"]}),
        _rec(3, 3, 100.0, {"stop_infraction": ["s"]}),
    ]
    fa, fb = _file(tmp_path / "a.json", a), _file(tmp_path / "b.json", b)
    rep = report.build_report([fa, fb], four_routes, repetitions=R)
    ds = [100, 80 * 0.6, 50 * 0.7 * 0.9, 100, 100 * 0.5, 100, 30, 100 * 0.8]
    pen = [1, 0.6, 0.7 * 0.9, 1, 0.5, 1, 1, 0.8]
    rc = [100, 80, 50, 100, 100, 100, 30, 100]
    assert rep["driving_score"] == pytest.approx(sum(ds) / 8)
    assert rep["infraction_penalty"] == pytest.approx(sum(pen) / 8)
    assert rep["route_completion"] == pytest.approx(sum(rc) / 8)
    assert rep["num_routes_expected"] == rep["num_routes_found"] == 8
    assert [(r["route_id"], r["repetition"]) for r in rep["routes"]] == [
        (f"RouteScenario_{i}", k) for i in range(4) for k in range(2)
    ]
    km = (1000 * (1 + 0.8) + 2000 * 0.5 + 1000 * 1 + 1000 * (1 + 1) + 1000 * (0.3 + 1)) / 1000
    assert rep["km_driven"] == pytest.approx(km)
    assert rep["infractions_per_km"]["total"] == pytest.approx(6 / km)  # six infractions in all
    assert rep["infractions_per_km"]["red_light"] == pytest.approx(1 / km)
    assert [(f["route_id"], f["repetition"], f["status"]) for f in rep["failed_routes"]] == [
        ("RouteScenario_0", 1, "Failed"),
        ("RouteScenario_1", 0, "Failed"),
        ("RouteScenario_3", 0, "Failed - Agent got blocked"),
    ]
    assert rep["missing_routes"] == [] and rep["duplicates"] == []


def test_missing_partial_and_crashed(tmp_path, four_routes):
    recs = [_rec(0, 0, 100.0), _rec(1, 1, 40.0, failure=scoring.REASON_SIMULATION_CRASHED)]
    f = _file(tmp_path / "partial.json", recs, progress=[2, 4])
    rep = report.build_report([f], four_routes)
    assert rep["num_routes_expected"] == 4 and rep["num_routes_found"] == 2
    assert rep["missing_routes"] == [
        {"route_id": "RouteScenario_2", "repetition": 0},
        {"route_id": "RouteScenario_3", "repetition": 0},
    ]
    assert rep["crashed_routes"] == [
        {"route_id": "RouteScenario_1", "repetition": 0, "status": "Failed - Simulation crashed"}
    ]
    # the crash keeps what was measured up to it (RC 40), as the leaderboard does
    assert rep["driving_score"] == pytest.approx((100 + 40) / 4)
    assert rep["route_completion"] == pytest.approx((100 + 40) / 4)
    rows = {r["route_id"]: r for r in rep["routes"]}
    assert (
        rows["RouteScenario_1"]["driving_score"] == 40.0
        and rows["RouteScenario_3"]["status"] == "Missing (no record)"
    )
    assert "kept as measured up to the crash" in report.render_markdown(rep)
    # without --routes only the routes seen are expected, and the progress totals raise a warning
    rep2 = report.build_report([f], None)
    assert rep2["num_routes_expected"] == 2 and rep2["driving_score"] == pytest.approx(70.0)
    assert any("--routes" in w for w in rep2["warnings"])


def test_duplicates_keep_one_by_rule(tmp_path, four_routes):
    first = _file(tmp_path / "first.json", [_rec(0, 0, 100.0), _rec(1, 1, 20.0)])
    # re-run of the same shard: route 0 crashed this time, route 1 drove better
    second = _file(
        tmp_path / "second.json",
        [_rec(0, 0, 10.0, failure=scoring.REASON_SIMULATION_CRASHED), _rec(1, 1, 60.0)],
    )
    rep = report.build_report([first, second], None)
    rows = {r["route_id"]: r for r in rep["routes"]}
    assert rows["RouteScenario_0"]["driving_score"] == 100.0  # a finished record beats a crashed one
    assert rows["RouteScenario_1"]["driving_score"] == 60.0  # same kind: the file given last wins
    assert len(rep["duplicates"]) == 2 and rep["num_routes_found"] == 2
    assert rep["crashed_routes"] == []
    rep_swapped = report.build_report([second, first], None)
    assert {r["route_id"]: r["driving_score"] for r in rep_swapped["routes"]} == {
        "RouteScenario_0": 100.0,
        "RouteScenario_1": 20.0,
    }


def test_validation_errors(tmp_path, four_routes):
    a = _file(tmp_path / "a.json", [_rec(0, 0, 100.0)])
    b = _file(tmp_path / "b.json", [_rec(1, 0, 100.0)], sensors=("sensor.camera.rgb",) * 4)
    with pytest.raises(UserError, match="sensor set-up"):
        report.build_report([a, b], None)
    off = _file(tmp_path / "off.json", [_rec(1, 0, 100.0)], source="offline_world", label="offline world v1")
    with pytest.raises(UserError, match="different sources"):
        report.build_report([a, off], None)
    stray = _file(tmp_path / "stray.json", [_rec(99, 0, 100.0)])
    with pytest.raises(UserError, match="not in the route file"):
        report.build_report([stray], four_routes)
    bad = tmp_path / "bad.json"
    bad.write_text('{"_checkpoint": {"records": [')
    with pytest.raises(UserError, match="not valid JSON"):
        report.build_report([bad], None)
    nan = tmp_path / "nan.json"
    data = scoring.make_results_file([_rec(0, 0, 100.0)])
    data["_checkpoint"]["records"][0]["scores"]["score_route"] = float("nan")
    nan.write_text(json.dumps(data))
    with pytest.raises(UserError, match="not finite"):
        report.build_report([nan], None)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    rep = report.build_report([empty, a], four_routes)
    assert rep["num_routes_found"] == 1 and any("empty" in w for w in rep["warnings"])


def test_offline_world_results_are_labelled(tmp_path, four_routes):
    off = _file(
        tmp_path / "off.json",
        [_rec(i, i, 100.0) for i in range(4)],
        source="offline_world",
        label="offline world (no CARLA)",
    )
    rep = report.build_report([off], four_routes, label="vlmad")
    assert rep["source"] == "offline_world" and rep["is_carla"] is False
    md = report.render_markdown(rep)
    assert "NOT CARLA numbers" in md and "offline world (no CARLA)" in md


def test_cli_writes_json_markdown_plots_and_compare(tmp_path, shared_reference):
    routes = shared_reference / "routes_town05_long.xml"
    ids = [r.id for r in parse_routes(routes)]
    f = _file(tmp_path / "r.json", [_rec(int(i), k, 100.0 if k % 2 else 50.0) for k, i in enumerate(ids)])
    out_json, out_md = tmp_path / "rep.json", tmp_path / "rep.md"
    assert (
        report.main(
            [
                str(f),
                "--routes",
                str(routes),
                "--json",
                str(out_json),
                "--markdown",
                str(out_md),
                "--plots",
                str(tmp_path / "plots"),
                "--label",
                "ckpt-a",
            ]
        )
        == 0
    )
    rep = json.loads(out_json.read_text())
    for key in (
        "driving_score",
        "route_completion",
        "infraction_penalty",
        "num_routes_expected",
        "num_routes_found",
        "missing_routes",
        "failed_routes",
        "infractions_per_km",
        "routes",
    ):
        assert key in rep
    assert set(rep["routes"][0]) >= {
        "route_id",
        "repetition",
        "driving_score",
        "route_completion",
        "infraction_penalty",
        "status",
    }
    assert rep["benchmark"] == "long" and rep["driving_score"] == pytest.approx(75.0)
    assert [p["driving_score"] for p in rep["paper_table2"]] == [30.31, 35.25]
    md = out_md.read_text()
    assert "VAD-Base + VLM-AD (paper)" in md and "35.25" in md and "per km" in md
    assert (tmp_path / "plots" / "per_route_ds.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "infractions.png").stat().st_size > 1000
    # a second checkpoint from the offline world, compared side by side
    off = _file(
        tmp_path / "off.json", [_rec(int(i), k, 100.0) for k, i in enumerate(ids)], source="offline_world"
    )
    report.main(
        [
            str(off),
            "--routes",
            str(routes),
            "--json",
            str(tmp_path / "off_rep.json"),
            "--markdown",
            str(tmp_path / "off_rep.md"),
            "--label",
            "ckpt-b",
        ]
    )
    assert (
        report.main(
            [
                "compare",
                str(out_json),
                str(tmp_path / "off_rep.json"),
                "--markdown",
                str(tmp_path / "cmp.md"),
                "--json",
                str(tmp_path / "cmp.json"),
                "--plots",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["name"] for r in cmp["rows"]] == ["ckpt-a", "ckpt-b"]
    assert [p["name"] for p in cmp["paper_table2"]] == ["VAD-Base (paper)", "VAD-Base + VLM-AD (paper)"]
    assert "not CARLA" in (tmp_path / "cmp.md").read_text()
    with pytest.raises(UserError, match="not a report"):
        report.main(["compare", str(f), "--markdown", str(tmp_path / "x.md")])


# ---- the real leaderboard's results files --------------------------------------------------------------

REF_FILES = {  # file -> the tree whose StatisticsManager wrote it (../shared/reference/leaderboard/README.md)
    "lb-stable.results.json": "stable",
    "lb-leaderboard-1.0.results.json": "leaderboard-1.0",
    "short_lb-stable_12.results.json": "stable",
}


def _same(got, want, where=""):
    """Equal structure; numbers to 1e-6 (relative above 1)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(set(got) ^ set(want)))
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, (int, float)) and not isinstance(want, bool):
        ok = isinstance(got, (int, float)) and abs(got - want) <= 1e-6 * max(1.0, abs(want))
        assert ok, (where, got, want)
    else:
        assert got == want, (where, got, want)


@pytest.fixture(scope="module")
def lb_reference(shared_reference):
    path = shared_reference / "leaderboard"
    if not all((path / f).is_file() for f in REF_FILES):
        pytest.skip("../shared/reference/leaderboard results files are not present")
    return path


@pytest.mark.parametrize("name", sorted(REF_FILES))
def test_report_reproduces_the_real_global_record(lb_reference, name):
    path = lb_reference / name
    real = json.loads(path.read_text())["_checkpoint"]["global_record"]
    rep = report.build_report([path])  # auto: the tree is told by the file itself
    assert rep["leaderboard_tree"] == REF_FILES[name] and rep["leaderboard_tree_chosen"] == "detected"
    _same(rep["global_record"], real)
    assert rep["driving_score"] == pytest.approx(real["scores"]["score_composed"], abs=1e-6)
    assert rep["route_completion"] == pytest.approx(real["scores"]["score_route"], abs=1e-6)
    assert rep["infraction_penalty"] == pytest.approx(real["scores"]["score_penalty"], abs=1e-6)
    _same(rep["scores_std_dev"], real["scores_std_dev"])
    _same(rep["leaderboard_infractions_per_km"], real["infractions"])
    assert rep["status"] == real["status"] and rep["exceptions"] == real["meta"]["exceptions"]
    # given explicitly, the same tree gives the same record
    _same(report.build_report([path], tree=REF_FILES[name])["global_record"], real)
    # all 12 slots found; both crashed slots listed, neither missing
    assert rep["num_routes_expected"] == rep["num_routes_found"] == 12 and rep["missing_routes"] == []
    assert [c["status"] for c in rep["crashed_routes"]] == ["Failed - Simulation crashed"] * 2
    # the Long files list routes 16 and 17 twice: two slots each, as the evaluator ran them
    twice = sorted(r["route_id"] for r in rep["routes"] if r.get("occurrence") == 1)
    assert twice == (["RouteScenario_16", "RouteScenario_17"] if name.startswith("lb-") else [])


def test_crashed_routes_keep_their_measured_values(lb_reference):
    rep = report.build_report([lb_reference / "lb-stable.results.json"])
    crashed = {c["route_id"] for c in rep["crashed_routes"]}
    assert crashed == {"RouteScenario_21", "RouteScenario_23"}
    rows = {r["route_id"]: r for r in rep["routes"] if r["route_id"] in crashed}
    assert (rows["RouteScenario_21"]["route_completion"], rows["RouteScenario_21"]["infraction_penalty"]) == (
        10.0, 0.6)  # mid-route crash: what was measured
    assert (rows["RouteScenario_23"]["route_completion"], rows["RouteScenario_23"]["infraction_penalty"]) == (
        0.0, 1.0)  # crash while loading
    assert (round(rep["driving_score"], 3), round(rep["route_completion"], 3),
            round(rep["infraction_penalty"], 3)) == (20.254, 31.442, 0.753)


def test_the_two_trees_differ_only_in_per_km_and_meta(lb_reference):
    path = lb_reference / "lb-stable.results.json"
    stable = report.build_report([path], tree="stable")
    lb10 = report.build_report([path], tree="leaderboard-1.0")
    # RouteScenario_25: RC 0 with a vehicle collision: stable floors its km at 1 m, 1.0 skips it
    per_km = [r["leaderboard_infractions_per_km"]["collisions_vehicle"] for r in (stable, lb10)]
    assert per_km == pytest.approx([1020.7727386, 20.7727386], abs=1e-6)
    assert stable["driving_score"] == lb10["driving_score"]
    assert "total_length" in lb10["global_record"]["meta"]
    assert "total_length" not in stable["global_record"]["meta"]
    assert lb10["global_record"]["meta"]["total_length"] == pytest.approx(14234.24544092994)
    # the project's own figure is named separately: total count / total km
    recs = json.loads(path.read_text())["_checkpoint"]["records"]
    km = sum(r["scores"]["score_route"] / 100 * r["meta"]["route_length"] / 1000 for r in recs)
    n_vehicle = sum(len(r["infractions"]["collisions_vehicle"]) for r in recs)
    assert stable["km_driven"] == pytest.approx(km)
    assert stable["infractions_per_km"]["collisions_vehicle"] == pytest.approx(n_vehicle / km)
    md = report.render_markdown(stable)
    assert "leaderboard per km" in md and "project per km" in md and "8956c4e" in md


def test_files_of_different_trees_need_an_explicit_tree(lb_reference, tmp_path):
    a = lb_reference / "lb-stable.results.json"
    b = lb_reference / "lb-leaderboard-1.0.results.json"
    with pytest.raises(UserError, match="different leaderboard trees"):
        report.build_report([a, b])
    with pytest.raises(UserError, match="--leaderboard-tree"):
        report.build_report([a], tree="master")
    # a file the project wrote (no tree to tell from an empty global record) gets the default tree
    f = _file(tmp_path / "own.json", [_rec(0, 0, 100.0)])
    data = json.loads(f.read_text())
    data["_checkpoint"]["global_record"] = {}
    f.write_text(json.dumps(data))
    assert report.build_report([f])["leaderboard_tree"] == scoring.DEFAULT_TREE == "stable"


def test_cli_tree_switch(lb_reference, tmp_path):
    out = tmp_path / "rep.json"
    report.main([str(lb_reference / "lb-stable.results.json"), "--json", str(out), "--markdown",
                 str(tmp_path / "rep.md"), "--leaderboard-tree", "leaderboard-1.0"])
    rep = json.loads(out.read_text())
    assert rep["leaderboard_tree"] == "leaderboard-1.0" and rep["leaderboard_tree_chosen"] == "given"
    assert rep["leaderboard_infractions_per_km"]["collisions_vehicle"] == pytest.approx(20.7727386, abs=1e-6)
