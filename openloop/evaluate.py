"""Predictions in, metrics out: the referee behind `scripts/eval_openloop.py` (and training's evaluation).

A predictions mapping is `sample token -> (6, 2)` future ego positions in the ego frame of that keyframe.
`evaluate_predictions(gt, preds)` compares it with `openloop.gt.GroundTruth` and returns the metrics dict
of the CLI contract (plus per-sample rows under "per_sample"). Table rendering (the layout of the paper's
Table 1, several runs side by side) lives here too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vlmad.errors import UserError
from vlmad.frames import lidar_xy_to_ego
from vlmad.horizon import FUT_STEPS
from vlmad.io import atomic_write_text

from .gt import GroundTruth, SampleGT
from .metrics import (
    CONVENTION_DOC,
    CONVENTIONS,
    HORIZONS_S,
    CollisionConfig,
    box_collisions,
    l2_per_step,
    summarise,
)

# Named collision geometries. "design" is the project's definition (docs/facts.md section 7): the ego box is
# oriented along the plan. "vad-code" keeps it axis-aligned, as the released VAD / UniAD / ST-P3 code does.
# Combined with --frame lidar (plans of the LIDAR_TOP position, VAD's convention) it is VAD's evaluation.
GEOMETRIES = {"design": CollisionConfig(), "vad-code": CollisionConfig(heading="fixed")}
FRAMES = ("ego", "lidar")
LIST_LIMIT = 50  # tokens listed in the output per category (counts are always complete)


# ----------------------------------------------------------------------------------------------------
# Predictions file
# ----------------------------------------------------------------------------------------------------
def parse_predictions(obj: Any, source: str = "predictions") -> dict[str, np.ndarray]:
    """Validate a decoded predictions object: {token: 6 x [x, y] finite numbers} -> {token: (6, 2)}."""
    if not isinstance(obj, dict):
        raise UserError(f"{source}: expected a JSON object mapping sample token -> 6 [x, y] positions, "
                        f"got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for tok, value in obj.items():
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (FUT_STEPS, 2):
            shape = "ragged or non-numeric" if arr is None else f"shape {list(arr.shape)}"
            raise UserError(f"{source}: token {tok!r}: expected a list of {FUT_STEPS} [x, y] positions "
                            f"(metres), got {shape}")
        if not np.isfinite(arr).all():
            raise UserError(f"{source}: token {tok!r}: positions contain NaN or infinity")
        out[str(tok)] = arr
    return out


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a predictions JSON file (see `parse_predictions`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"predictions file {path} is not valid JSON: {e}") from e
    return parse_predictions(obj, str(path))


def _lidar_plan(s: SampleGT, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction in ego axes, ground truth, origin) for a plan in VAD's LIDAR_TOP convention.

    VAD's targets are future LIDAR_TOP positions minus the current one, in lidar axes (x right, y forward).
    The prediction is rotated into ego axes with the keyframe's calibrated rotation and compared with the
    same quantity from the ground truth; its reference point (the lidar) sits at the lidar's mounting
    position, which places the ego box for the collision test.
    """
    if s.ego_from_lidar is None:
        raise UserError(f"--frame lidar: sample {s.token} has no LIDAR_TOP calibration; give the predictions "
                        f"in the ego frame instead")
    return lidar_xy_to_ego(pred, s.ego_from_lidar[:3, :3]), s.lidar_fut, s.ego_from_lidar[:2, 3]


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
def _listing(tokens: list[str]) -> dict[str, Any]:
    return {"count": len(tokens), "tokens": tokens[:LIST_LIMIT]}


def split_scope(gt: GroundTruth, split: str) -> set[str] | None:
    """Keyframe tokens of an official nuScenes split (train, val, mini_val, ...); None for "all"."""
    if split == "all":
        return None
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise UserError(f"unknown split {split!r}; choose all or one of {sorted(splits)}")
    scenes = set(splits[split])
    scope = {t for t, s in gt.samples.items() if s.scene_name in scenes}
    if not scope:
        raise UserError(f"no scene of split {split!r} in {gt.version} at {gt.dataroot}; use --split all")
    return scope


def evaluate_predictions(gt: GroundTruth, preds: dict[str, np.ndarray], geometry: str = "design",
                         frame: str = "ego", strict: bool = False, scope: set[str] | None = None,
                         progress: bool = False) -> dict[str, Any]:
    """Metrics of `preds` (token -> (6, 2) plan) against `gt`, both conventions.

    frame "ego": plans are future ego-origin positions in the keyframe's ego frame (x forward, y left);
    frame "lidar": VAD's convention, future LIDAR_TOP positions relative to the current one in lidar axes
    (x right, y forward), scored against the same quantity of the ground truth.

    `scope` restricts the keyframes considered (e.g. `split_scope(gt, "val")`); None = all of `gt`.
    Keyframes without all 6 future keyframes are skipped and counted. Tokens of `preds` outside the scope
    and evaluable keyframes absent from `preds` are reported; with `strict` they raise `UserError`.
    Returns the M.json dict: num_samples, vad/uniad {l2, collision (percent)}, counts, descriptions, and
    "per_sample" (list of row dicts for the CSV; callers drop it before writing M.json).
    """
    if geometry not in GEOMETRIES:
        raise UserError(f"unknown collision geometry {geometry!r}; choose one of {sorted(GEOMETRIES)}")
    if frame not in FRAMES:
        raise UserError(f"unknown frame {frame!r}; choose one of {FRAMES}")
    cfg = GEOMETRIES[geometry]
    in_scope = gt.samples if scope is None else {t: s for t, s in gt.samples.items() if t in scope}
    unknown = [t for t in preds if t not in in_scope]
    missing: list[str] = []
    skipped, skipped_pred = 0, 0
    tokens: list[str] = []
    for tok, s in in_scope.items():
        if not s.valid:
            skipped += 1
            skipped_pred += tok in preds
        elif tok not in preds:
            missing.append(tok)
        else:
            tokens.append(tok)
    if strict and (unknown or missing):
        raise UserError(f"--strict: {len(unknown)} prediction token(s) not among the evaluated keyframes "
                        f"(first: {unknown[:3]}), {len(missing)} evaluable keyframe(s) missing from the "
                        f"predictions (first: {missing[:3]})")
    if not tokens:
        raise UserError(f"no prediction matches an evaluable keyframe of {gt.version} at {gt.dataroot} "
                        f"({len(preds)} predictions, {len(unknown)} unknown tokens, {skipped} keyframes "
                        f"without 6 future keyframes): wrong --dataroot/--version?")

    n = len(tokens)
    l2 = np.zeros((n, FUT_STEPS))
    col = np.zeros((n, FUT_STEPS), bool)
    gt_col = np.zeros((n, FUT_STEPS), bool)
    rows = []
    for i, tok in enumerate(tqdm(tokens, desc="open-loop eval", unit="sample", disable=not progress)):
        s = gt.samples[tok]
        if frame == "lidar":
            pred, target, origin = _lidar_plan(s, preds[tok])
        else:
            pred, target, origin = preds[tok], s.ego_fut, None
        agents = (s.agent_fut_xy, s.agent_fut_yaw, s.agent_size, s.agent_fut_mask)
        l2[i] = l2_per_step(pred, target)
        col[i] = box_collisions(pred, *agents, cfg, origin)
        gt_col[i] = box_collisions(target, *agents, cfg, origin)
        row: dict[str, Any] = {"token": tok, "scene": s.scene_name, "frame_idx": s.frame_idx}
        row.update({f"l2_t{t + 1}": round(float(l2[i, t]), 6) for t in range(FUT_STEPS)})
        row.update({f"col_t{t + 1}": int(col[i, t]) for t in range(FUT_STEPS)})
        row.update({f"gt_col_t{t + 1}": int(gt_col[i, t]) for t in range(FUT_STEPS)})
        rows.append(row)

    out: dict[str, Any] = {"num_samples": n}
    out.update(summarise(l2, col, gt_col))
    out.update({
        "num_keyframes": len(in_scope),
        "skipped_no_future": skipped,
        "skipped_predictions": skipped_pred,
        "unknown_tokens": _listing(unknown),
        "missing_tokens": _listing(missing),
        "gt_collision_steps": int(gt_col.sum()),
        "gt_collision_samples": int(gt_col.any(1).sum()),
        "frame": frame,
        "collision_geometry": {"name": geometry, **asdict(cfg)},
        "conventions": dict(CONVENTION_DOC),
        "dataset": {"dataroot": gt.dataroot, "version": gt.version},
        "per_sample": rows,
    })
    return out


# ----------------------------------------------------------------------------------------------------
# Tables (layout of the paper's Table 1: L2 (m) and collision (%) at 1/2/3 s and their average)
# ----------------------------------------------------------------------------------------------------
RUNS_MARKER = "<!-- openloop-runs v1 "
_RUNS_RE = re.compile(re.escape(RUNS_MARKER) + r"(.*?) -->", re.S)
_TITLES = {
    "vad": "VAD / ST-P3 convention (value at k s = mean over all 0.5 s steps up to k s)",
    "uniad": "UniAD convention (value at k s = the value at the k s step)",
}


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def run_entry(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of a metrics dict that a table needs (keeps the embedded run list small).

    Raises KeyError / TypeError when `metrics` does not have the M.json layout.
    """
    geometry = metrics.get("geometry") or metrics.get("collision_geometry", {}).get("name", "design")
    entry = {"num_samples": int(metrics["num_samples"]), **{c: metrics[c] for c in CONVENTIONS},
             "geometry": str(geometry)}
    for c in CONVENTIONS:
        for kind in ("l2", "collision"):
            for h in [f"{k}s" for k in HORIZONS_S] + ["avg"]:
                v = entry[c][kind][h]
                if v is not None and not isinstance(v, (int, float)):
                    raise TypeError(f"{c}.{kind}.{h} is {type(v).__name__}, not a number")
    return entry


def render_table(runs: dict[str, dict[str, Any]]) -> str:
    """Markdown: one table per convention, one row per run (name -> `run_entry` dict)."""
    hs = [f"{k}s" for k in HORIZONS_S] + ["avg"]
    head = ("| Method | " + " | ".join(f"L2 (m) {h}" for h in hs) + " | "
            + " | ".join(f"Collision (%) {h}" for h in hs) + " | Samples |")
    sep = "|---" + "|---:" * (2 * len(hs) + 1) + "|"
    parts = ["# Open-loop planning (nuScenes)", "",
             "L2 in metres, collision rate in percent; 1 s / 2 s / 3 s = steps 2 / 4 / 6 at 0.5 s. "
             "Numbers are comparable only within one convention (docs/metrics.md)."]
    geoms = sorted({r.get("geometry", "design") for r in runs.values()})
    if geoms != ["design"]:
        parts.append(f"Collision geometries used: {', '.join(geoms)}.")
    for conv in CONVENTIONS:
        parts += ["", f"## {_TITLES[conv]}", "", head, sep]
        for name, r in runs.items():
            cells = [_fmt(r[conv]["l2"][h]) for h in hs] + [_fmt(r[conv]["collision"][h]) for h in hs]
            parts.append(f"| {name} | " + " | ".join(cells) + f" | {r['num_samples']} |")
    return "\n".join(parts) + "\n"


def read_markdown_runs(path: str | Path) -> dict[str, dict[str, Any]]:
    """Runs embedded in a markdown file written by `update_markdown` ({} when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    m = _RUNS_RE.search(path.read_text(encoding="utf-8"))
    if m is None:
        raise UserError(f"{path} exists but was not written by eval_openloop (no run list inside); "
                        f"choose another --markdown file")
    try:
        runs = json.loads(m.group(1))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: the embedded run list is corrupt ({e}); delete the file to start over"
                        ) from e
    try:
        return {str(name): run_entry(r) for name, r in runs.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: the embedded run list is corrupt ({e!r}); delete the file to start over"
                        ) from e


def update_markdown(path: str | Path, name: str, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Add (or replace, by `name`) one run in the markdown table file; returns all runs. Atomic write."""
    runs = read_markdown_runs(path)
    runs[name] = run_entry(metrics)
    # ">" only occurs inside JSON strings, where \u003e is an equivalent escape: the comment cannot end early
    blob = json.dumps(runs, separators=(",", ":")).replace(">", "\\u003e")
    text = render_table(runs) + "\n" + RUNS_MARKER + blob + " -->\n"
    atomic_write_text(path, text)
    return runs
