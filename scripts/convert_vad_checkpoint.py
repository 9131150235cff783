"""Convert a released hustvl/VAD checkpoint into this project's driving checkpoint.

    python -m scripts.convert_vad_checkpoint --src VAD_tiny.pth --config vad_tiny --out ckpt/vad_tiny_official
    python -m scripts.convert_vad_checkpoint --src VAD_base.pth --config vad_base --out ckpt/vad_base_official

The output folder (model.safetensors, config.yaml, meta.json; models/checkpoint_formats.py) is what the CARLA
agent, `scripts.eval_openloop --checkpoint` and `scripts.train --init-from` read. The checkpoint is read with
`torch.load(weights_only=True)` only; mmcv's `meta` / `optimizer` entries are ignored. Every official key is
mapped (models/convert_official.py); bookkeeping entries (loss constants, BatchNorm counters, VAD-Tiny's
unused `level_embeds` rows) are listed as ignored; a missing or unexpected key, a wrong shape or a config
mismatch (Tiny weights into vad_base) stops with one line naming the keys.

The converted config keeps VAD's behaviour: `bev_align=official`, `can_bus_from_motion=False` (the CAN bus
as the dataset gives it: VAD's deltas) and the image normalisation given by --img-norm. The released
checkpoints (August 2023) predate VAD's `img_norm_cfg` fix (VAD issue #9, 29 Aug 2023): they were trained
with the caffe setting (BGR, mean 103.53/116.28/123.675, std 1), hence the default `caffe`; weights trained
with the fixed configs need `--img-norm torchvision` (RGB, mean 123.675/116.28/103.53, std
58.395/57.12/57.375).
"""

from __future__ import annotations

from pathlib import Path

from models.checkpoint_formats import export_driving_checkpoint
from models.convert_official import convert_state_dict, converted_config, load_official_checkpoint
from models.features import IMG_NORMS
from models.vad import VAD
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.rig import NUSCENES_RIG, describe_rig

OFFICIAL_PRESETS = ("vad_tiny", "vad_base")


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.convert_vad_checkpoint", __doc__)
    ap.add_argument("--src", required=True, type=Path, help="the official .pth (VAD_tiny.pth, VAD_base.pth)")
    ap.add_argument("--config", required=True, help=f"the preset the weights belong to: {OFFICIAL_PRESETS}")
    ap.add_argument("--out", required=True, type=Path, help="driving checkpoint folder to write")
    ap.add_argument("--img-norm", default="caffe", choices=sorted(IMG_NORMS),
                    help="image normalisation the weights were trained with (default caffe: the released "
                         "checkpoints; see above)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. num_classes=9 for other VAD variants (repeatable)")
    args = ap.parse_args(argv)
    if args.config not in OFFICIAL_PRESETS:
        raise UserError(
            f"--config {args.config!r}: the released VAD checkpoints are {list(OFFICIAL_PRESETS)}"
        )
    cfg = converted_config(args.config, args.img_norm, args.set)
    official, ignored_top = load_official_checkpoint(args.src)
    state, ignored = convert_state_dict(official, cfg)
    model = VAD(cfg)
    model.load_state_dict(state, strict=True)
    counters = [k for k in ignored if k.endswith("num_batches_tracked")]
    others = [k for k in ignored if not k.endswith("num_batches_tracked")]
    meta = {"config_name": cfg.name, "source_checkpoint": str(args.src), "converted_from": "hustvl/VAD",
            "ignored_official_keys": ignored, "ignored_entries": ignored_top,
            # hustvl/VAD trained on nuScenes: its cameras are (within cm) the nominal nuScenes rig
            "training_rig": describe_rig(NUSCENES_RIG)}
    out = export_driving_checkpoint(model, cfg, args.out, meta=meta)
    print(f"converted {len(state)} tensors from {args.src} into {out} (config {cfg.name}, img_norm "
          f"{cfg.img_norm}, bev_align {cfg.bev_align})")
    print(f"ignored: {', '.join(others)}, {len(counters)} BatchNorm num_batches_tracked"
          + (f"; top-level entries {ignored_top}" if ignored_top else ""))
    return 0


if __name__ == "__main__":
    cli_main(main)
