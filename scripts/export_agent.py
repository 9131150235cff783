"""Export a driving checkpoint (VAD weights + resolved config, no VLM-AD heads) for the agent and evaluators.

    # untrained model of any config, for smoke tests of the agent and the evaluation pipeline
    python -m scripts.export_agent --random-init --config vad_tiny --out runs/agents/vad_tiny_random
    # the driver of a training checkpoint (the VLM-AD heads are dropped)
    python -m scripts.export_agent --checkpoint runs/train/vad_tiny/ckpt_last --out runs/agents/vad_tiny

The output folder holds model.safetensors, config.yaml and meta.json (format in
models/checkpoint_formats.py) and loads with `models.checkpoint_formats.load_driving_checkpoint(folder)`.
A random-init export says so in meta.json
("random_init": true) and in what this command prints: it drives, but it has learned nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint_formats import export_driving_checkpoint, load_train_checkpoint
from models.configs import get_config
from models.vad import VAD, VADConfig
from vlmad.cli import script_parser
from vlmad.config import load_config
from vlmad.errors import UserError, cli_main


def resolve_model_config(name_or_yaml: str, overrides: list[str]) -> tuple[VADConfig, str]:
    """A named config (vad_nano, vad_tiny, vad_base, vad_base_carla) or a YAML file, plus overrides."""
    path = Path(name_or_yaml)
    if path.suffix in (".yaml", ".yml"):
        return load_config(VADConfig, yaml_path=path, overrides=overrides), path.stem
    return load_config(VADConfig, base=get_config(name_or_yaml), overrides=overrides), name_or_yaml


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.export_agent", __doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--random-init", action="store_true",
                     help="export an untrained model of --config (smoke tests only)")
    src.add_argument("--checkpoint", type=Path, help="training checkpoint folder to take the driver from")
    ap.add_argument("--config", help="model config name (vad_nano, vad_tiny, vad_base, vad_base_carla) or "
                    "YAML file; required with --random-init")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a model config field (with --random-init), e.g. --set num_cams=6")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created or replaced)")
    args = ap.parse_args(argv)

    if args.random_init:
        if not args.config:
            raise UserError("--random-init needs --config (e.g. --config vad_tiny)")
        cfg, name = resolve_model_config(args.config, args.overrides)
        torch.manual_seed(args.seed)
        driver = VAD(cfg)
        meta = {"config_name": name, "random_init": True, "seed": args.seed, "trained_with_vlm_ad": False,
                "note": "randomly initialised, untrained: for smoke tests of the agent and pipelines only"}
        label = f"RANDOM-INIT {name} (untrained, seed {args.seed})"
    else:
        if args.config or args.overrides:
            raise UserError("--config/--set only apply to --random-init; a training checkpoint carries its "
                            "own config")
        ckpt = load_train_checkpoint(args.checkpoint, load_optimizer=False)
        driver, cfg = ckpt.model.driver, ckpt.model_cfg
        meta = {"config_name": ckpt.meta.get("config_name") or cfg.name, "random_init": False,
                "trained_with_vlm_ad": ckpt.model.aux is not None, "vlm_ad_text_dim": ckpt.text_dim,
                "source_checkpoint": str(args.checkpoint.resolve()), "step": ckpt.meta.get("step"),
                "epoch": ckpt.meta.get("epoch"), "training_rig": ckpt.meta.get("training_rig")}
        label = f"{meta['config_name']} from {args.checkpoint} (step {meta['step']})"
    out = export_driving_checkpoint(driver, cfg, args.out, meta)
    n = sum(p.numel() for p in driver.parameters())
    print(f"exported {label}: {n / 1e6:.2f} M parameters -> {out}")
    return 0


if __name__ == "__main__":
    cli_main(main)
