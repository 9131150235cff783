"""Train VAD (optionally with the VLM-AD heads) on a nuScenes-format dataset.

    python -m scripts.train --config vad_tiny --dataroot D --version v1.0-trainval --out runs/vad_tiny
    python -m scripts.train --config vad_tiny --dataroot D --version V --out RUN --vlm-ad \
        --features F.safetensors
    python -m scripts.train --config-file run.yaml --set lr=1e-4 --set vlm_ad.lambda2=0.2
    python -m scripts.train --init-from ckpt/vad_tiny_official --dataroot D --version V --out RUN
    python -m scripts.train --out RUN --resume                 # continue RUN with its own config
    torchrun --nproc_per_node=8 -m scripts.train --config vad_base ...   # DDP, one process per GPU

Outputs in --out: config.yaml (resolved), model.yaml, checkpoints/step_*/ (+ latest.json), log.jsonl,
tb/ (TensorBoard), driving/ (the exported driving checkpoint) and summary.json. See docs/training.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.config import TrainConfig, load_train_config
from training.loop import train
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main

# CLI flag -> TrainConfig field (flags left out keep the YAML / saved value)
FLAGS = {"config": "model", "dataroot": "dataroot", "version": "version", "out": "out",
         "features": "features", "max_steps": "max_steps", "epochs": "epochs", "batch_size": "batch_size",
         "grad_accum": "grad_accum",
         "num_workers": "num_workers", "max_minutes": "max_minutes", "device": "device", "seed": "seed",
         "backbone_weights": "backbone_weights", "init_from": "init_from"}


def build_parser() -> argparse.ArgumentParser:
    p = script_parser("scripts.train", __doc__)
    p.add_argument("--config", help="model preset (vad_nano = test size, vad_tiny, vad_base, vad_base_carla) "
                   "or a VADConfig YAML")
    p.add_argument("--config-file", help="YAML with TrainConfig fields (see training/config.py)")
    p.add_argument("--dataroot", help="nuScenes-format root (holds <version>/ and samples/)")
    p.add_argument("--version", help="dataset version, e.g. v1.0-trainval or v1.0-mini")
    p.add_argument("--out", help="run folder (checkpoints, logs, driving checkpoint)")
    p.add_argument("--vlm-ad", action="store_true", help="train with the VLM-AD heads (needs --features)")
    p.add_argument("--features", help="VLM-AD feature store (.safetensors from scripts.encode_text)")
    p.add_argument("--max-steps", type=int, help="optimiser steps of the run (overrides epochs)")
    p.add_argument("--epochs", type=int, help="epochs over the training split (default 60)")
    p.add_argument("--batch-size", type=int, help="samples per process per micro-step (default 1)")
    p.add_argument("--grad-accum", type=int, help="micro-steps per optimiser step (default 1)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers per process (default 4)")
    p.add_argument("--max-minutes", type=float, help="stop, checkpoint and export after this wall time")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--seed", type=int, help="seed of init, data order and dropout (default 0)")
    p.add_argument("--backbone-weights", metavar="PTH",
                   help="torchvision ResNet-50 ImageNet weights (.pth) for the image backbone, loaded before "
                        "step 0 (VAD starts from them); default: random init")
    p.add_argument("--init-from", metavar="DIR",
                   help="driving checkpoint (e.g. from scripts.convert_vad_checkpoint) whose weights start "
                        "the run; without --config the run also takes its model config (DIR/config.yaml)")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --model-set dropout=0.0 (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config field, e.g. --set lr=1e-4 --set vlm_ad.lambda2=0.2")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (with the run's saved config; "
                        "only non-trajectory fields such as max_steps or num_workers may change)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- the run's saved config (with --resume) or --config-file <- flags <- --set overrides."""
    base = None
    saved = Path(args.out) / "config.yaml" if args.out else None
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN (the run folder to continue)")
        if saved.is_file():
            base = load_train_config(yaml_path=saved)
    cfg = load_train_config(base=base, yaml_path=args.config_file if base is None else None)
    if args.resume and base is not None and args.config_file:
        raise UserError("--resume continues with the run's saved config.yaml; do not pass --config-file")
    data = {}
    for flag, name in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[name] = value
    if args.init_from and args.config is None and not args.resume:
        from models.checkpoint_formats import CONFIG, resolve_checkpoint_dir

        data["model"] = str(resolve_checkpoint_dir(args.init_from) / CONFIG)
    if args.vlm_ad:
        data["vlm_ad.enabled"] = True
    if args.model_set:
        # a flag already in the base config adds nothing: `--resume` with the run's own flags repeated (as
        # scripts.experiment resumes) must keep the saved list, or the resume check refuses the run
        extra = [o for o in args.model_set if o not in cfg.model_overrides]
        data["model_overrides"] = list(cfg.model_overrides) + extra
    if args.quiet:
        data["progress"] = False
    # flags go through the same override path as --set (so YAML typing and validation are identical)
    cfg = load_train_config(base=cfg, overrides=[f"{k}={_yaml(v)}" for k, v in data.items()] + args.overrides)
    if not cfg.dataroot:
        raise UserError("no dataset: pass --dataroot D --version V (or set them in --config-file)")
    return cfg


def _yaml(v) -> str:
    import json

    return json.dumps(v)  # JSON is YAML: strings stay strings ("1e-4" as text, paths with colons, ...)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    summary = train(cfg, resume=args.resume)
    return 0 if summary.get("steps", 0) > 0 else 1


if __name__ == "__main__":
    cli_main(main)
