"""An experiment's results: Table-1 layout with mean +/- std over seeds, paired differences, per-seed plots.

Open loop (both metric conventions, docs/metrics.md): L2 (m) and collision (%) at 1/2/3 s and their average.
Closed loop (offline world): driving score, route completion, infractions per km (the project's total count
over total km, docs/closed_loop.md). Each variant is compared with the first (the baseline) seed by seed: the
same seed means the same data order and initialisation draws, so the paired difference removes the part of
the seed-to-seed spread both share. Its 95 % confidence interval is Student's t over seeds (n - 1 degrees of
freedom); with one seed there is no spread and no interval, and the table says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from experiments.config import ExperimentConfig
from experiments.steps import run_dir
from vlmad.io import atomic_write_bytes, atomic_write_json, atomic_write_text

HORIZONS = ("1s", "2s", "3s", "avg")
CONVENTIONS = {"vad": "VAD / ST-P3 convention (mean over steps up to k s)",
               "uniad": "UniAD convention (value at the k s step)"}
CLOSED = {"driving_score": "DS", "route_completion": "RC", "infractions_per_km": "infractions / km"}
# the compared quantities of the paired-difference table: (label, metric key)
PAIRED = [("L2 avg (m), VAD conv.", "vad.l2.avg"), ("L2 avg (m), UniAD conv.", "uniad.l2.avg"),
          ("Col. avg (%), VAD conv.", "vad.collision.avg"),
          ("Col. avg (%), UniAD conv.", "uniad.collision.avg"),
          ("DS", "driving_score"), ("RC", "route_completion"), ("infractions / km", "infractions_per_km")]


def run_metrics(rd: Path) -> dict[str, float]:
    """Flat metrics of one run folder: 'vad.l2.1s', ..., 'driving_score', ... (missing files: absent keys)."""
    out: dict[str, float] = {}
    ol = rd / "openloop.json"
    if ol.is_file():
        m = json.loads(ol.read_text())
        for conv in CONVENTIONS:
            for kind in ("l2", "collision"):
                for h in HORIZONS:
                    v = m.get(conv, {}).get(kind, {}).get(h)
                    if v is not None:
                        out[f"{conv}.{kind}.{h}"] = float(v)
        out["num_samples"] = float(m.get("num_samples", 0))
    cl = rd / "closedloop_report.json"
    if cl.is_file():
        r = json.loads(cl.read_text())
        out["driving_score"] = float(r["driving_score"])
        out["route_completion"] = float(r["route_completion"])
        per_km = (r.get("infractions_per_km") or {}).get("total")
        if per_km is not None:
            out["infractions_per_km"] = float(per_km)
        out["km_driven"] = float(r.get("km_driven") or 0.0)
        out["routes"] = float(len(r.get("routes", [])))
    dg = rd / "closedloop_diagnosis.json"
    if dg.is_file():  # where the agent departs from the riding-along expert (world/ride_along.py)
        sm = json.loads(dg.read_text())["summary"]
        out["false_stop_pct"] = 100.0 * float(sm["share"].get("false_stop", 0.0))
        out["missed_stop_pct"] = 100.0 * float(sm["share"].get("missed_stop", 0.0))
        out["stuck_episodes"] = float(sm["stuck_episodes"])
    return out


def mean_std(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) >= 2 else None)


def paired_ci(diffs: list[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean difference, CI low, CI high) by Student's t over the paired differences (None for n < 2)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    m = float(d.mean())
    if len(d) < 2:
        return m, None, None
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return m, m - half, m + half


def collect_results(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every run's metrics plus per-variant mean / std and paired differences against the baseline."""
    variants = list(cfg.variants)
    per_run = {v: {s: run_metrics(run_dir(cfg, v, s)) for s in cfg.seeds} for v in variants}
    expert = run_metrics(Path(cfg.out) / "expert")
    agg: dict[str, dict[str, Any]] = {}
    for v in variants:
        keys = sorted({k for m in per_run[v].values() for k in m})
        agg[v] = {}
        for k in keys:
            vals = [per_run[v][s][k] for s in cfg.seeds if k in per_run[v][s]]
            mu, sd = mean_std(vals)
            agg[v][k] = {"mean": mu, "std": sd, "n": len(vals), "values": vals}
    base = variants[0]
    paired: dict[str, dict[str, Any]] = {}
    for v in variants[1:]:
        paired[v] = {}
        for _, k in PAIRED:
            seeds = [s for s in cfg.seeds if k in per_run[v][s] and k in per_run[base][s]]
            if not seeds:
                continue
            m, lo, hi = paired_ci([per_run[v][s][k] - per_run[base][s][k] for s in seeds])
            paired[v][k] = {"mean": m, "ci95": [lo, hi], "n": len(seeds)}
    checks = {}
    for v in variants:
        f = run_dir(cfg, v, cfg.seeds[0]) / "vlmad_checks.json"
        if f.is_file():
            checks[v] = json.loads(f.read_text())
    return {"name": cfg.name, "seeds": list(cfg.seeds), "baseline": base, "runs": per_run,
            "aggregate": agg, "paired_vs_baseline": paired, "expert": expert, "vlmad_checks": checks}


def _cell(a: dict[str, Any] | None, nd: int, n_seeds: int = 0) -> str:
    """'mean ± std'; '-' for no run; ' (n=k)' when only k of the experiment's n_seeds runs are finished."""
    if a is None:
        return "-"
    partial = f" (n={a['n']})" if a["n"] < n_seeds else ""
    return f"{a['mean']:.{nd}f}" + ("" if a["std"] is None else f" ± {a['std']:.{nd}f}") + partial


def render_markdown(res: dict[str, Any], labels: str) -> str:
    """The experiment's tables as markdown; `labels` says what produced the numbers (data, teacher, model)."""
    seeds, agg = res["seeds"], res["aggregate"]
    n = len(seeds)

    def cell(a: dict[str, Any] | None, nd: int) -> str:
        return _cell(a, nd, n)

    spread = "mean ± std over" if n >= 2 else "one seed, no spread:"
    L = [f"# {res['name']}", "", labels, "",
         f"{spread} {n} seed{'s' if n != 1 else ''} ({', '.join(map(str, seeds))}).", ""]
    for conv, title in CONVENTIONS.items():
        L += [f"## Open loop, {title}", "",
              "| Method | L2 1s | L2 2s | L2 3s | L2 avg | Col. 1s | Col. 2s | Col. 3s | Col. avg |",
              "|---|---|---|---|---|---|---|---|---|"]
        for v, a in agg.items():
            cells = [cell(a.get(f"{conv}.l2.{h}"), 2) for h in HORIZONS]
            cells += [cell(a.get(f"{conv}.collision.{h}"), 2) for h in HORIZONS]
            L.append(f"| {v} | " + " | ".join(cells) + " |")
        L.append("")
    samples = {int(a["num_samples"]["mean"]) for a in agg.values() if "num_samples" in a}
    if samples:
        L += [f"Held-out keyframes evaluated: {', '.join(map(str, sorted(samples)))}.", ""]
    if any("driving_score" in a for a in agg.values()):
        L += ["## Closed loop (offline world, not CARLA)", "",
              "| Method | DS | RC | infractions / km | km | false stop % | missed stop % | stuck |",
              "|---|---|---|---|---|---|---|---|"]
        ex = res.get("expert") or {}
        if "driving_score" in ex:
            L.append(f"| expert (privileged) | {ex['driving_score']:.2f} | {ex['route_completion']:.2f} | "
                     f"{ex.get('infractions_per_km', float('nan')):.2f} | {ex.get('km_driven', 0):.2f} "
                     "| | | |")
        for v, a in agg.items():
            if "driving_score" in a:
                L.append(f"| {v} | {cell(a['driving_score'], 1)} | {cell(a['route_completion'], 1)} | "
                         f"{cell(a.get('infractions_per_km'), 1)} | {cell(a.get('km_driven'), 2)} | "
                         f"{cell(a.get('false_stop_pct'), 1)} | {cell(a.get('missed_stop_pct'), 1)} | "
                         f"{cell(a.get('stuck_episodes'), 1)} |")
        L += ["", "false stop / missed stop: share of ticks the agent stands where the riding-along expert "
              "would drive / drives on where it would stop; stuck: false stops of 10 s or more "
              "(world/ride_along.py).", ""]
    if res["paired_vs_baseline"]:
        L += [f"## Paired difference against {res['baseline']} (same seed), mean [95 % CI]", "",
              "| Variant | " + " | ".join(lbl for lbl, _ in PAIRED) + " |", "|---" * (len(PAIRED) + 1) + "|"]
        for v, p in res["paired_vs_baseline"].items():
            cells = []
            for _, k in PAIRED:
                d = p.get(k)
                if d is None:
                    cells.append("-")
                elif d["ci95"][0] is None:
                    cells.append(f"{d['mean']:+.2f} [n=1]")
                else:
                    cells.append(f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
                                 + (f" (n={d['n']})" if d["n"] < n else ""))
            L.append(f"| {v} | " + " | ".join(cells) + " |")
        L += ["", "A difference whose interval contains 0 is not distinguishable from seed noise here.",
              ""]
    if res.get("vlmad_checks"):
        L += [f"## VLM-AD checks (seed {seeds[0]}, scripts.vlmad_checks)", "",
              "| Variant | plan loss | λ1·L_align | λ2·L_action | VLM-AD share of the f_ego gradient | "
              "cos(VLM-AD, plan) | heads / driver params | distinct Q1 answers (cur/fut/reason) |",
              "|---|---|---|---|---|---|---|---|"]
        for v, c in res["vlmad_checks"].items():
            g, t = c["losses_and_gradients"], c["teacher"]["text"]
            distinct = "/".join(f"{t[k]['distinct']}" for k in ("current", "future", "reasoning") if k in t)
            L.append(f"| {v} | {g['plan']:.3f} | {g['lambda1_align']:.3f} | {g['lambda2_action']:.3f} | "
                     f"{100 * g['grad_share_vlm']:.1f} % | {g['cos_vlm_plan']:+.3f} | "
                     f"{c['params']['heads_over_driver']:.2f} | {distinct} of {t['current']['valid']} |")
        L.append("")
    return "\n".join(L)


def write_plot(res: dict[str, Any], path: Path) -> Path | None:
    """Per-seed points beside each variant's mean (+/- std) for the headline metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    wanted = (("vad.l2.avg", "avg L2 (m), VAD conv."), ("uniad.l2.avg", "avg L2 (m), UniAD"),
              ("driving_score", "driving score"), ("route_completion", "route completion"))
    panels = [(k, t) for k, t in wanted if any(k in a for a in res["aggregate"].values())]
    if not panels:
        return None
    variants = list(res["aggregate"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, v in enumerate(variants):
            a = res["aggregate"][v].get(key)
            if a is None:
                continue
            xs = i + np.linspace(-0.12, 0.12, len(a["values"])) if len(a["values"]) > 1 else [i]
            ax.scatter(xs, a["values"], s=18, color="tab:gray", zorder=3, label="seed" if i == 0 else None)
            ax.errorbar(i + 0.28, a["mean"], yerr=a["std"] or 0.0, fmt="o", color="tab:blue", capsize=3,
                        label="mean ± std" if i == 0 else None)
        ax.set_xticks(range(len(variants)), [v.replace(" + ", "\n+ ") for v in variants], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{res['name']}: {len(res['seeds'])} seed(s)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_summary(cfg: ExperimentConfig, labels: str) -> tuple[dict[str, Any], str]:
    """results.json, table.md and seeds.png below the experiment folder; returns (results, markdown)."""
    out = Path(cfg.out)
    res = collect_results(cfg)
    md = render_markdown(res, labels)
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "table.md", md + "\n")
    write_plot(res, out / "seeds.png")
    return res, md
