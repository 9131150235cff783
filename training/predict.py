"""Run a trained model over a nuScenes-format dataset: plans (and VLM-AD action predictions) per keyframe.

    plans = predict("runs/vad_tiny", dataroot, version).plans              # {token: (6, 2) ego positions}
    res = predict("runs/vad_tiny/driving", dataroot, version, scenes=val)   # .plans, .actions, .info

`model_or_ckpt` is a `VAD`, a `TrainModel`, or a path: a driving checkpoint folder (or a YAML naming
one), a training checkpoint folder, or a training run folder (its latest training checkpoint, which
carries the VLM-AD heads, else its driving/ export). Plans are future ego positions at +0.5 .. +3 s in
the keyframe's ego frame (x forward, y left): the `scripts.eval_openloop --predictions` contract.

Temporal context, two modes:
  "state" (default; VAD's test-time behaviour and the CARLA agent's): every scene is run frame by frame in
      order, the previous frame's BEV carried as the explicit state (reset at the scene start);
  "queue": every keyframe is run independently with the training queue (cfg.queue_length frames, the
      earlier ones building the previous BEV), batched.
Whole scenes are always run (a state needs its predecessors); only the requested tokens are returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.checkpoint_formats import (
    DRIVING_FORMAT,
    TRAIN_FORMAT,
    load_driving_checkpoint,
    load_train_checkpoint,
    resolve_checkpoint_dir,
)
from models.features import feature_inputs
from models.train_model import TrainModel
from models.vad import VAD, VADConfig
from models.vlm_ad import VLMADHeads
from nusc.dataset import NuScenesVADDataset, collate
from nusc.infos import build_or_load_infos
from teacher.prompts import ACTION_LABELS
from training import checkpoint as ck
from training.data import dataset_config, to_device, unwrap_worker_errors
from vlmad.cli import resolve_device
from vlmad.errors import UserError
from vlmad.io import atomic_write_json

MODES = ("state", "queue")
_TEMPORAL = ("img", "img_from_ego", "can_bus", "cur_from_prev", "prev_valid")  # (B, Tq, ...) feature keys


@dataclass
class LoadedModel:
    """A driver ready for inference plus what is known about where it came from."""

    driver: VAD  # eval mode
    aux: VLMADHeads | None  # the VLM-AD heads when the source was a training checkpoint with them
    cfg: VADConfig
    meta: dict[str, Any] = field(default_factory=dict)  # checkpoint meta (step, val_scenes, ...)
    source: str = "in-memory model"


@dataclass
class Predictions:
    plans: dict[str, np.ndarray]  # token -> (6, 2) future ego positions (ego frame of the keyframe)
    actions: dict[str, dict[str, str]] | None  # token -> {"control", "turn", "lane"} (VLM-AD action head)
    info: dict[str, Any]  # source, mode, number of frames run, ...


def load_model(model_or_ckpt: LoadedModel | VAD | TrainModel | str | Path, device: str | torch.device = "cpu"
               ) -> LoadedModel:
    """Resolve any accepted model source (module docstring) to a `LoadedModel` on `device`."""
    if isinstance(model_or_ckpt, LoadedModel):
        return model_or_ckpt
    if isinstance(model_or_ckpt, TrainModel):
        return LoadedModel(model_or_ckpt.driver.eval(), model_or_ckpt.aux, model_or_ckpt.driver.cfg)
    if isinstance(model_or_ckpt, VAD):
        return LoadedModel(model_or_ckpt.eval(), None, model_or_ckpt.cfg)
    path = Path(model_or_ckpt).expanduser()
    if path.is_dir() and ((path / ck.CKPT_DIR).is_dir() or (path / "driving").is_dir()):  # a run folder
        latest = ck.find_latest(path)
        if latest is None and not (path / "driving" / "meta.json").is_file():
            raise UserError(f"training run {path} has neither a checkpoint nor a driving/ export yet")
        path = latest if latest is not None else path / "driving"
    folder = resolve_checkpoint_dir(path)
    fmt = None
    if (folder / "meta.json").is_file():
        try:
            fmt = json.loads((folder / "meta.json").read_text()).get("format")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            fmt = None  # the loaders below report the corrupt file
    if fmt == TRAIN_FORMAT:
        c = load_train_checkpoint(folder, device=device, load_optimizer=False)
        c.model.eval()
        return LoadedModel(c.model.driver, c.model.aux, c.model_cfg, c.meta, str(folder))
    if fmt not in (None, DRIVING_FORMAT):
        raise UserError(f"{folder}: unknown checkpoint format {fmt!r}")
    driver, cfg, meta = load_driving_checkpoint(folder, device=device)
    return LoadedModel(driver, None, cfg, meta, str(folder))


def heldout_scenes(model: LoadedModel) -> list[str]:
    """The scenes the training run held out (recorded by the trainer in the checkpoint meta)."""
    scenes = model.meta.get("val_scenes")
    if not isinstance(scenes, list) or not scenes:
        raise UserError(f"{model.source} records no held-out scenes (not written by scripts.train, or "
                        "trained with split all); choose --split all or an official split")
    return [str(s) for s in scenes]


def predict(model_or_ckpt: VAD | TrainModel | str | Path, dataroot: str | Path, version: str,
            tokens: list[str] | None = None, scenes: list[str] | None = None, mode: str = "state",
            batch_size: int = 4, device: str | torch.device | None = None, num_workers: int = 2,
            infos: list[dict] | None = None, bf16: bool = False, progress: bool = True,
            frame: str = "ego") -> Predictions:
    """Plans (and action predictions when the model has the VLM-AD action head) for keyframes.

    frame "ego": future ego positions in the ego frame (`out["plan"]`); "lidar": VAD's convention, the
    plan in the model's BEV frame (LIDAR_TOP axes, relative to the lidar: VAD's `ego_fut_preds`), for
    `scripts.eval_openloop --frame lidar` (docs/metrics.md).
    tokens: keyframes to return (default: every keyframe of `scenes`, or of the whole dataset).
    scenes: scene names to run (default: the scenes of `tokens`, or all). `infos`: the records if the
    caller already has them (else nusc.infos.build_or_load_infos). bf16: autocast on CUDA.
    """
    if mode not in MODES:
        raise UserError(f"unknown prediction mode {mode!r}; choose one of {MODES}")
    if frame not in ("ego", "lidar"):
        raise UserError(f"unknown plan frame {frame!r}; choose ego or lidar")
    dev = resolve_device(device)
    m = load_model(model_or_ckpt, dev)
    driver = m.driver.to(dev).eval()
    aux = m.aux.to(dev).eval() if m.aux is not None and len(m.aux.action) else None
    infos = infos if infos is not None else build_or_load_infos(dataroot, version, progress=progress)
    scene_of = {r["token"]: r["scene_name"] for r in infos}
    if tokens is not None:
        unknown = [t for t in tokens if t not in scene_of]
        if unknown:
            raise UserError(f"{len(unknown)} requested token(s) are not keyframes of {version} at {dataroot} "
                            f"(first: {unknown[:3]})")
        wanted_scenes = {scene_of[t] for t in tokens}
    else:
        wanted_scenes = set(scenes) if scenes is not None else set(scene_of.values())
        missing = sorted(wanted_scenes - set(scene_of.values()))
        if missing:
            raise UserError(f"scene(s) {missing[:5]} are not in {version} at {dataroot}")
    order = {name: i for i, name in enumerate(dict.fromkeys(r["scene_name"] for r in infos))}
    run = sorted((r for r in infos if r["scene_name"] in wanted_scenes),
                 key=lambda r: (order[r["scene_name"]], r["frame_idx"]))
    want = set(tokens) if tokens is not None else {r["token"] for r in run}
    if not run:
        raise UserError("no keyframes to run")
    if m.cfg.use_goal_point and any(r.get("goal_point") is None for r in run):
        raise UserError(f"{m.source} is a CARLA variant (use_goal_point: needs route goal points), which "
                        "these records lack (nuScenes has none); evaluate it on data recorded from a route, "
                        "or a model trained without it (scripts.train: carla_inputs drop)")
    queue = 2 if mode == "state" else m.cfg.queue_length  # state mode: the predecessor only for the motion
    ds = NuScenesVADDataset(run, dataroot, dataset_config(m.cfg, run, queue), with_targets=False)
    loader = DataLoader(ds, batch_size=1 if mode == "state" else batch_size, shuffle=False,
                        collate_fn=collate, num_workers=num_workers, pin_memory=dev.type == "cuda")
    plans: dict[str, np.ndarray] = {}
    actions: dict[str, dict[str, str]] | None = {} if aux is not None else None
    state = None
    bar = tqdm(total=len(ds), desc=f"predict ({mode})", unit="frame", disable=not progress)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and dev.type == "cuda"):
        for batch in unwrap_worker_errors(loader):
            inputs = to_device(feature_inputs(batch), dev)
            if mode == "state":
                # the last queue frame only: its motion since the predecessor (cur_from_prev, can_bus
                # deltas, prev_valid) comes from the dataset; its previous BEV is the carried state
                inputs = {k: v[:, -1:] if k in _TEMPORAL else v for k, v in inputs.items()}
                if not bool(inputs["prev_valid"][0, 0]):
                    state = None
                out, state = driver(inputs, state)
            else:
                out, _ = driver(inputs)
            if frame == "lidar":  # VAD's convention: the BEV-frame (LIDAR_TOP) plan of the given command
                cmd = inputs["command"].long().clamp(0, out["plan_offsets_bev"].shape[1] - 1)
                sel = out["plan_offsets_bev"][torch.arange(len(cmd), device=cmd.device), cmd]
                plan = sel.float().cumsum(-2).cpu().numpy()
            else:
                plan = out["plan"].float().cpu().numpy()
            labels = None
            if aux is not None:
                heads = aux(out["f_ego"].float())["action"]
                labels = {k: [ACTION_LABELS[k][i] for i in v.argmax(-1).tolist()] for k, v in heads.items()}
            for i, tok in enumerate(batch["token"]):
                if tok in want:
                    plans[tok] = plan[i].astype(np.float64)
                    if labels is not None:
                        actions[tok] = {k: v[i] for k, v in labels.items()}
            bar.update(len(batch["token"]))
    bar.close()
    info = {"source": m.source, "mode": mode, "frames_run": len(ds), "returned": len(plans),
            "config_name": m.cfg.name, "step": m.meta.get("step"),
            "trained_with_vlm_ad": bool(m.meta.get("trained_with_vlm_ad", m.aux is not None))}
    return Predictions(plans, actions, info)


def plans_to_json(plans: dict[str, np.ndarray]) -> dict[str, list[list[float]]]:
    """The predictions-file form (`scripts.eval_openloop --predictions`): token -> 6 [x, y]."""
    return {t: [[float(x), float(y)] for x, y in np.asarray(p).reshape(6, 2)] for t, p in plans.items()}


def checkpoint_predictions(args: Any, gt: Any, split_scope: Any
                           ) -> tuple[dict[str, np.ndarray], set[str] | None, str, str]:
    """`scripts.eval_openloop --checkpoint`: run the model over the evaluated scope, write the plans (and
    actions) beside --out; returns (plans, scope, predictions path, run name)."""
    m = load_model(args.checkpoint, resolve_device(args.device, "--device"))
    if args.split == "heldout":
        scenes = set(heldout_scenes(m))
        scope = {t for t, s in gt.samples.items() if s.scene_name in scenes}
        if not scope:
            raise UserError(f"none of the held-out scenes of {m.source} ({sorted(scenes)[:3]}...) is in "
                            f"{args.version} at {args.dataroot}: evaluate on the dataset it was trained on")
    else:
        scope = split_scope(gt, args.split)
    tokens = [t for t in gt.samples if scope is None or t in scope]
    res = predict(m, args.dataroot, args.version, tokens=tokens, device=args.device, progress=not args.quiet,
                  frame=args.frame)
    out = Path(args.out)
    stem = out.name.removesuffix(".json")
    path = Path(args.save_predictions) if args.save_predictions else out.with_name(f"{stem}.predictions.json")
    atomic_write_json(path, plans_to_json(res.plans))
    if res.actions:
        atomic_write_json(out.with_name(f"{stem}.actions.json"), res.actions)
    src = Path(m.source)
    name = src.parent.name if src.name == "driving" or src.name.startswith("step_") else src.name
    if src.name.startswith("step_") and src.parent.name == ck.CKPT_DIR:
        name = src.parent.parent.name
    return res.plans, scope, str(path), name
