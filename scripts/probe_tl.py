"""Can the traffic-light branch read the light from these images? Train it alone and measure (a probe).

    python -m scripts.probe_tl --dataroot runs/main/data --version v1.0-mini --steps 1000 --lr 2e-4
    python -m scripts.probe_tl --dataroot D --version V --steps 2500 --batch-size 8 --lr 1e-3 --out p.json

The CARLA variant's traffic-light branch (models/motion_planning.py: TrafficLightBranch, the model preset's
crop and width) is trained from random weights on the training scenes' front images, exactly as the
training pipeline feeds them (training.data.dataset_config: same resize, padding and normalisation), with
the cross-entropy of the full model and nothing else: no planner, no BEV, no shared optimiser. The held-out
scenes (training.data.split_scenes) are then classified. The answer separates "the pixels do not carry the
light's state" (probe at the prior) from "the driving run does not learn it" (probe above the prior, the
driving run's traffic-light loss at the prior): docs/experiments.md.

Prints and writes (--out) held-out accuracy, per-class recall and the prior (always the most frequent
training class), and the training loss against the entropy of the class shares (the loss of a branch that
has learned only the shares). Records without a traffic-light label (real nuScenes) cannot be probed.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.configs import build_config
from models.motion_planning import TrafficLightBranch
from nusc.dataset import TL_CLASSES, NuScenesVADDataset, traffic_light_label
from nusc.infos import build_or_load_infos
from training.data import dataset_config, split_scenes
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_json

CLASS_NAMES = (*TL_CLASSES, "none")


def front_images(infos: list[dict], dataroot: str, model_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) normalised front images as the model sees them, (N,) labels (CLASS_NAMES order)."""
    dcfg = dataset_config(model_cfg, infos, queue_length=1)
    ds = NuScenesVADDataset(infos, dataroot, dcfg, with_targets=False)
    imgs = [ds[i]["img"][-1, 0] for i in tqdm(range(len(ds)), desc="images", leave=False)]
    return torch.stack(imgs), torch.tensor([traffic_light_label(r) for r in infos])


def class_entropy(labels: torch.Tensor) -> float:
    """Entropy (nats) of the class shares: the cross-entropy of a classifier that learned only them."""
    p = torch.bincount(labels, minlength=len(CLASS_NAMES)).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def probe(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model_cfg = build_config(args.config, overrides=[f"frozen_stages={args.frozen_stages}"])
    infos = build_or_load_infos(args.dataroot, args.version, cache=args.infos_cache, progress=False)
    if not infos or any(traffic_light_label(r) < 0 for r in infos):
        raise UserError("the dataset has records without a traffic-light label (privileged traffic_light): "
                        "only data recorded from a route (offline world, CARLA) can be probed")
    train_sc, val_sc, _ = split_scenes([r["scene_name"] for r in infos], args.version, args.split,
                                       args.val_fraction)
    train_set, val_set = set(train_sc), set(val_sc)
    tr = [r for r in infos if r["scene_name"] in train_set]
    va = [r for r in infos if r["scene_name"] in val_set]
    if not tr or not va:
        raise UserError(f"need training and held-out scenes (got {len(tr)} / {len(va)} records)")
    x_tr, y_tr = front_images(tr, args.dataroot, model_cfg)
    x_va, y_va = front_images(va, args.dataroot, model_cfg)
    branch = TrafficLightBranch(model_cfg.embed_dims, model_cfg.tl_num_classes, model_cfg.tl_crop,
                                model_cfg.backbone_width, model_cfg.backbone_blocks, model_cfg.frozen_stages)
    trainable = [p for p in branch.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    branch.train()
    for _ in tqdm(range(args.steps), desc="probe", disable=args.quiet):
        idx = torch.randint(len(x_tr), (args.batch_size,), generator=g)
        loss = F.cross_entropy(branch(x_tr[idx])[1], y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    branch.eval()
    with torch.no_grad():
        pred = torch.cat([branch(x_va[i:i + 32])[1].argmax(-1) for i in range(0, len(x_va), 32)])
    majority = Counter(y_tr.tolist()).most_common(1)[0][0]
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "config": args.config, "image_hw": list(x_tr.shape[-2:]), "crop": list(model_cfg.tl_crop),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "frozen_stages": args.frozen_stages,
        "train_samples": len(tr), "heldout_samples": len(va),
        "train_class_counts": {CLASS_NAMES[k]: int(v) for k, v in Counter(y_tr.tolist()).items()},
        "heldout_accuracy": round(float((pred == y_va).float().mean()), 3),
        "prior_accuracy": round(float((y_va == majority).float().mean()), 3),
        "heldout_recall": {
            CLASS_NAMES[c]: f"{int(((pred == c) & (y_va == c)).sum())}/{int((y_va == c).sum())}"
            for c in range(len(CLASS_NAMES))
            if (y_va == c).any()
        },
        "train_loss_last_10pct": round(sum(tail) / len(tail), 3),
        "class_share_entropy": round(class_entropy(y_tr), 3),
    }


def main(argv: list[str] | None = None) -> None:
    p = script_parser("scripts.probe_tl", __doc__)
    p.add_argument("--dataroot", required=True, help="nuScenes-format root recorded from routes")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--infos-cache", default=None, help="record cache (scripts.train --infos-cache)")
    p.add_argument("--config", default="vad_nano", help="model preset: its crop, width and input size")
    p.add_argument("--split", default="auto", help="scene split (scripts.train --split)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW lr (driving run: 2e-4 x backbone_lr_mult)")
    p.add_argument("--frozen-stages", type=int, default=1, help="VADConfig.frozen_stages (-1 = train all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError("--steps and --batch-size must be >= 1 and --lr a positive number")
    res = probe(args)
    for k, v in res.items():
        print(f"{k:24s} {v}")
    if args.out:
        atomic_write_json(args.out, res)


if __name__ == "__main__":
    cli_main(main)
