"""Visualise plans on nuScenes keyframes: BEV + front camera per sample, and a video over a scene.

    python -m scripts.visualize --dataroot D --version V --predictions P.json --out DIR
        [--actions A.json] [--scene NAME | --samples N] [--frame ego|lidar] [--fps 2]

Per sample, DIR/<scene>/<frame>_<token>.png shows
- left: bird's-eye view (x forward = up, y left = left) with the map vectors of the sample record (dividers,
  crossings, boundaries; empty without the map expansion), the ground-truth agent boxes and their futures,
  the ego box, the ground-truth ego trajectory (green) and the predicted one (red; steps that collide under
  the metric's test are marked with a cross);
- right: the front camera with both trajectories projected on the ground, and, when A.json gives them, the
  predicted control / turn / lane actions as text (the layout of the paper's Fig. 8-15).
With --scene, DIR/<scene>.mp4 strings the frames together (GIF when no mp4 encoder is available).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg canvas, no pyplot global state
from matplotlib.figure import Figure
from matplotlib.patches import Polygon as MplPolygon
from tqdm import tqdm

from nusc.classes import DETECTION_CLASSES, MAP_CLASSES
from nusc.infos import build_or_load_infos
from openloop.evaluate import FRAMES, GEOMETRIES, load_predictions
from openloop.gt import GroundTruth, SampleGT, load_ground_truth
from openloop.metrics import box_collisions, ego_boxes
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.frames import (
    invert_transform,
    lidar_xy_to_ego,
    make_transform,
    project_points,
    rot_z,
    transform_points,
)

MAP_COLOURS = {"divider": "#f0a030", "ped_crossing": "#3070e0", "boundary": "#505050"}
AGENT_COLOURS = {"pedestrian": "#d040c0", "bicycle": "#20a0a0", "motorcycle": "#20a0a0",
                 "barrier": "#808080", "traffic_cone": "#e07020"}
GT_COLOUR, PRED_COLOUR = "#20b040", "#e02020"
ACTION_KEYS = ("control", "turn", "lane")
BEV_X, BEV_Y = (-20.0, 40.0), (-20.0, 20.0)  # metres shown: x (forward) and y (left)


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def load_actions(path: str | Path) -> dict[str, dict[str, str]]:
    """A.json {token: {"control": label | {label: prob}, "turn": ..., "lane": ...}} -> {token: {key: str}}."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UserError(f"actions file {path} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"actions file {path} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected an object mapping sample token -> {{control, turn, lane}}")
    out = {}
    for tok, acts in obj.items():
        if not isinstance(acts, dict):
            raise UserError(f"{path}: token {tok!r}: expected an object with keys {ACTION_KEYS}")
        text = {}
        for k, v in acts.items():
            if isinstance(v, str):
                text[k] = v
            elif isinstance(v, dict) and v and all(isinstance(p, (int, float)) for p in v.values()):
                best = max(v, key=v.get)
                text[k] = f"{best} ({float(v[best]):.2f})"
            else:
                raise UserError(f"{path}: token {tok!r}, {k!r}: expected a label or {{label: probability}}")
        out[str(tok)] = text
    return out


def plan_in_ego(s: SampleGT, pred: np.ndarray | None, frame: str) -> tuple[np.ndarray | None, np.ndarray]:
    """(plan as ego-frame positions of its reference point, that reference point's origin (2,))."""
    if pred is None or frame == "ego":
        return pred, np.zeros(2)
    if s.ego_from_lidar is None:
        raise UserError(f"--frame lidar: sample {s.token} has no LIDAR_TOP calibration")
    origin = s.ego_from_lidar[:2, 3]
    return lidar_xy_to_ego(pred, s.ego_from_lidar[:3, :3]) + origin, origin


# ----------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------
def box_outline(x: float, y: float, length: float, width: float, yaw: float) -> np.ndarray:
    """(4, 2) corners of a box in the ego frame."""
    c = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * [length / 2, width / 2]
    return transform_points(make_transform(rot_z(yaw), [x, y, 0.0]), c)


def _bev_xy(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ego (x fwd, y left) -> plot coordinates (horizontal = -y so that left is left, vertical = x)."""
    pts = np.asarray(pts).reshape(-1, 2)
    return -pts[:, 1], pts[:, 0]


def draw_bev(ax, s: SampleGT, rec: dict | None, gt_path: np.ndarray, plan: np.ndarray | None,
             origin: np.ndarray, geometry: str) -> None:
    """BEV panel. gt_path, plan: (T, 2) ego-frame positions of the plan's reference point (now: `origin`)."""
    cfg = GEOMETRIES[geometry]
    for m in (rec or {}).get("map", []):
        name = MAP_CLASSES[int(m["cls"])]
        ax.plot(*_bev_xy(np.asarray(m["pts"])), color=MAP_COLOURS[name], lw=1.2, zorder=1)
    for b, lab, fut, mask in zip(s.agent_box, s.agent_label, s.agent_fut_xy, s.agent_fut_mask):
        colour = AGENT_COLOURS.get(DETECTION_CLASSES[int(lab)], "#3050a0")
        ax.add_patch(MplPolygon(np.stack(_bev_xy(box_outline(b[0], b[1], b[3], b[4], b[6])), 1), closed=True,
                                fill=False, ec=colour, lw=1.0, zorder=2))
        if mask.any():
            ax.plot(*_bev_xy(fut[mask]), ".", color=colour, ms=2, zorder=2)
    centre, yaw = ego_boxes(np.zeros((1, 2)), cfg, origin)
    ego = box_outline(*centre[0], cfg.ego_length, cfg.ego_width, yaw[0])
    ax.add_patch(MplPolygon(np.stack(_bev_xy(ego), 1), closed=True, fc="#ffd000", ec="k", lw=0.8, zorder=3))
    if len(gt_path):
        ax.plot(*_bev_xy(np.vstack([origin, gt_path])), "-o", color=GT_COLOUR, ms=3, lw=1.5, zorder=4,
                label="ground truth")
    if plan is not None:
        ax.plot(*_bev_xy(np.vstack([origin, plan])), "-o", color=PRED_COLOUR, ms=3, lw=1.5, zorder=5,
                label="prediction")
        col = box_collisions(plan - origin, s.agent_fut_xy, s.agent_fut_yaw, s.agent_size, s.agent_fut_mask,
                             cfg, origin)
        if col.any():
            ax.plot(*_bev_xy(plan[col]), "x", color="k", ms=9, mew=2, zorder=6, label="collision")
    ax.set_xlim(-BEV_Y[1], -BEV_Y[0])
    ax.set_ylim(*BEV_X)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)


def _ground_polyline(img: np.ndarray, img_from_ego: np.ndarray, pts: np.ndarray, colour: tuple[int, int, int],
                     scale: float) -> None:
    """Project ego-frame ground points (N, 2) and draw them as a polyline with dots (RGB image, in place)."""
    pts3 = np.concatenate([pts, np.zeros((len(pts), 1))], 1)
    uv, _, front = project_points(img_from_ego, pts3)
    uv = uv[front]
    if len(uv) == 0:
        return
    p = np.round(uv * scale).astype(np.int32)
    thick = max(1, round(2 * scale))
    cv2.polylines(img, [p.reshape(-1, 1, 2)], False, colour, thick, cv2.LINE_AA)
    for q in p:
        cv2.circle(img, (int(q[0]), int(q[1])), thick + 1, colour, -1, cv2.LINE_AA)


def front_image(dataroot: Path, rec: dict | None, gt_path: np.ndarray, plan: np.ndarray | None,
                origin: np.ndarray) -> np.ndarray:
    """Front camera (RGB) with the ground-truth (green) and predicted (red) trajectories drawn on it."""
    cam = (rec or {}).get("cams", {}).get("CAM_FRONT")
    if cam is None:
        return np.full((225, 400, 3), 200, np.uint8)
    img = cv2.imread(str(dataroot / cam["path"]), cv2.IMREAD_COLOR)
    if img is None:
        img = np.full((int(cam["height"]), int(cam["width"]), 3), 200, np.uint8)
        cv2.putText(img, "image missing", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    k = np.eye(4)
    k[:3, :3] = np.asarray(cam["intrinsics"])
    img_from_ego = k @ invert_transform(np.asarray(cam["ego_from_cam"]))
    scale = img.shape[1] / float(cam["width"])
    if len(gt_path):
        _ground_polyline(img, img_from_ego, np.vstack([origin, gt_path]), (40, 180, 60), scale)
    if plan is not None:
        _ground_polyline(img, img_from_ego, np.vstack([origin, plan]), (230, 30, 30), scale)
    return img


def render_sample(dataroot: Path, s: SampleGT, rec: dict | None, pred: np.ndarray | None,
                  actions: dict[str, str] | None, frame: str = "ego", geometry: str = "design") -> np.ndarray:
    """One figure (H, W, 3) uint8 RGB: BEV on the left, front camera (+ action text) on the right."""
    plan, origin = plan_in_ego(s, pred, frame)
    target = s.lidar_fut if frame == "lidar" else s.ego_fut  # what the plan is scored against
    gt_path = target[s.ego_fut_mask] + origin
    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax_bev = fig.add_axes((0.01, 0.02, 0.32, 0.9))
    ax_cam = fig.add_axes((0.35, 0.22, 0.64, 0.7))
    draw_bev(ax_bev, s, rec, gt_path, plan, origin, geometry)
    ax_cam.imshow(front_image(dataroot, rec, gt_path, plan, origin))
    ax_cam.set_axis_off()
    title = f"{s.scene_name}  frame {s.frame_idx}  {s.token[:12]}"
    if plan is not None and s.valid:
        err = np.linalg.norm(plan - origin - target, axis=1)
        title += f"   L2 @1/2/3 s: {err[1]:.2f} / {err[3]:.2f} / {err[5]:.2f} m"
    fig.suptitle(title, fontsize=10)
    if actions:
        text = "   ".join(f"{k}: {actions[k]}" for k in ACTION_KEYS if k in actions)
        extra = [f"{k}: {v}" for k, v in actions.items() if k not in ACTION_KEYS]
        fig.text(0.35, 0.12, "predicted actions - " + text, fontsize=11)
        if extra:
            fig.text(0.35, 0.06, "   ".join(extra), fontsize=9)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    """mp4 through cv2.VideoWriter; GIF through Pillow when no mp4 encoder is available. Returns the file."""
    h, w = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if writer.isOpened():
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        if tmp.is_file() and tmp.stat().st_size > 0:
            tmp.replace(path)
            return path
    tmp.unlink(missing_ok=True)
    from PIL import Image

    gif = path.with_suffix(".gif")
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(gif, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return gif


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def select_tokens(gt: GroundTruth, preds: dict[str, Any], scene: str | None, samples: int) -> list[str]:
    if scene is not None:
        toks = [t for t, s in gt.samples.items() if s.scene_name == scene]
        if not toks:
            names = ", ".join(gt.scene_names()[:10])
            raise UserError(f"scene {scene!r} not in {gt.version}; scenes: {names}")
        return toks
    toks = [t for t in gt.samples if t in preds] or list(gt.samples)
    return toks[:samples]


def build_parser() -> argparse.ArgumentParser:
    p = script_parser("scripts.visualize", __doc__)
    p.add_argument("--dataroot", required=True, help="nuScenes root (the folder holding <version>/)")
    p.add_argument("--version", required=True, help="dataset version, e.g. v1.0-mini")
    p.add_argument("--predictions", required=True, help="P.json as for eval_openloop (token -> 6 [x, y])")
    p.add_argument("--actions", help='A.json: token -> {"control": ..., "turn": ..., "lane": ...}')
    p.add_argument("--out", required=True, help="output folder")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--scene", help="render every keyframe of this scene (e.g. scene-0103) and a video")
    sel.add_argument("--samples", type=int, default=8,
                     help="render the first N predicted keyframes (default 8)")
    p.add_argument("--frame", choices=FRAMES, default="ego",
                   help="plan convention of P.json (see eval_openloop)")
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), default="design", help="collision ego box")
    p.add_argument("--fps", type=float, default=2.0, help="video frame rate (keyframes are 2 Hz)")
    p.add_argument("--infos", help="sample-record cache file (default: nusc.infos' default beside the data)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples is not None and args.samples < 1:
        raise UserError("--samples must be at least 1")
    preds = load_predictions(args.predictions)
    actions = load_actions(args.actions) if args.actions else {}
    dataroot = Path(args.dataroot)
    gt = load_ground_truth(dataroot, args.version)
    records = {r["token"]: r for r in build_or_load_infos(dataroot, args.version, cache=args.infos)}
    tokens = select_tokens(gt, preds, args.scene, args.samples)
    out = Path(args.out)
    frames = []
    for tok in tqdm(tokens, desc="render", unit="sample"):
        s = gt.samples[tok]
        img = render_sample(dataroot, s, records.get(tok), preds.get(tok), actions.get(tok), args.frame,
                            args.geometry)
        path = out / s.scene_name / f"{s.frame_idx:03d}_{tok}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        frames.append(img)
    print(f"wrote {len(frames)} images under {out}")
    if args.scene is not None:
        print(f"video: {write_video(frames, out / f'{args.scene}.mp4', args.fps)}")
    return 0


if __name__ == "__main__":
    cli_main(main)
