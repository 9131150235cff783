"""Merge leaderboard results (shards, repetitions), validate them, and report DS / RC / penalty.

    python -m carla_eval.report RESULTS.json [MORE.json ...] [--routes ROUTES.xml] [--repetitions R]
        --json OUT.json --markdown OUT.md [--plots DIR] [--label NAME] [--benchmark short|long]
        [--leaderboard-tree auto|stable|leaderboard-1.0]
    python -m carla_eval.report compare A/report.json B/report.json [...] --markdown OUT.md [--json OUT.json]
        [--plots DIR]

Rules (leaderboard semantics, numbers from `carla_eval.scoring`):
- one slot per route x repetition; a record's repetition is `index % R` (the evaluator numbers its
  routes route_position x R + repetition, in every shard file); without --routes, a route listed twice in
  one evaluator's route file (two records of it at different indices of one file) fills two slots;
- the headline DS, RC (0-100) and infraction penalty (0-1), their standard deviations, the per-km
  figures, status and exceptions are the leaderboard's `global_record`, computed by
  `scoring.leaderboard_global_record` over the expected slots (a slot with no record counts as 0 in the
  means) with the rules of one leaderboard tree: `--leaderboard-tree` (default `auto`: the tree that
  wrote the files, told by their `global_record`, else `stable`, the tree setup_carla.sh installs);
- a "Failed - Simulation crashed" record keeps what the evaluator measured up to the crash (as in the
  leaderboard); it is listed in `failed_routes` and `crashed_routes`, never in `missing_routes`. Only the
  launcher's give-up record (a route that crashed --max-crashes times) holds zeros;
- duplicates (the same slot in several records): keep one, and list it in `duplicates`: a non-crashed
  record beats a crashed one; otherwise the file given LAST wins (list a re-run after the original), and
  within one file the higher index;
- all files of one report must have the same sensor set-up (`sensors`) and the same source: results of
  the offline world carry `meta.source` / `meta.label` and are shown as such, never as CARLA numbers;
- two per-km figures, each named: `leaderboard_infractions_per_km` (the tree's global_record: sum over
  routes of count / km of that route) and `infractions_per_km` (this project's: total count / total km
  driven, km driven = sum over routes of RC/100 x route length `meta.route_length`).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from carla_eval import scoring
from routes.fetch import BENCHMARKS
from routes.parse import parse_routes, route_id_of, route_name
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_bytes, atomic_write_json, atomic_write_text

# Table 2 of the paper (Town05, CARLA 0.9.10.1): (row name, DS, RC).
PAPER_TABLE2: dict[str, list[tuple[str, float, float]]] = {
    "short": [("VAD-Base (paper)", 64.29, 87.26), ("VAD-Base + VLM-AD (paper)", 67.78, 88.56)],
    "long": [("VAD-Base (paper)", 30.31, 75.20), ("VAD-Base + VLM-AD (paper)", 35.25, 84.14)],
}
CARLA_SOURCE = "carla"
PER_KM_RULE = ("project figure: infractions per km = total number of infractions / total km driven; km "
               "driven = sum over routes of RC/100 x route length (meta.route_length)")
LB_PER_KM_RULE = {
    "stable": "leaderboard (stable): sum over routes of count / (RC/100 x route km), km floored at 1 m",
    "leaderboard-1.0": "leaderboard (leaderboard-1.0): sum over routes of count / (RC/100 x route km), "
                       "routes with RC 0 skipped",
}
TREE_CHOICES = ("auto", *scoring.TREES)
STATUS_MISSING = "Missing (no record)"


def _warn(warnings: list[str], msg: str) -> None:
    warnings.append(msg)
    print(f"warning: {msg}", file=sys.stderr)


def _finite(x: Any, where: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {x!r} is not a number") from None
    if not math.isfinite(v):
        raise UserError(f"{where}: {x!r} is not finite")
    return v


def load_results(path: str | Path, warnings: list[str]) -> dict[str, Any] | None:
    """A results file, validated; None (with a warning) for an empty file (a run that wrote nothing)."""
    path = Path(path)
    data = scoring.read_results_file(path)
    if data is None:
        _warn(warnings, f"{path} is empty (the evaluator started but recorded no route)")
        return None
    for i, r in enumerate(data["_checkpoint"]["records"]):
        where = f"{path}: record #{i}"
        if not isinstance(r, dict):
            raise UserError(f"{where} is not an object")
        for key in ("route_id", "index", "status", "scores"):
            if key not in r:
                raise UserError(f"{where} has no {key!r}")
        for key in ("score_route", "score_penalty", "score_composed"):
            r["scores"][key] = _finite(r["scores"].get(key), f"{where} scores.{key}")
        r["index"] = int(_finite(r["index"], f"{where} index"))
        infr = r.setdefault("infractions", {})
        if not isinstance(infr, dict) or any(not isinstance(v, list) for v in infr.values()):
            raise UserError(f"{where}: infractions must map types to lists")
        meta = r.setdefault("meta", {})
        meta["route_length"] = _finite(meta.get("route_length", 0.0), f"{where} meta.route_length")
    return data


def _route_sort_key(route_id: str) -> tuple[int, Any]:
    n = route_id_of(route_id)
    return (0, int(n)) if n.isdigit() else (1, n)


def _infer_benchmark(ids: list[str]) -> str | None:
    for name, (_, _, expected) in BENCHMARKS.items():
        if sorted(ids, key=lambda s: int(s) if s.isdigit() else -1) == expected:
            return name
    return None


def _pick_tree(tree: str, loaded: list[tuple[Path, dict[str, Any]]]) -> tuple[str, str]:
    """(tree, how it was chosen: "given" / "detected" / "default")."""
    if tree != "auto":
        if tree not in scoring.TREES:
            raise UserError(f"--leaderboard-tree must be one of {list(TREE_CHOICES)}, got {tree!r}")
        return tree, "given"
    found = {p: scoring.detect_tree(d["_checkpoint"].get("global_record")) for p, d in loaded}
    trees = {t for t in found.values() if t is not None}
    if len(trees) > 1:
        desc = "; ".join(f"{p}: {t}" for p, t in found.items() if t)
        raise UserError(f"the results files were written by different leaderboard trees ({desc}); pass "
                        f"--leaderboard-tree to score them with one tree's rules")
    return (trees.pop(), "detected") if trees else (scoring.DEFAULT_TREE, "default")


def build_report(files: list[str | Path], routes_file: str | Path | None = None, repetitions: int = 1,
                 label: str = "", benchmark: str | None = None, tree: str = "auto") -> dict[str, Any]:
    """Merge and validate results files into the report dict (see the module docstring for the rules)."""
    if repetitions < 1:
        raise UserError("--repetitions must be >= 1")
    if not files:
        raise UserError("no results file given")
    warnings: list[str] = []
    loaded: list[tuple[Path, dict[str, Any]]] = []
    for f in files:
        data = load_results(f, warnings)
        if data is not None:
            loaded.append((Path(f), data))
    tree, tree_how = _pick_tree(tree, loaded)

    # one source and one sensor set-up per report
    sources = {(d.get("meta") or {}).get("source", CARLA_SOURCE) for _, d in loaded}
    if len(sources) > 1:
        raise UserError(f"results from different sources {sorted(sources)} cannot be merged (offline-world "
                        f"numbers are never mixed with CARLA numbers); report them separately and compare")
    source = sources.pop() if sources else CARLA_SOURCE
    source_labels = sorted({str((d.get("meta") or {}).get("label", "")) for _, d in loaded} - {""})
    setups = {tuple(d.get("sensors") or ()): p for p, d in loaded if d.get("sensors")}
    if len(setups) > 1:
        desc = "; ".join(f"{p}: {list(s)}" for s, p in setups.items())
        raise UserError(f"inconsistent sensor set-up between results files ({desc}); every shard and "
                        f"repetition must come from the same agent configuration")
    sensors = list(next(iter(setups))) if setups else []

    # candidates per slot (route_id, repetition, occurrence); occurrence > 0 only for a route listed
    # several times in one evaluator's route file (and only without --routes, whose ids are unique)
    Slot = tuple[str, int, int]
    cands: dict[Slot, list[tuple[tuple[int, int, int], Path, dict[str, Any]]]] = {}
    first_seen: list[Slot] = []
    for order, (path, data) in enumerate(loaded):
        seen_here: dict[tuple[str, int], int] = {}
        for r in sorted(data["_checkpoint"]["records"], key=lambda r: r["index"]):
            rid = route_name(r["route_id"])
            base = (rid, r["index"] % repetitions)
            occ = 0 if routes_file is not None else seen_here.get(base, 0)
            seen_here[base] = occ + 1
            key = (*base, occ)
            prio = (0 if scoring.is_simulation_crash(r["status"]) else 1, order, r["index"])
            if key not in cands:
                first_seen.append(key)
            cands.setdefault(key, []).append((prio, path, r))

    if routes_file is not None:
        ids = [r.id for r in parse_routes(routes_file)]
        unknown = sorted({rid for rid, _, _ in cands} - {route_name(i) for i in ids},
                         key=_route_sort_key)
        if unknown:
            raise UserError(f"records for routes {unknown} are not in the route file {routes_file}; "
                            f"wrong --routes?")
        if benchmark is None:
            benchmark = _infer_benchmark(ids)
        expected: list[Slot] = [(route_name(i), rep, 0) for i in ids for rep in range(repetitions)]
    else:
        ids = sorted({route_id_of(rid) for rid, _, _ in cands}, key=_route_sort_key)
        expected = [(rid, rep, occ) for rid, rep, occ in sorted(
            {*first_seen, *((route_name(i), rep, 0) for i in ids for rep in range(repetitions))},
            key=lambda s: (_route_sort_key(s[0]), s[1], s[2]))]
        totals = sum(int((d["_checkpoint"].get("progress") or [0, 0])[1]) for _, d in loaded)
        if totals > len(expected):
            _warn(warnings, f"the files' progress totals add up to {totals} route runs but only "
                            f"{len(expected)} route x repetition slots were seen; pass --routes to "
                            f"count routes that no file mentions as missing")
    if benchmark is not None and benchmark not in PAPER_TABLE2:
        raise UserError(f"--benchmark must be one of {sorted(PAPER_TABLE2)}")

    rows: list[dict[str, Any]] = []
    kept: list[tuple[tuple[int, int], dict[str, Any]]] = []  # ((file order, index), record)
    missing, failed, crashed, duplicates = [], [], [], []
    for rid, rep, occ in expected:
        options = sorted(cands.get((rid, rep, occ), []), key=lambda c: c[0])
        slot = {"route_id": rid, "repetition": rep, **({"occurrence": occ} if occ else {})}
        if not options:
            missing.append(slot)
            rows.append({**slot, "driving_score": 0.0, "route_completion": 0.0, "infraction_penalty": 0.0,
                         "status": STATUS_MISSING})
            continue
        prio, path, rec = options[-1]
        if len(options) > 1:
            duplicates.append({**slot, "kept": f"{path} (index {rec['index']})",
                               "dropped": [f"{p} (index {r['index']}, {r['status']})"
                                           for _, p, r in options[:-1]]})
            _warn(warnings, f"{rid} repetition {rep} appears {len(options)} times; kept the one in {path}")
        sc = rec["scores"]
        ds = scoring.driving_score(sc["score_route"], sc["score_penalty"])
        if abs(sc["score_composed"] - ds) > 1e-3:
            _warn(warnings, f"{rid} repetition {rep} in {path}: score_composed {sc['score_composed']} != "
                            f"score_route x score_penalty")
        if scoring.is_simulation_crash(rec["status"]):
            crashed.append({**slot, "status": rec["status"]})
        if rec["status"] != scoring.STATUS_COMPLETED:
            failed.append({**slot, "status": rec["status"]})
        kept.append(((prio[1], rec["index"]), rec))
        rows.append({**slot, "driving_score": sc["score_composed"], "route_completion": sc["score_route"],
                     "infraction_penalty": sc["score_penalty"], "status": rec["status"],
                     "route_length_m": rec["meta"].get("route_length", 0.0),
                     "infractions": {k: len(rec["infractions"].get(k, ())) for k in scoring.INFRACTION_KEYS}})

    records = [r for _, r in sorted(kept, key=lambda t: t[0])]  # the evaluator's order: file, then index
    glob = scoring.leaderboard_global_record(records, max(len(expected), 1), tree)
    per_km, km = scoring.infractions_per_km(records)
    counts = scoring.infraction_counts(records)
    per_km["total"] = sum(counts.values()) / km if km > 0 else None
    return {
        "label": label, "source": source, "source_label": "; ".join(source_labels),
        "is_carla": source == CARLA_SOURCE, "benchmark": benchmark,
        "files": [str(f) for f in files], "routes_file": str(routes_file) if routes_file else None,
        "repetitions": repetitions, "sensors": sensors,
        "leaderboard_tree": tree, "leaderboard_tree_chosen": tree_how,
        "leaderboard_commit": scoring.LEADERBOARD_COMMITS[tree],
        "driving_score": glob["scores"]["score_composed"], "route_completion": glob["scores"]["score_route"],
        "infraction_penalty": glob["scores"]["score_penalty"],
        "scores_std_dev": glob["scores_std_dev"], "status": glob["status"],
        "exceptions": glob["meta"].get("exceptions", []),
        "global_record": glob,
        "num_routes_expected": len(expected), "num_routes_found": len(expected) - len(missing),
        "missing_routes": missing, "failed_routes": failed, "crashed_routes": crashed,
        "duplicates": duplicates,
        "infraction_counts": counts,
        "leaderboard_infractions_per_km": glob["infractions"],
        "leaderboard_infractions_per_km_rule": LB_PER_KM_RULE[tree],
        "infractions_per_km": per_km, "km_driven": km,
        "infractions_per_km_rule": PER_KM_RULE,
        "routes": rows,
        "paper_table2": [{"name": n, "driving_score": ds, "route_completion": rc}
                         for n, ds, rc in PAPER_TABLE2.get(benchmark or "", [])],
        "warnings": warnings,
    }


# ---- rendering ---------------------------------------------------------------------------------------

def source_banner(rep: dict[str, Any]) -> str:
    if rep["is_carla"]:
        return "Source: CARLA leaderboard results."
    extra = f" ({rep['source_label']})" if rep.get("source_label") else ""
    return (f"**Source: {rep['source']}{extra}. These are NOT CARLA numbers and are not comparable with "
            f"the paper's Table 2.**")


def _occ(slot: dict[str, Any]) -> str:
    """" (listed #2)" for the second slot of a route listed twice in one route file, else ""."""
    n = int(slot.get("occurrence", 0))
    return f" (listed #{n + 1})" if n else ""


def _num(x: Any) -> float | None:
    """A std dev as a number (the leaderboard writes the string "NaN" for a single route)."""
    return None if isinstance(x, str) else float(x)


def _f(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def render_markdown(rep: dict[str, Any]) -> str:
    bench = {"short": "Town05 Short", "long": "Town05 Long"}.get(rep.get("benchmark") or "", "custom routes")
    name = rep.get("label") or "run"
    L = [f"# Closed-loop report: {name} ({bench})", "", source_banner(rep), ""]
    L += ["| | DS | RC | infraction penalty | routes found / expected |", "|---|---|---|---|---|",
          f"| {name} | {_f(rep['driving_score'])} | {_f(rep['route_completion'])} | "
          f"{_f(rep['infraction_penalty'], 3)} | {rep['num_routes_found']} / {rep['num_routes_expected']} |"]
    for p in rep["paper_table2"]:
        L.append(f"| {p['name']} | {_f(p['driving_score'])} | {_f(p['route_completion'])} | | |")
    if rep["paper_table2"]:
        L += ["", "Paper rows: VLM-AD Table 2, CARLA 0.9.10.1."]
    std = rep["scores_std_dev"]
    L += ["", f"Means over {rep['num_routes_expected']} route x repetition slots (repetitions: "
          f"{rep['repetitions']}); missing slots count as 0; crashed routes keep what was measured up to the "
          f"crash. Scored like leaderboard `{rep['leaderboard_tree']}` ({rep['leaderboard_commit'][:7]}, "
          f"{rep['leaderboard_tree_chosen']}). Std dev: DS {_f(_num(std['score_composed']))}, RC "
          f"{_f(_num(std['score_route']))}, penalty {_f(_num(std['score_penalty']), 3)}. "
          f"Status: {rep['status']}.", ""]
    L += ["## Infractions", "", f"Km driven: {rep['km_driven']:.3f}.",
          f"Leaderboard per km: {rep['leaderboard_infractions_per_km_rule']}.",
          f"Project per km: {rep['infractions_per_km_rule']}.", "",
          "| infraction | count | leaderboard per km | project per km |", "|---|---|---|---|"]
    for k in scoring.INFRACTION_KEYS:
        L.append(f"| {scoring.INFRACTION_LABELS[k]} | {rep['infraction_counts'][k]} | "
                 f"{_f(rep['leaderboard_infractions_per_km'][k], 3)} | "
                 f"{_f(rep['infractions_per_km'][k], 3)} |")
    total = sum(rep["infraction_counts"].values())
    L.append(f"| all | {total} | | {_f(rep['infractions_per_km']['total'], 3)} |")
    L += ["", "## Routes", "", "| route | rep | DS | RC | penalty | status |", "|---|---|---|---|---|---|"]
    for r in rep["routes"]:
        L.append(f"| {r['route_id']}{_occ(r)} | {r['repetition']} | {_f(r['driving_score'])} | "
                 f"{_f(r['route_completion'])} | {_f(r['infraction_penalty'], 3)} | {r['status']} |")
    for title, key in (("Missing routes", "missing_routes"), ("Failed routes", "failed_routes"),
                       ("Crashed routes (kept as measured up to the crash)", "crashed_routes")):
        items = rep[key]
        L += ["", f"## {title}: {len(items)}"]
        L += [f"- {i['route_id']}{_occ(i)} rep {i['repetition']}"
              + (f": {i['status']}" if "status" in i else "") for i in items]
    if rep["duplicates"]:
        L += ["", f"## Duplicates: {len(rep['duplicates'])} (kept one per the rule in docs/closed_loop.md)"]
        L += [f"- {d['route_id']} rep {d['repetition']}: kept {d['kept']}; dropped {', '.join(d['dropped'])}"
              for d in rep["duplicates"]]
    if rep["warnings"]:
        L += ["", "## Warnings"] + [f"- {w}" for w in rep["warnings"]]
    L += ["", f"Sensors: {', '.join(rep['sensors']) or 'not recorded'}.",
          f"Files: {', '.join(rep['files'])}.", ""]
    return "\n".join(L)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_plots(rep: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Per-route DS bar chart and infraction breakdown as PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    tag = "" if rep["is_carla"] else f" [{rep['source']}: not CARLA]"
    rows = rep["routes"]
    multi = rep["repetitions"] > 1
    names = [route_id_of(r["route_id"]) + (f".{r['repetition']}" if multi else "") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(rows) + 2), 3.5))
    colors = ["tab:red" if r["status"] != scoring.STATUS_COMPLETED else "tab:blue" for r in rows]
    ax.bar(range(len(rows)), [r["driving_score"] for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), names, rotation=90, fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("driving score")
    ax.set_title(f"{rep.get('label') or 'run'}: per-route DS (red = not completed){tag}", fontsize=9)
    fig.tight_layout()
    p1 = out_dir / "per_route_ds.png"
    atomic_write_bytes(p1, _png(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    keys = list(scoring.INFRACTION_KEYS)
    ax.barh([scoring.INFRACTION_LABELS[k] for k in keys], [rep["infraction_counts"][k] for k in keys])
    ax.set_xlabel(f"count ({rep['km_driven']:.2f} km driven)")
    ax.set_title(f"{rep.get('label') or 'run'}: infractions{tag}", fontsize=9)
    fig.tight_layout()
    p2 = out_dir / "infractions.png"
    atomic_write_bytes(p2, _png(fig))
    plt.close(fig)
    return [p1, p2]


def write_report(files: list[str | Path], json_path: str | Path, md_path: str | Path,
                 plots_dir: str | Path | None = None, routes_file: str | Path | None = None,
                 repetitions: int = 1, label: str = "", benchmark: str | None = None,
                 tree: str = "auto") -> Path:
    """Build the report and write JSON, markdown and (optionally) plots; returns the JSON path."""
    rep = build_report(files, routes_file, repetitions, label, benchmark, tree)
    if plots_dir is not None:
        rep["plots"] = [str(p) for p in write_plots(rep, plots_dir)]
    atomic_write_json(json_path, rep)
    atomic_write_text(md_path, render_markdown(rep))
    return Path(json_path)


# ---- comparison --------------------------------------------------------------------------------------

def compare(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Side-by-side rows of several reports plus the paper's Table 2 rows for the benchmarks present."""
    rows = [{"name": r.get("label") or f"report {i}", "source": r["source"], "benchmark": r.get("benchmark"),
             "driving_score": r["driving_score"], "route_completion": r["route_completion"],
             "infraction_penalty": r["infraction_penalty"],
             "infractions_per_km": r["infractions_per_km"]["total"],
             "routes": f"{r['num_routes_found']}/{r['num_routes_expected']}"} for i, r in enumerate(reports)]
    benches = sorted({r.get("benchmark") for r in reports if r.get("benchmark")})
    paper = [{"name": n, "source": "paper (CARLA 0.9.10.1)", "benchmark": b, "driving_score": ds,
              "route_completion": rc} for b in benches for n, ds, rc in PAPER_TABLE2[b]]
    notes = []
    if len({r.get("benchmark") for r in reports}) > 1:
        notes.append("the reports cover different route sets: compare rows of the same benchmark only")
    if any(r["source"] != CARLA_SOURCE for r in reports):
        notes.append("rows whose source is not 'carla' are offline-world numbers, not CARLA numbers")
    return {"rows": rows, "paper_table2": paper, "notes": notes}


def render_compare_markdown(cmp: dict[str, Any]) -> str:
    L = ["# Closed-loop comparison", "",
         "| run | source | benchmark | DS | RC | penalty | infr./km | routes |",
         "|---|---|---|---|---|---|---|---|"]
    for r in cmp["rows"]:
        src = r["source"] if r["source"] == CARLA_SOURCE else f"**{r['source']} (not CARLA)**"
        L.append(f"| {r['name']} | {src} | {r['benchmark'] or 'custom'} | {_f(r['driving_score'])} | "
                 f"{_f(r['route_completion'])} | {_f(r['infraction_penalty'], 3)} | "
                 f"{_f(r['infractions_per_km'], 3)} | {r['routes']} |")
    for p in cmp["paper_table2"]:
        L.append(f"| {p['name']} | {p['source']} | {p['benchmark']} | {_f(p['driving_score'])} | "
                 f"{_f(p['route_completion'])} | | | |")
    L += [""] + [f"Note: {n}." for n in cmp["notes"]] + [""]
    return "\n".join(L)


def write_compare_plot(cmp: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cmp["rows"] + cmp["paper_table2"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["driving_score"] for r in rows], width=0.4, label="DS")
    ax.bar([x + 0.2 for x in xs], [r["route_completion"] for r in rows], width=0.4, label="RC")
    names = [r["name"] + ("" if r["source"] == CARLA_SOURCE or r["source"].startswith("paper")
                          else "\n(not CARLA)") for r in rows]
    ax.set_xticks(list(xs), names, fontsize=7, rotation=20)
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(path, _png(fig))
    plt.close(fig)
    return path


# ---- CLI ---------------------------------------------------------------------------------------------

def _load_report(path: str) -> dict[str, Any]:
    try:
        rep = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"report {path} does not exist") from None
    except ValueError as e:
        raise UserError(f"report {path} is not valid JSON: {e}") from None
    for key in ("driving_score", "route_completion", "infraction_penalty", "source", "infractions_per_km"):
        if key not in rep:
            raise UserError(f"{path} is not a report of `python -m carla_eval.report` (no {key!r})")
    return rep


def main_compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m carla_eval.report compare",
                                description="Compare several reports (one per checkpoint) side by side and "
                                            "with the paper's Table 2 rows.")
    p.add_argument("reports", nargs="+", help="report JSON files written by `python -m carla_eval.report`")
    p.add_argument("--markdown", required=True, help="comparison markdown to write")
    p.add_argument("--json", default=None, help="comparison JSON to write")
    p.add_argument("--plots", default=None, help="folder for compare.png (DS and RC per run)")
    a = p.parse_args(argv)
    cmp = compare([_load_report(r) for r in a.reports])
    if a.plots:
        cmp["plots"] = [str(write_compare_plot(cmp, Path(a.plots) / "compare.png"))]
    atomic_write_text(a.markdown, render_compare_markdown(cmp))
    if a.json:
        atomic_write_json(a.json, cmp)
    print(render_compare_markdown(cmp))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return main_compare(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m carla_eval.report",
        description="Merge leaderboard results files (shards, repetitions), validate them and write the "
                    "closed-loop report (DS, RC, infraction penalty, infractions per km, per-route rows). "
                    "Use `python -m carla_eval.report compare A.json B.json --markdown OUT.md` to compare "
                    "reports of several checkpoints.",
        epilog="Rules" + (__doc__ or "Rules").split("Rules", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="leaderboard results JSON files (the evaluator's --checkpoint)")
    p.add_argument("--routes", default=None, help="route XML: every route in it is expected (missing = 0)")
    p.add_argument("--repetitions", type=int, default=1, help="--repetitions of the run (default 1)")
    p.add_argument("--json", required=True, help="report JSON to write")
    p.add_argument("--markdown", required=True, help="report markdown to write")
    p.add_argument("--plots", default=None, help="folder for per_route_ds.png and infractions.png")
    p.add_argument("--label", default="", help="name of the checkpoint / run shown in the report")
    p.add_argument("--benchmark", choices=sorted(PAPER_TABLE2), default=None,
                   help="which Table 2 rows to show (default: inferred from --routes)")
    p.add_argument("--leaderboard-tree", choices=TREE_CHOICES, default="auto",
                   help="whose global_record rules to apply: stable (8956c4e, what setup_carla.sh "
                        "installs) or leaderboard-1.0 (2165f5e; skips RC-0 routes in the per-km figures, "
                        "adds totals to meta); default auto = the tree that wrote the files, else stable")
    a = p.parse_args(argv)
    path = write_report(a.results, a.json, a.markdown, a.plots, a.routes, a.repetitions, a.label, a.benchmark,
                        a.leaderboard_tree)
    rep = json.loads(Path(path).read_text())
    print(f"{source_banner(rep)}\nDS {rep['driving_score']:.2f}  RC {rep['route_completion']:.2f}  "
          f"penalty {rep['infraction_penalty']:.3f}  routes {rep['num_routes_found']}/"
          f"{rep['num_routes_expected']}  -> {a.json}, {a.markdown}")
    return 0


if __name__ == "__main__":
    cli_main(main)
