"""Leaderboard 1.0 scoring and results-file layout: the ONE place that knows them.

Everything that writes or reads CARLA-leaderboard-style results (the launcher, the report, the offline
world) goes through this module, so the penalty factors, infraction names, status strings and JSON keys
exist exactly once. They follow carla-simulator/leaderboard 1.0 (`leaderboard/utils/statistics_manager.py`,
`leaderboard_evaluator.py`, `utils/checkpoint_tools.py`) at the pinned commits `LEADERBOARD_COMMITS` (branch
`stable` 8956c4e, the tree `carla_eval/setup_carla.sh` installs and the project scores like by default, and
branch `leaderboard-1.0`) with scenario_runner `SCENARIO_RUNNER_COMMIT`, and the messages of scenario_runner's
`atomic_criteria.py`:

- per route: infraction penalty = product of a factor per infraction (pedestrian 0.50, vehicle 0.60,
  static/layout 0.65, red light 0.70, stop sign 0.80) times (1 - p/100) per off-road event covering p %
  of the completed route; route deviation, agent blocked and timeout end the route with no factor;
  driving score DS = RC x penalty (RC in 0-100, penalty in 0-1);
- status: "Completed" only with the route-completed event (the target was reached), never merely because
  RC reached 100; else "Failed" or "Failed - <reason>" (reasons below);
- global (`leaderboard_global_record`): arithmetic means over routes x repetitions, missing ones in the
  denominator; sample standard deviations; infractions per km summed per route, where the two trees
  differ (`stable` floors a route's km at 1 m, so an RC-0 route with an infraction adds 1000 / km;
  `leaderboard-1.0` skips RC-0 routes and adds `total_length` / `duration_*` to the global `meta`).

A results file looks like (key names exactly as the leaderboard writes them)::

    {"_checkpoint": {"global_record": {...}, "progress": [next_index, total], "records": [record, ...]},
     "entry_status": "Finished", "eligible": true, "labels": [...], "sensors": ["carla_camera", ...],
     "values": ["12.345", ...], "meta": {"source": "offline_world", "label": "..."}}   # meta: ours only

and a record::

    {"route_id": "RouteScenario_16", "index": 0, "status": "Completed",
     "infractions": {"collisions_pedestrian": [msg, ...], ...nine keys...},
     "scores": {"score_route": 100.0, "score_penalty": 0.6, "score_composed": 60.0},
     "meta": {"duration_system": 812.3, "duration_game": 301.0, "route_length": 1234.5}}

The top-level `meta` block is this project's addition: results that do not come from a CARLA server
(the offline world) carry `meta.source` and `meta.label`, and the report prints them so such numbers are
never mistaken for CARLA numbers. A file without `meta` came from the real leaderboard.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from routes.parse import route_name
from vlmad.errors import UserError

# ---- pinned trees ------------------------------------------------------------------------------------

# The leaderboard 1.0 trees whose scoring this module reproduces; setup_carla.sh installs DEFAULT_TREE.
LEADERBOARD_COMMITS: dict[str, str] = {
    "stable": "8956c4e0c53bfa24e2bd0ccb1a5269ce47770a57",  # Jan 2021, "Added standard deviation ..."
    "leaderboard-1.0": "2165f5e4a53be8e96c501fa39965800489b1a0a5",  # 2023 head, 10 commits after stable
}
SCENARIO_RUNNER_COMMIT = "95366ad"  # branch `leaderboard`, the scenario_runner both trees run with
DEFAULT_TREE = "stable"
TREES: tuple[str, ...] = tuple(LEADERBOARD_COMMITS)


def check_tree(tree: str) -> str:
    """`tree` if it is one of TREES, else ValueError naming the valid ones."""
    if tree not in LEADERBOARD_COMMITS:
        raise ValueError(f"unknown leaderboard tree {tree!r}; valid: {list(TREES)}")
    return tree


def detect_tree(global_record: dict[str, Any] | None) -> str | None:
    """Which tree wrote a results file's `global_record`: `leaderboard-1.0` adds `meta.total_length`,
    `stable` never does; None when the record is empty (nothing to tell from)."""
    if not global_record or "scores" not in global_record:
        return None
    return "leaderboard-1.0" if "total_length" in (global_record.get("meta") or {}) else "stable"


# ---- infraction names, factors, statuses (leaderboard 1.0) ------------------------------------------

# Multiplicative penalty per occurrence.
PENALTY_FACTORS: dict[str, float] = {
    "collisions_pedestrian": 0.50,
    "collisions_vehicle": 0.60,
    "collisions_layout": 0.65,
    "red_light": 0.70,
    "stop_infraction": 0.80,
}
OFFROAD_KEY = "outside_route_lanes"  # factor (1 - percentage / 100) per event
# The nine infraction lists of a record, in the leaderboard's order.
INFRACTION_KEYS: tuple[str, ...] = (
    "collisions_pedestrian", "collisions_vehicle", "collisions_layout", "red_light", "stop_infraction",
    "outside_route_lanes", "route_dev", "route_timeout", "vehicle_blocked",
)
# Infractions that end the route (no factor) and the failure reason the leaderboard then writes. In the
# leaderboard a timeout is checked first and later criteria overwrite the reason, so the last one wins.
ROUTE_ENDING: tuple[tuple[str, str], ...] = (
    ("route_timeout", "Agent timed out"),
    ("route_dev", "Agent deviated from the route"),
    ("vehicle_blocked", "Agent got blocked"),
)
# Human names, as in the leaderboard's `labels` list.
INFRACTION_LABELS: dict[str, str] = {
    "collisions_pedestrian": "Collisions with pedestrians",
    "collisions_vehicle": "Collisions with vehicles",
    "collisions_layout": "Collisions with layout",
    "red_light": "Red lights infractions",
    "stop_infraction": "Stop sign infractions",
    "outside_route_lanes": "Off-road infractions",
    "route_dev": "Route deviations",
    "route_timeout": "Route timeouts",
    "vehicle_blocked": "Agent blocked",
}
LABELS: list[str] = ["Avg. driving score", "Avg. route completion", "Avg. infraction penalty"] + [
    INFRACTION_LABELS[k] for k in INFRACTION_KEYS
]

STATUS_COMPLETED = "Completed"
STATUS_FAILED = "Failed"
# Failure reasons written by leaderboard_evaluator.py as "Failed - <reason>".
REASON_SIMULATION_CRASHED = "Simulation crashed"  # evaluator exits -1; the route is re-run on --resume
REASON_AGENT_CRASHED = "Agent crashed"  # agent raised during the route; evaluator goes on
REASON_AGENT_SETUP = "Agent couldn't be set up"  # agent setup raised; evaluator goes on
REASON_SENSORS_INVALID = "Agent's sensors were invalid"  # entry rejected; evaluator exits -1
# Entry statuses (top-level `entry_status`).
ENTRY_FINISHED = "Finished"
ENTRY_MISSING = "Finished with missing data"
ENTRY_AGENT_ERRORS = "Finished with agent errors"
ENTRY_CRASHED = "Crashed"
ENTRY_REJECTED = "Rejected"

# Sensor type -> icon the leaderboard stores in `sensors` (the report checks the set-up from these).
SENSOR_ICONS: dict[str, str] = {
    "sensor.camera.rgb": "carla_camera",
    "sensor.lidar.ray_cast": "carla_lidar",
    "sensor.other.radar": "carla_radar",
    "sensor.other.gnss": "carla_gnss",
    "sensor.other.imu": "carla_imu",
    "sensor.opendrive_map": "carla_opendrive_map",
    "sensor.speedometer": "carla_speedometer",
}

MSG_ROUTE_TIMEOUT = "Route timeout."
_OFFROAD_RE = re.compile(r"\(([-+0-9.eE]+)% of the completed route\)")


def failed_status(reason: str = "") -> str:
    """"Failed" or "Failed - <reason>" exactly as the leaderboard writes it."""
    return f"{STATUS_FAILED} - {reason}" if reason else STATUS_FAILED


def is_simulation_crash(status: str) -> bool:
    """True for a record the evaluator wrote just before it died on a simulator error."""
    return REASON_SIMULATION_CRASHED in str(status)


# ---- infraction messages (scenario_runner's formats, so files look like the real thing) -------------

def _xyz(x: float, y: float, z: float) -> str:
    return f"(x={round(float(x), 3)}, y={round(float(y), 3)}, z={round(float(z), 3)})"


def msg_collision(type_id: str, actor_id: int, x: float, y: float, z: float) -> str:
    return f"Agent collided against object with type={type_id} and id={actor_id} at {_xyz(x, y, z)}"


def msg_red_light(light_id: int, x: float, y: float, z: float) -> str:
    return f"Agent ran a red light {light_id} at {_xyz(x, y, z)}"


def msg_outside_lanes(distance_m: float, percentage: float) -> str:
    return (f"Agent went outside its route lanes for about {round(float(distance_m), 3)} meters "
            f"({round(float(percentage), 2)}% of the completed route)")


def msg_route_dev(x: float, y: float, z: float) -> str:
    return f"Agent deviated from the route at {_xyz(x, y, z)}"


def msg_blocked(x: float, y: float, z: float) -> str:
    return f"Agent got blocked at {_xyz(x, y, z)}"


# ---- per-route scoring -------------------------------------------------------------------------------

def empty_infractions() -> dict[str, list]:
    """The nine empty infraction lists of a fresh record."""
    return {k: [] for k in INFRACTION_KEYS}


def offroad_percentage(entry: Any) -> float:
    """Percentage of the completed route driven off-road for one `outside_route_lanes` entry.

    Accepts the leaderboard message (the percentage is parsed from "(p% of the completed route)"; the
    leaderboard rounds it to 2 decimals in the message, so a penalty recomputed from a file can differ
    from the stored `score_penalty` in the 4th decimal), a dict with `percentage`, or a number."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        p = float(entry)
    elif isinstance(entry, dict) and "percentage" in entry:
        p = float(entry["percentage"])
    else:
        m = _OFFROAD_RE.search(str(entry))
        if m is None:
            raise ValueError(f"off-road infraction {entry!r} does not state a percentage of the route")
        p = float(m.group(1))
    if not math.isfinite(p) or p < 0:
        raise ValueError(f"off-road percentage {p} is not a finite non-negative number")
    return min(p, 100.0)


def route_penalty(infractions: dict[str, list]) -> float:
    """Infraction penalty (0-1) of one route: product of the factors of every listed infraction.

    Unknown keys are an error (a misspelt key would otherwise silently cost nothing); route-ending
    infractions (deviation, blocked, timeout) add no factor."""
    unknown = sorted(set(infractions) - set(INFRACTION_KEYS))
    if unknown:
        raise ValueError(f"unknown infraction type(s) {unknown}; valid: {list(INFRACTION_KEYS)}")
    penalty = 1.0
    for key, factor in PENALTY_FACTORS.items():
        penalty *= factor ** len(infractions.get(key, ()))
    for entry in infractions.get(OFFROAD_KEY, ()):
        penalty *= 1.0 - offroad_percentage(entry) / 100.0
    return penalty


def driving_score(route_completion: float, penalty: float) -> float:
    """DS = RC x penalty (RC in 0-100), never negative, as `score_composed`."""
    return max(float(route_completion) * float(penalty), 0.0)


def route_status(target_reached: bool, infractions: dict[str, list], failure: str = "") -> str:
    """Status string of a finished route. `failure` is the evaluator's crash message (if any); as in the
    leaderboard, route-ending infractions overwrite it in the order timeout, deviation, blocked."""
    if target_reached:
        return STATUS_COMPLETED
    for key, reason in ROUTE_ENDING:
        if infractions.get(key):
            failure = reason
    return failed_status(failure)


def _as_message(key: str, entry: Any) -> str:
    """Infraction entry as the leaderboard stores it (a message string)."""
    if isinstance(entry, str):
        return entry
    if key == OFFROAD_KEY:
        dist = float(entry.get("distance", 0.0)) if isinstance(entry, dict) else 0.0
        return msg_outside_lanes(dist, offroad_percentage(entry))
    return str(entry)


def make_route_record(route_id: str | int, index: int, route_completion: float,
                      infractions: dict[str, list] | None = None, route_length: float = 0.0,
                      duration_system: float = -1.0, duration_game: float = -1.0,
                      target_reached: bool = False, failure: str = "",
                      extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One leaderboard route record.

    route_id: "RouteScenario_<id>" as the leaderboard names it (an int id is turned into that form).
    index: position in the evaluator's list = route position x repetitions + repetition.
    route_completion: 0-100. route_length: metres of the planned route (`meta.route_length`).
    target_reached: the route-completed event fired (status "Completed"); RC 100 alone is not enough,
    as in the leaderboard. failure: crash reason such as REASON_SIMULATION_CRASHED.
    extra_meta: merged into `meta` (e.g. {"source": "offline_world"}).
    """
    rc = float(route_completion)
    if not math.isfinite(rc) or not 0.0 <= rc <= 100.0:
        raise ValueError(f"route completion {route_completion} is not in [0, 100]")
    raw = {**empty_infractions(), **(infractions or {})}
    penalty = route_penalty(raw)  # from the raw entries: unrounded off-road percentages, as the leaderboard
    infr = {k: [_as_message(k, e) for e in raw[k]] for k in INFRACTION_KEYS}
    if isinstance(route_id, int):
        route_id = route_name(route_id)
    meta = {"duration_system": float(duration_system), "duration_game": float(duration_game),
            "route_length": float(route_length)}
    meta.update(extra_meta or {})
    return {
        "index": int(index),
        "infractions": infr,
        "meta": meta,
        "route_id": str(route_id),
        "scores": {"score_composed": driving_score(rc, penalty), "score_penalty": penalty, "score_route": rc},
        "status": route_status(bool(target_reached), infr, failure),
    }


# ---- global figures ----------------------------------------------------------------------------------

def km_driven(record: dict[str, Any]) -> float:
    """Kilometres driven on one route: RC/100 x route length (m) / 1000."""
    length_m = float(record.get("meta", {}).get("route_length", 0.0))
    return float(record["scores"]["score_route"]) / 100.0 * length_m / 1000.0


def infraction_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Total number of each infraction type over `records`."""
    counts = dict.fromkeys(INFRACTION_KEYS, 0)
    for r in records:
        for k in INFRACTION_KEYS:
            counts[k] += len(r.get("infractions", {}).get(k, ()))
    return counts


def infractions_per_km(records: Sequence[dict[str, Any]]) -> tuple[dict[str, float | None], float]:
    """The PROJECT's per-km figure: per type, total count / total km driven (sum over routes of RC/100 x
    route length). Not the leaderboard's (see `leaderboard_global_record`, which sums count/km per route);
    the report shows both, each named. Returns ({type: per-km or None when nothing was driven}, km)."""
    km = sum(km_driven(r) for r in records)
    counts = infraction_counts(records)
    return {k: (c / km if km > 0 else None) for k, c in counts.items()}, km


def global_means(records: Sequence[dict[str, Any]], total: int) -> dict[str, float]:
    """Mean DS / RC / penalty over `total` route x repetition slots; absent slots count as 0."""
    if total <= 0:
        raise ValueError("the number of expected routes must be positive")
    if len(records) > total:
        raise ValueError(f"{len(records)} records for only {total} expected route x repetition slots")
    return {
        "driving_score": sum(float(r["scores"]["score_composed"]) for r in records) / total,
        "route_completion": sum(float(r["scores"]["score_route"]) for r in records) / total,
        "infraction_penalty": sum(float(r["scores"]["score_penalty"]) for r in records) / total,
    }


def leaderboard_per_km(records: Sequence[dict[str, Any]], tree: str = DEFAULT_TREE) -> dict[str, float]:
    """`global_record.infractions` of `tree`: the sum over routes of count / km driven on that route.

    stable: km floored at 0.001 (1 m), so an RC-0 route with one infraction adds 1000 per km;
    leaderboard-1.0: routes with RC 0 are skipped ("the vehicle hasn't moved")."""
    check_tree(tree)
    out = dict.fromkeys(INFRACTION_KEYS, 0.0)
    for r in records:
        rc = float(r["scores"]["score_route"])
        km = rc / 100 * float(r["meta"].get("route_length", 0.0)) / 1000.0
        if tree == "leaderboard-1.0":
            if rc == 0:
                continue
        else:
            km = max(km, 0.001)
        if km <= 0:  # RC > 0 on a 0 m route: the real code divides by zero here; count nothing instead
            continue
        for k in INFRACTION_KEYS:
            out[k] += len(r["infractions"].get(k, ())) / km
    return out


def leaderboard_global_record(records: Sequence[dict[str, Any]], total: int,
                              tree: str = DEFAULT_TREE) -> dict[str, Any]:
    """`_checkpoint.global_record` as `tree`'s `compute_global_statistics(total)` computes it from `records`
    (in index order): means over `total`, sample std devs (sum over the records present of the squared
    deviation from that mean, / (total - 1); "NaN" when total == 1), per-km as `leaderboard_per_km`,
    status / exceptions, and for leaderboard-1.0 the summed `total_length` / `duration_*` in `meta`.

    One deliberate difference: the real code tests `status is not 'Completed'` (identity), which after a
    `--resume` lists Completed records read back from the file as exceptions and fails the status; here
    the comparison is by value (docs/closed_loop.md)."""
    check_tree(tree)
    keys = ("score_composed", "score_penalty", "score_route")
    scores = dict.fromkeys(keys, 0.0)
    meta: dict[str, Any] = {}
    if tree == "leaderboard-1.0":
        meta = {"duration_game": 0.0, "duration_system": 0.0, "total_length": 0.0}
    status = STATUS_COMPLETED
    for r in records:
        for k in keys:
            scores[k] += float(r["scores"][k])
        if tree == "leaderboard-1.0":
            meta["total_length"] += float(r["meta"].get("route_length", 0.0))
            meta["duration_game"] += float(r["meta"].get("duration_game", 0.0))
            meta["duration_system"] += float(r["meta"].get("duration_system", 0.0))
        if r["status"] != STATUS_COMPLETED:
            status = STATUS_FAILED
            meta.setdefault("exceptions", []).append([r["route_id"], r["index"], r["status"]])
    std: dict[str, Any] = dict.fromkeys(keys, 0.0)
    if records:
        for k in keys:
            scores[k] /= float(total)
        if total == 1:
            std = dict.fromkeys(keys, "NaN")
        else:
            for k in keys:
                sq = sum((float(r["scores"][k]) - scores[k]) ** 2 for r in records)
                std[k] = math.sqrt(sq / (total - 1))
    return {"index": -1, "infractions": leaderboard_per_km(records, tree), "meta": meta, "route_id": -1,
            "scores": scores, "scores_std_dev": std, "status": status}


def give_up_record(route_id: str, index: int, route_length: float, crashes: int,
                   duration_system: float, duration_game: float) -> dict[str, Any]:
    """The launcher's record for a route whose simulation crashed `crashes` (= --max-crashes) times: the ONE
    place that writes zero scores for a crash (the evaluator's own "Simulation crashed" records keep what
    was measured up to the crash). route_length: along the route's keypoints, as the leaderboard's
    `compute_route_length`; durations: what the tries measured (seconds), never the -1 placeholder."""
    if route_length <= 0 or duration_system < 0 or duration_game < 0:
        raise ValueError(f"give-up record for {route_id} needs a positive route length and measured "
                         f"durations, got {route_length}, {duration_system}, {duration_game}")
    rec = make_route_record(route_id, index, 0.0, route_length=route_length, duration_system=duration_system,
                            duration_game=duration_game, failure=REASON_SIMULATION_CRASHED,
                            extra_meta={"crashes": int(crashes), "marked_by": "carla_eval.launcher"})
    rec["scores"]["score_penalty"] = 0.0  # zero DS, RC and penalty: the route counts as lost
    return rec


def entry_status(records: Sequence[dict[str, Any]], progress: Sequence[int], total: int) -> tuple[str, bool]:
    """(`entry_status`, `eligible`) as the leaderboard derives them at the end of a run."""
    if len(records) != total or len(progress) != 2 or progress[0] != progress[1]:
        return ENTRY_MISSING, False
    if any("Agent" in r["status"] for r in records):
        return ENTRY_AGENT_ERRORS, True
    return ENTRY_FINISHED, True


def make_results_file(records: Sequence[dict[str, Any]], progress: Sequence[int] | None = None,
                      sensors: Sequence[str] = (), source: str | None = None, label: str | None = None,
                      meta: dict[str, Any] | None = None, tree: str = DEFAULT_TREE) -> dict[str, Any]:
    """A complete results file (what `--checkpoint` holds after the evaluator finished).

    records: route records (see `make_route_record`), index order. progress: [next_index, total]; default
    [len(records), len(records)]. sensors: sensor *types* ("sensor.camera.rgb") or icons ("carla_camera").
    source/label: required for anything not produced by a CARLA server, e.g. source="offline_world",
    label="offline world (no CARLA)"; written under the top-level `meta` that the report displays.
    tree: whose `global_record` rules to apply (TREES).
    """
    records = sorted((dict(r) for r in records), key=lambda r: int(r["index"]))
    if progress is None:
        progress = [len(records), len(records)]
    progress = [int(progress[0]), int(progress[1])]
    total = progress[1]
    glob = leaderboard_global_record(records, max(total, 1), tree)
    values = [f"{glob['scores'][k]:.3f}" for k in ("score_composed", "score_route", "score_penalty")]
    values += [f"{glob['infractions'][k]:.3f}" for k in INFRACTION_KEYS]
    status, eligible = entry_status(records, progress, total)
    data: dict[str, Any] = {
        "_checkpoint": {"global_record": glob, "progress": progress, "records": records},
        "eligible": eligible,
        "entry_status": status,
        "labels": list(LABELS),
        "sensors": [SENSOR_ICONS.get(s, s) for s in sensors],
        "values": values,
    }
    extra = dict(meta or {})
    if source is not None:
        extra["source"] = source
    if label is not None:
        extra["label"] = label
    if extra:
        data["meta"] = extra
    return data


def read_results_file(path: str | Path, missing_ok: bool = False) -> dict[str, Any] | None:
    """Read a results file (the layout above): the one parser of the JSON the evaluator, the launcher and
    the offline world write.

    None when the file is empty (an evaluator that started but recorded nothing), or absent with
    `missing_ok`. A `UserError` naming the file when it is absent (without `missing_ok`), not JSON (the
    evaluator writes it in place, so a crash can truncate it) or without a `_checkpoint.records` list.
    Records are returned as written; `carla_eval.report.load_results` validates their fields.
    """
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise UserError(f"results file {path} does not exist")
    text = path.read_text()
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the evaluator writes it in place, so a crash can "
                        f"truncate it (the launcher keeps a results.json.bak copy beside it)") from None
    recs = data.get("_checkpoint", {}).get("records") if isinstance(data, dict) else None
    if not isinstance(recs, list):
        raise UserError(f"{path} has no _checkpoint.records list: not a leaderboard results file")
    return data
