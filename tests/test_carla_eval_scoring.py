"""Leaderboard 1.0 scoring: factors, statuses, record / results-file layout."""

from __future__ import annotations

import json

import pytest

from carla_eval import scoring


def test_penalty_factors_multiply_per_infraction():
    infr = {
        "collisions_pedestrian": ["p"],
        "collisions_vehicle": ["v", "v"],
        "collisions_layout": ["s"],
        "red_light": ["r"],
        "stop_infraction": ["st"],
        "route_dev": ["d"],
        "vehicle_blocked": ["b"],
        "route_timeout": ["Route timeout."],
    }
    assert scoring.route_penalty(infr) == pytest.approx(0.50 * 0.60**2 * 0.65 * 0.70 * 0.80)
    assert scoring.route_penalty({}) == 1.0
    assert scoring.route_penalty({"route_dev": ["d"], "vehicle_blocked": ["b"]}) == 1.0  # no factor


def test_offroad_factor_from_message_dict_and_number():
    msg = scoring.msg_outside_lanes(18.0, 12.5)
    assert msg == "Agent went outside its route lanes for about 18.0 meters (12.5% of the completed route)"
    assert scoring.route_penalty({"outside_route_lanes": [msg]}) == pytest.approx(1 - 0.125)
    assert scoring.route_penalty({"outside_route_lanes": [{"percentage": 30.0}, 10.0]}) == pytest.approx(
        0.7 * 0.9
    )
    with pytest.raises(ValueError):
        scoring.route_penalty({"outside_route_lanes": ["no percentage here"]})
    with pytest.raises(ValueError, match="unknown infraction"):
        scoring.route_penalty({"collision_vehicle": ["typo"]})


def test_statuses_follow_the_leaderboard():
    assert scoring.route_status(True, {"vehicle_blocked": ["b"]}) == "Completed"
    assert scoring.route_status(False, {}) == "Failed"
    assert scoring.route_status(False, {"vehicle_blocked": ["b"]}) == "Failed - Agent got blocked"
    assert scoring.route_status(False, {"route_dev": ["d"]}) == "Failed - Agent deviated from the route"
    assert scoring.route_status(False, {"route_timeout": ["t"]}) == "Failed - Agent timed out"
    # later criteria overwrite earlier reasons, as in statistics_manager.compute_route_statistics
    assert (
        scoring.route_status(False, {"route_timeout": ["t"], "vehicle_blocked": ["b"]})
        == "Failed - Agent got blocked"
    )
    assert scoring.route_status(False, {}, scoring.REASON_SIMULATION_CRASHED) == "Failed - Simulation crashed"
    assert scoring.is_simulation_crash("Failed - Simulation crashed")
    assert not scoring.is_simulation_crash("Failed - Agent crashed")


def test_route_record_layout_and_scores():
    rec = scoring.make_route_record(
        16,
        3,
        80.0,
        {
            "collisions_vehicle": [scoring.msg_collision("vehicle.audi", 7, 1, 2, 0)],
            "outside_route_lanes": [{"distance": 5.0, "percentage": 10.0}],
            "vehicle_blocked": [scoring.msg_blocked(1.23456, 2, 3)],
        },
        route_length=1500.0,
        duration_game=90.0,
    )
    assert set(rec) == {"route_id", "index", "status", "infractions", "scores", "meta"}
    assert rec["route_id"] == "RouteScenario_16" and rec["index"] == 3
    assert list(rec["infractions"]) == list(scoring.INFRACTION_KEYS)
    assert rec["scores"]["score_penalty"] == pytest.approx(0.6 * 0.9)
    assert rec["scores"]["score_composed"] == pytest.approx(80.0 * 0.6 * 0.9)
    assert rec["scores"]["score_route"] == 80.0
    assert rec["status"] == "Failed - Agent got blocked"
    assert rec["meta"] == {"duration_system": -1.0, "duration_game": 90.0, "route_length": 1500.0}
    assert rec["infractions"]["vehicle_blocked"] == ["Agent got blocked at (x=1.235, y=2.0, z=3.0)"]
    assert "(10.0% of the completed route)" in rec["infractions"]["outside_route_lanes"][0]
    # "Completed" needs the route-completed event (target_reached), not RC 100 (the reference file's slot 11)
    assert scoring.make_route_record(0, 0, 100.0)["status"] == "Failed"
    assert scoring.make_route_record(0, 0, 100.0, target_reached=True)["status"] == "Completed"
    with pytest.raises(ValueError):
        scoring.make_route_record(0, 0, 101.0)


def test_results_file_layout_global_record_and_entry_status():
    recs = [
        scoring.make_route_record(0, 0, 100.0, route_length=1000.0, target_reached=True),
        scoring.make_route_record(1, 1, 50.0, {"red_light": ["r"]}, route_length=2000.0),
    ]
    data = scoring.make_results_file(recs, [2, 2], sensors=["sensor.camera.rgb", "sensor.other.gnss"])
    json.dumps(data)  # serialisable
    assert set(data) == {"_checkpoint", "eligible", "entry_status", "labels", "sensors", "values"}
    assert set(data["_checkpoint"]) == {"global_record", "progress", "records"}
    assert data["sensors"] == ["carla_camera", "carla_gnss"]
    assert data["entry_status"] == "Finished" and data["eligible"] is True
    g = data["_checkpoint"]["global_record"]
    assert g["scores"]["score_composed"] == pytest.approx((100 + 50 * 0.7) / 2)
    assert g["scores"]["score_penalty"] == pytest.approx((1 + 0.7) / 2)
    # the leaderboard's own per-km figure: sum over routes of count / km driven on that route
    assert g["infractions"]["red_light"] == pytest.approx(1 / (0.5 * 2.0))
    assert g["meta"]["exceptions"] == [["RouteScenario_1", 1, "Failed"]]
    assert len(data["values"]) == len(data["labels"]) == 12
    partial = scoring.make_results_file(recs[:1], [1, 2], source="offline_world", label="offline world")
    assert partial["entry_status"] == "Finished with missing data" and partial["eligible"] is False
    assert partial["meta"] == {"source": "offline_world", "label": "offline world"}
    crashed = scoring.make_route_record(2, 0, 0.0, failure=scoring.REASON_AGENT_CRASHED)
    assert scoring.make_results_file([crashed])["entry_status"] == "Finished with agent errors"


def test_global_means_and_infractions_per_km():
    recs = [
        scoring.make_route_record(0, 0, 100.0, {"collisions_layout": ["s"]}, route_length=1000.0),
        scoring.make_route_record(1, 1, 50.0, {"red_light": ["r", "r"]}, route_length=2000.0),
    ]
    m = scoring.global_means(recs, total=4)  # two slots missing count as 0
    assert m["driving_score"] == pytest.approx((100 * 0.65 + 50 * 0.49) / 4)
    assert m["route_completion"] == pytest.approx(150 / 4)
    per_km, km = scoring.infractions_per_km(recs)
    assert km == pytest.approx(1.0 + 1.0)
    assert per_km["red_light"] == pytest.approx(2 / 2.0) and per_km["collisions_layout"] == pytest.approx(0.5)
    assert scoring.infractions_per_km([])[0]["red_light"] is None
    with pytest.raises(ValueError):
        scoring.global_means(recs, total=1)


def test_global_record_rules_per_tree():
    recs = [
        scoring.make_route_record(0, 0, 50.0, {"red_light": ["r"]}, route_length=2000.0, duration_system=3.0,
                                  duration_game=4.0),
        # RC 0 with an infraction: stable floors its km at 1 m (adds 1000 / km), leaderboard-1.0 skips it
        scoring.make_route_record(1, 1, 0.0, {"collisions_vehicle": ["v"]}, route_length=500.0,
                                  duration_system=1.0, duration_game=2.0),
    ]
    st = scoring.leaderboard_global_record(recs, 3, "stable")
    lb = scoring.leaderboard_global_record(recs, 3, "leaderboard-1.0")
    assert st["infractions"]["red_light"] == lb["infractions"]["red_light"] == pytest.approx(1.0)
    assert st["infractions"]["collisions_vehicle"] == pytest.approx(1000.0)
    assert lb["infractions"]["collisions_vehicle"] == 0.0
    assert set(st["meta"]) == {"exceptions"}
    assert lb["meta"]["total_length"] == 2500.0 and lb["meta"]["duration_system"] == 4.0
    assert lb["meta"]["duration_game"] == 6.0
    # sample std dev over the records present around the mean over all 3 slots (the missing one is not
    # in the sum, as in compute_global_statistics)
    mean = 50.0 * 0.7 / 3
    want = ((50.0 * 0.7 - mean) ** 2 + (0.0 - mean) ** 2) / 2
    assert st["scores_std_dev"]["score_composed"] == pytest.approx(want ** 0.5)
    assert scoring.leaderboard_global_record(recs[:1], 1)["scores_std_dev"]["score_route"] == "NaN"
    assert scoring.detect_tree(lb) == "leaderboard-1.0" and scoring.detect_tree(st) == "stable"
    assert scoring.detect_tree({}) is None
    with pytest.raises(ValueError, match="unknown leaderboard tree"):
        scoring.leaderboard_global_record(recs, 3, "master")


def test_give_up_record_is_the_one_with_zeros():
    rec = scoring.give_up_record("RouteScenario_3", 2, 812.5, 3, duration_system=40.0, duration_game=12.0)
    assert rec["scores"] == {"score_composed": 0.0, "score_penalty": 0.0, "score_route": 0.0}
    assert rec["status"] == "Failed - Simulation crashed"
    assert rec["meta"]["route_length"] == 812.5 and rec["meta"]["duration_system"] == 40.0
    assert rec["meta"]["crashes"] == 3
    for bad in ({"route_length": 0.0}, {"duration_system": -1.0}, {"duration_game": -1.0}):
        args = {"route_length": 812.5, "duration_system": 40.0, "duration_game": 12.0, **bad}
        with pytest.raises(ValueError):
            scoring.give_up_record("RouteScenario_3", 2, crashes=3, **args)


def test_completed_is_compared_by_value_not_identity():
    # after a --resume the real code's `status is not 'Completed'` sees a string read back from JSON (not
    # the interned literal) and lists the Completed record as an exception; here it is compared by value
    rec = scoring.make_route_record(0, 0, 100.0, target_reached=True)
    rec = json.loads(json.dumps(rec))
    rec["status"] = "".join(["Comp", "leted"])  # equal, but a distinct object
    g = scoring.leaderboard_global_record([rec], 1)
    assert g["status"] == "Completed" and "exceptions" not in g["meta"]


def test_results_file_reader(tmp_path):
    """The one reader of results files: round-trips what make_results_file writes; empty / absent files
    are None (absent only with missing_ok); truncated JSON and foreign JSON are UserErrors naming the file."""
    from vlmad.errors import UserError

    data = scoring.make_results_file([scoring.make_route_record(3, 0, 50.0, route_length=100.0)], [1, 2])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert scoring.read_results_file(path) == data
    assert scoring.read_results_file(path)["_checkpoint"]["records"][0]["route_id"] == "RouteScenario_3"
    (tmp_path / "empty.json").write_text("  \n")
    assert scoring.read_results_file(tmp_path / "empty.json") is None
    assert scoring.read_results_file(tmp_path / "absent.json", missing_ok=True) is None
    with pytest.raises(UserError, match="does not exist"):
        scoring.read_results_file(tmp_path / "absent.json")
    (tmp_path / "cut.json").write_text(json.dumps(data)[:40])
    with pytest.raises(UserError, match="cut.json is not valid JSON"):
        scoring.read_results_file(tmp_path / "cut.json")
    (tmp_path / "other.json").write_text('{"_checkpoint": {"progress": [0, 1]}}')
    with pytest.raises(UserError, match="no _checkpoint.records"):
        scoring.read_results_file(tmp_path / "other.json")
