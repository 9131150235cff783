"""Statistics and audit of an annotation store: the paper's Table 7 and Fig. 5, and an HTML gallery.

Writes into --out-dir:
  table7.md          word lengths of A_c, A_f, A_r (max / min / mean), beside the paper's numbers
  fig5.png           control / turn / lane label distributions (also fig5_control.png, ...)
  distributions.md   the same distributions as a table
  gallery/index.html a random sample: the image the teacher saw + its answers, for human checking

Every output names the teacher and model that wrote the answers (the rule teacher is labelled as
"rule-teacher (privileged ground truth, not a VLM)").

Example:
  python -m scripts.annotation_report --store ann.sqlite --dataroot data/nuscenes --version v1.0-mini \\
      --out-dir reports/annotations --sample 50
"""

from __future__ import annotations

import html
import random
from collections import Counter
from pathlib import Path

import numpy as np

from teacher.answers import word_count
from teacher.prompts import ACTION_KINDS, ACTION_LABELS, TEXT_KINDS
from teacher.store import Annotation, AnnotationStore
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_bytes, atomic_write_text

# The paper's nuScenes-train statistics (docs/facts.md section 5), printed beside ours.
PAPER_MEAN_WORDS = {"current": 11.30, "future": 15.34, "reasoning": 35.85}
PAPER_SHARES = {"control": ("go straight", 0.62), "turn": ("none", 0.894), "lane": ("none", 0.973)}
TEXT_NAMES = {"current": "A_c (current action)", "future": "A_f (future action)",
              "reasoning": "A_r (reasoning)"}


def latest_rows(store: AnnotationStore, model: str | None
                ) -> tuple[dict[str, Annotation], dict[str, Annotation], str]:
    """Latest P1 and P2 row per sample token of one model, and a 'teacher / model' label."""
    models = store.models()
    if model is None:
        if len(models) != 1:
            raise UserError(f"the store has answers of {len(models)} models {models}; pick one with --model")
        model = models[0]
    p1: dict[str, Annotation] = {}
    p2: dict[str, Annotation] = {}
    for row in store.all(model=model):
        (p1 if row.prompt_name == "P1" else p2)[row.key.sample_token] = row
    teachers = sorted({r.teacher for r in list(p1.values()) + list(p2.values())})
    return p1, p2, f"teacher: {', '.join(teachers)} / model: {model}"


def table7(p1: dict[str, Annotation], label: str) -> tuple[str, dict[str, dict[str, float]]]:
    """Markdown of Table 7 and the numbers (max, min, mean word counts per text kind)."""
    stats: dict[str, dict[str, float]] = {}
    lines = ["# Table 7: word lengths of the freeform answers", "", f"Source: {label}", "",
             "| answer | n | max | min | mean | paper mean |", "|---|---|---|---|---|---|"]
    for k in TEXT_KINDS:
        counts = [word_count(r.parsed.get(k)) for r in p1.values()
                  if r.status in ("ok", "partial") and r.parsed.get(k)]
        s = ({"n": len(counts), "max": max(counts), "min": min(counts), "mean": float(np.mean(counts))}
             if counts else {"n": 0, "max": 0, "min": 0, "mean": float("nan")})
        stats[k] = s
        lines.append(f"| {TEXT_NAMES[k]} | {s['n']} | {s['max']} | {s['min']} | {s['mean']:.2f} | "
                     f"{PAPER_MEAN_WORDS[k]:.2f} |")
    failed = sum(r.status not in ("ok", "partial") for r in p1.values())
    lines += ["", f"P1 answers: {len(p1)} frames, {failed} failed (excluded)."]
    return "\n".join(lines) + "\n", stats


def distributions(p2: dict[str, Annotation]) -> dict[str, Counter]:
    """Label counts per action kind (None = could not be read) over the latest P2 answers."""
    out = {k: Counter() for k in ACTION_KINDS}
    for r in p2.values():
        for k in ACTION_KINDS:
            out[k][r.parsed.get(k) if r.status in ("ok", "partial") else None] += 1
    return out


def plot_fig5(dist: dict[str, Counter], out_dir: Path, label: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def bars(ax, kind: str) -> None:
        labels = list(ACTION_LABELS[kind]) + (["unreadable"] if dist[kind][None] else [])
        counts = [dist[kind][lab] for lab in ACTION_LABELS[kind]]
        counts += [dist[kind][None]] if dist[kind][None] else []
        total = max(1, sum(counts))
        ax.bar(range(len(labels)), counts, color="tab:red" if kind == "control" else "tab:blue")
        for i, c in enumerate(counts):
            ax.text(i, c, f"{100 * c / total:.1f}%", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), [lab.replace(" ", "\n", 2) for lab in labels], fontsize=7)
        ref_label, ref = PAPER_SHARES[kind]
        ax.set_title(f"{kind} (paper: {100 * ref:.1f}% {ref_label})", fontsize=9)
        ax.set_ylabel("frames")

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, kind in zip(axes, ACTION_KINDS):
        bars(ax, kind)
    fig.suptitle(f"Fig. 5: structured action distributions - {label}", fontsize=9)
    fig.tight_layout()
    paths.append(_save_fig(fig, out_dir / "fig5.png"))
    plt.close(fig)
    for kind in ACTION_KINDS:
        fig, ax = plt.subplots(figsize=(5, 4))
        bars(ax, kind)
        fig.suptitle(label, fontsize=7)
        fig.tight_layout()
        paths.append(_save_fig(fig, out_dir / f"fig5_{kind}.png"))
        plt.close(fig)
    return paths


def _save_fig(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def distributions_md(dist: dict[str, Counter], label: str) -> str:
    lines = ["# Fig. 5 data: structured action distributions", "", f"Source: {label}", ""]
    for kind in ACTION_KINDS:
        total = max(1, sum(dist[kind].values()))
        lines += [f"## {kind}", "", "| label | frames | share |", "|---|---|---|"]
        for lab in list(ACTION_LABELS[kind]) + [None]:
            if lab is None and not dist[kind][None]:
                continue
            c = dist[kind][lab]
            lines.append(f"| {lab or 'unreadable / failed'} | {c} | {100 * c / total:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def gallery(p1: dict[str, Annotation], p2: dict[str, Annotation], out_dir: Path, label: str, n: int,
            seed: int,             dataroot: str | None, version: str, view: str) -> Path:
    """index.html with `n` random frames: the rendered teacher input (when --dataroot is given) + answers."""
    from teacher.config import TeacherConfig
    from teacher.overlay import encode_jpeg
    from teacher.runner import load_records, render

    tokens = sorted(set(p1) | set(p2))
    rng = random.Random(seed)
    chosen = rng.sample(tokens, min(n, len(tokens)))
    records = {}
    if dataroot:
        records = {r["token"]: r for r in load_records(dataroot, version)}
    gdir = out_dir / "gallery"
    cfg = TeacherConfig(view=view)
    cards = []
    for tok in chosen:
        img_html = "<div class='noimg'>no image (pass --dataroot to render the teacher's input)</div>"
        rec = records.get(tok)
        if rec is not None:
            img, drawn = render(rec, dataroot, cfg, records)
            atomic_write_bytes(gdir / f"{tok}.jpg", encode_jpeg(img, 85))
            img_html = (f"<img src='{tok}.jpg' alt='{tok}'><div class='small'>trajectory line: "
                        f"{'drawn' if drawn else 'none (ego still or behind camera)'}</div>")
        rows = []
        for name, ann, kinds in (("P1", p1.get(tok), TEXT_KINDS), ("P2", p2.get(tok), ACTION_KINDS)):
            if ann is None:
                rows.append(f"<tr><td>{name}</td><td colspan=2>not annotated</td></tr>")
                continue
            for k in kinds:
                v = ann.parsed.get(k)
                rows.append(f"<tr><td>{name} {k}</td><td class='{ann.status}'>"
                            f"{html.escape(str(v)) if v is not None else '<i>unreadable</i>'}</td></tr>")
            rows.append(f"<tr><td>{name} raw ({ann.status}, {ann.attempts} req.)</td><td><details><summary>"
                        f"show</summary><pre>{html.escape(ann.raw_text or '')}</pre></details></td></tr>")
        cards.append(f"<div class='card'><h3>{html.escape(tok)}</h3>{img_html}"
                     f"<table>{''.join(rows)}</table></div>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Annotation gallery</title><style>
body{{font-family:sans-serif;margin:1em}}
.card{{border:1px solid #ccc;margin:1em 0;padding:.5em;max-width:960px}}
img{{max-width:100%}} td{{vertical-align:top;padding:2px 6px}} .failed,.partial{{color:#b00}}
.small{{font-size:80%;color:#555}} .noimg{{color:#777}} pre{{white-space:pre-wrap}}</style></head><body>
<h1>Annotation gallery</h1><p><b>{html.escape(label)}</b> - {len(chosen)} random frames (seed {seed}) of
{len(tokens)}; view: {html.escape(view)}.</p>{''.join(cards)}</body></html>"""
    path = gdir / "index.html"
    atomic_write_text(path, page)
    return path


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.annotation_report", __doc__)
    p.add_argument("--store", required=True, type=Path, help="annotation store")
    p.add_argument("--out-dir", required=True, type=Path, help="output folder")
    p.add_argument("--model", help="which model's answers (when the store has several)")
    p.add_argument("--dataroot", help="dataset root, to render the gallery images")
    p.add_argument("--version", default="v1.0-trainval", help="dataset version")
    p.add_argument("--view", default="front", choices=("front", "six", "sequence"), help="gallery image view")
    p.add_argument("--sample", type=int, default=50, help="frames in the gallery")
    p.add_argument("--seed", type=int, default=0, help="gallery sampling seed")
    args = p.parse_args(argv)
    with AnnotationStore(args.store, readonly=True) as store:
        p1, p2, label = latest_rows(store, args.model)
    if not p1 and not p2:
        raise UserError(f"{args.store} has no answers")
    md, _ = table7(p1, label)
    atomic_write_text(args.out_dir / "table7.md", md)
    dist = distributions(p2)
    atomic_write_text(args.out_dir / "distributions.md", distributions_md(dist, label))
    plot_fig5(dist, args.out_dir, label)
    g = gallery(p1, p2, args.out_dir, label, args.sample, args.seed, args.dataroot, args.version, args.view)
    print(md)
    print(f"wrote {args.out_dir}/table7.md, distributions.md, fig5*.png and {g}")
    return 0


if __name__ == "__main__":
    cli_main(main)
