"""Open-loop planning evaluation on nuScenes: L2 (m) and collision rate (%) under both conventions.

Referee any model's plans against the nuScenes ground truth (13 core tables; no CAN bus, no map expansion):

    python -m scripts.eval_openloop --dataroot D --version V --predictions P.json --out M.json \\
        [--frame ego|lidar] [--strict] [--csv per_sample.csv] [--markdown table.md --name RUN]

or run a trained model first (driving / training checkpoint or training run folder; its plans are written
beside M.json as M.predictions.json, and its VLM-AD action predictions, if any, as M.actions.json):

    python -m scripts.eval_openloop --dataroot D --version V --checkpoint RUN --split heldout --out M.json

Build a side-by-side table from several metrics files:

    python -m scripts.eval_openloop table M1.json M2.json [--names A B] [--out table.md]

See docs/metrics.md for exactly what each number computes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from openloop.evaluate import (
    FRAMES,
    GEOMETRIES,
    evaluate_predictions,
    load_predictions,
    render_table,
    run_entry,
    split_scope,
    update_markdown,
)
from openloop.gt import load_ground_truth
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_json, atomic_write_text

EPILOG = """\
predictions file (P.json): {"<sample token>": [[x1, y1], ..., [x6, y6]], ...}: the ego's positions at
+0.5 s .. +3.0 s in metres, in the ego frame of that keyframe (x forward, y left). With --frame lidar they
are in VAD's convention instead: future LIDAR_TOP positions minus the current one, in lidar axes (x right,
y forward); they are rotated with each keyframe's calibrated LIDAR_TOP rotation and scored against the
same quantity of the ground truth (exactly what VAD's own evaluation compares).

output (M.json): {"num_samples": N, "vad": {"l2": {"1s", "2s", "3s", "avg"}, "collision": {...}},
"uniad": {...}} with collision in percent, plus counts (skipped_no_future, unknown_tokens, missing_tokens,
gt_collision_steps), the collision geometry and one-line descriptions of both conventions.
  vad   = VAD / ST-P3: value at k s is the mean over all 0.5 s steps up to k s (VAD, ST-P3, VLM-AD tables)
  uniad = UniAD: value at k s is the value at the k s step alone

tables: --markdown FILE --name RUN adds (or replaces) RUN in FILE and re-renders it, so several
evaluations accumulate side by side; or build one from metrics files:
  python -m scripts.eval_openloop table base.json vlmad.json --names VAD-Base "VAD-Base + VLM-AD"

exit status 2 with one line on stderr for any input problem (missing tables, malformed P.json, --strict).
"""


def build_parser() -> argparse.ArgumentParser:
    p = script_parser("scripts.eval_openloop", __doc__, epilog=EPILOG)
    p.add_argument("--dataroot", required=True, help="nuScenes root (the folder holding <version>/)")
    p.add_argument("--version", required=True, help="dataset version, e.g. v1.0-trainval or v1.0-mini")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="P.json: sample token -> 6 [x, y] future positions")
    src.add_argument("--checkpoint", help="run this model (driving or training checkpoint, or a training run "
                     "folder) over the evaluated scenes and score its plans (training/predict.py)")
    p.add_argument("--save-predictions", metavar="P.json",
                   help="with --checkpoint: where to write the plans (default: <out>.predictions.json)")
    p.add_argument("--device", default="auto", help="with --checkpoint: auto (default), cpu or cuda")
    p.add_argument("--out", required=True, help="where to write the metrics JSON (M.json)")
    p.add_argument("--frame", choices=FRAMES, default="ego",
                   help="plan convention: ego (ego-origin positions, x fwd, y left; default) or lidar (VAD's "
                        "LIDAR_TOP displacements, x right, y fwd)")
    p.add_argument("--split", default="all",
                   help="evaluate only the keyframes of an official split (val, mini_val, ...; default all), "
                        "or with --checkpoint 'heldout': the scenes its training run held out")
    p.add_argument("--strict", action="store_true",
                   help="fail when P.json has unknown tokens or lacks evaluable keyframes")
    p.add_argument("--csv", help="also write per-sample L2 and collision flags per step to this CSV")
    p.add_argument("--markdown",
                   help="add this run to a markdown table file (Table 1 layout, runs merged by --name)")
    p.add_argument("--name", help="run name in tables (default: the predictions file name without .json)")
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), default="design",
                   help="ego box of the collision test: design (oriented along the plan; default) or "
                        "vad-code (axis-aligned as in VAD's code; with --frame lidar: VAD's evaluation)")
    p.add_argument("--gt-cache", metavar="DIR",
                   help="cache the ground truth in DIR (rebuilt when the tables change)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary on stdout")
    return p


def build_table_parser() -> argparse.ArgumentParser:
    p = script_parser("scripts.eval_openloop table",
                      "Render metrics files (M.json) side by side (Table 1 layout).")
    p.add_argument("metrics", nargs="+", help="metrics JSON files written by eval_openloop")
    p.add_argument("--names", nargs="+", help="row names (default: each file's run name or file stem)")
    p.add_argument("--out", help="write the markdown here (default: print it)")
    return p


def _read_metrics(path: str) -> dict[str, Any]:
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
        run_entry(m)
    except FileNotFoundError as e:
        raise UserError(f"metrics file {path} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a metrics file written by eval_openloop ({e!r})") from e
    return m


def table_main(argv: list[str]) -> int:
    args = build_table_parser().parse_args(argv)
    if args.names and len(args.names) != len(args.metrics):
        raise UserError(f"--names has {len(args.names)} names for {len(args.metrics)} metrics files")
    runs = {}
    for i, path in enumerate(args.metrics):
        m = _read_metrics(path)
        name = args.names[i] if args.names else m.get("name") or Path(path).stem
        runs[name] = run_entry(m)
    text = render_table(runs)
    if args.out:
        atomic_write_text(args.out, text)
    else:
        print(text, end="")
    return 0


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["table"]:
        return table_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.checkpoint:
        from training.predict import checkpoint_predictions

        gt = load_ground_truth(args.dataroot, args.version, cache_dir=args.gt_cache, progress=not args.quiet)
        preds, scope, args.predictions, run_name = checkpoint_predictions(args, gt, split_scope)
    else:
        preds = load_predictions(args.predictions)  # validate the input before the (slow) dataset load
        gt = load_ground_truth(args.dataroot, args.version, cache_dir=args.gt_cache, progress=not args.quiet)
        scope = split_scope(gt, args.split)
    metrics = evaluate_predictions(gt, preds, geometry=args.geometry, frame=args.frame, strict=args.strict,
                                   scope=scope, progress=not args.quiet)
    rows = metrics.pop("per_sample")
    name = args.name or (run_name if args.checkpoint else Path(args.predictions).name.removesuffix(".json"))
    metrics.update({"name": name, "split": args.split, "predictions": str(args.predictions)})
    table = render_table({name: run_entry(metrics)})
    try:
        atomic_write_json(args.out, metrics)
        if args.csv:
            write_csv(args.csv, rows)
        if args.markdown:
            table = render_table(update_markdown(args.markdown, name, metrics))
    except OSError as e:
        raise UserError(f"cannot write {e.filename or 'an output file'}: {e.strerror}") from e
    if not args.quiet:
        print(table, end="")
        print(f"\n{metrics['num_samples']} samples evaluated; {metrics['skipped_no_future']} keyframes "
              f"without 6 future keyframes skipped; {metrics['unknown_tokens']['count']} unknown and "
              f"{metrics['missing_tokens']['count']} missing prediction tokens; ground truth collides at "
              f"{metrics['gt_collision_steps']} steps (not counted). Metrics: {args.out}")
    return 0


if __name__ == "__main__":
    cli_main(main)
