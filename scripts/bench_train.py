"""Training speed: step time and samples/s per model config, with and without the VLM-AD heads.

    python -m scripts.bench_train                          # CPU: vad_nano; GPU: vad_tiny and vad_base
    python -m scripts.bench_train --configs vad_tiny --batch-size 1 --steps 20 --device cuda
    python -m scripts.bench_train --trainer                # + the whole trainer (data loading included)

"step" rows time one optimiser step (forward, loss, backward, clipping, AdamW) on a random batch at the
config's real input size and temporal queue (synthetic.batch), bf16 autocast on GPU as in training.
"trainer" rows run scripts.train's loop on a small synthetic nuScenes-format dataset (vad_nano only on
CPU), so image decoding, collation and the checkpoint at the end are included. Numbers only: no asserts.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.train_model import TrainModel
from models.vad import VAD
from models.vlm_ad import VLMADConfig
from synthetic.batch import make_dummy_batch
from training.config import TrainConfig
from training.loop import resolve_model_config
from vlmad.cli import resolve_device, script_parser
from vlmad.errors import cli_main

TEXT_DIM = 512  # CLIP ViT-B/32, the paper's text encoder


def bench_step(name: str, vlm: bool, batch_size: int, steps: int, warmup: int, device: torch.device,
               threads: int) -> dict:
    """Mean time of `steps` optimiser steps after `warmup` untimed ones."""
    torch.set_num_threads(threads)
    mcfg = resolve_model_config(TrainConfig(model=name))[0]
    torch.manual_seed(0)
    model = TrainModel(VAD(mcfg), VLMADConfig() if vlm else None, TEXT_DIM if vlm else None)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.param_groups(2e-4, 0.1, 0.01))
    batch = make_dummy_batch(mcfg, batch_size=batch_size, seed=0)
    if vlm:
        g = torch.Generator().manual_seed(0)
        text = torch.randn(batch_size, 3, TEXT_DIM, generator=g)
        batch["vlm_text"] = torch.nn.functional.normalize(text, dim=-1)
        batch["vlm_text_mask"] = torch.ones(batch_size, 3, dtype=torch.bool)
        batch["vlm_actions"] = torch.randint(0, 4, (batch_size, 3), generator=g)
    from training.data import to_device

    batch = to_device(batch, device)
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            _, losses, _ = model(batch)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    s = float(np.mean(times))
    row = {"kind": "step", "config": name, "vlm_ad": vlm, "batch": batch_size, "device": str(device),
           "precision": "bf16" if bf16 else "fp32", "threads": threads, "ms_per_step": round(1e3 * s, 1),
           "ms_std": round(1e3 * float(np.std(times)), 1), "samples_per_s": round(batch_size / s, 3),
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    if device.type == "cuda":
        row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def bench_trainer(vlm: bool, steps: int, threads: int, workers: int) -> dict:
    """scripts.train's loop on a synthetic dataset (vad_nano, CPU): samples/s including data loading."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        return _bench_trainer(Path(tmp), vlm, steps, workers, threads)


def _bench_trainer(tmp: Path, vlm: bool, steps: int, workers: int, threads: int) -> dict:
    from nusc.infos import build_or_load_infos
    from synthetic.nuscenes import make_synthetic_dataset
    from teacher.feature_store import FeatureStore
    from training.config import load_train_config
    from training.loop import train

    root = make_synthetic_dataset(tmp / "nusc", num_scenes=2, keyframes_per_scene=max(8, steps + 2),
                                  image_size=(400, 225), seed=0)
    infos = build_or_load_infos(root, "v1.0-mini", progress=False)
    toks = [r["token"] for r in infos]
    feats = FeatureStore.random(root / "f.safetensors", toks, dim=384)
    over = {"dataroot": str(root), "version": "v1.0-mini", "out": str(tmp / "run"), "max_steps": steps,
            "num_workers": workers, "device": "cpu", "progress": False, "tensorboard": False,
            "features": str(feats), "ckpt_every": 10**6}
    cfg = load_train_config(overrides=[f"{k}={json.dumps(v)}" for k, v in over.items()])
    cfg.vlm_ad.enabled = vlm
    s = train(cfg)
    return {"kind": "trainer", "config": "vad_nano", "vlm_ad": vlm, "batch": 1, "device": "cpu",
            "precision": "fp32", "threads": threads, "workers": workers,
            "ms_per_step": round(1e3 * s["s_per_step"], 1), "samples_per_s": s["samples_per_s"],
            "note": "includes image decoding (400x225 synthetic cameras) and collation"}


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.bench_train", __doc__)
    ap.add_argument("--configs", nargs="+", help="default: vad_nano on CPU, vad_tiny vad_base on GPU")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch-size", type=int, default=1, help="samples per step (VAD: 1 per GPU)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    ap.add_argument("--trainer", action="store_true", help="also time the whole trainer on CPU (vad_nano)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for --trainer")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    device = resolve_device(args.device, "--device")
    cuda = device.type == "cuda"
    configs = args.configs or (["vad_tiny", "vad_base"] if cuda else ["vad_nano"])
    rows = []
    for name in configs:
        for vlm in (False, True):
            rows.append(bench_step(name, vlm, args.batch_size, args.steps, args.warmup, device, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    if args.trainer:
        for vlm in (False, True):
            rows.append(bench_trainer(vlm, args.steps + args.warmup, args.threads, args.workers))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'kind':8} {'config':10} {'VLM-AD':6} {'device':8} {'prec':5} {'ms/step':>9} {'samples/s':>10}")
    for r in rows:
        print(f"{r['kind']:8} {r['config']:10} {str(r['vlm_ad']):6} {r['device']:8} {r['precision']:5} "
              f"{r['ms_per_step']:9.1f} {r['samples_per_s']:10.3f}")
    if args.json:
        from vlmad.io import atomic_write_json

        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    cli_main(main)
