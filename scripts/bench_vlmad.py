"""Extra training cost of the VLM-AD heads: one optimizer step with and without them, same batch.

    python -m scripts.bench_vlmad                          # vad_nano, CPU, batch 1
    python -m scripts.bench_vlmad --config vad_tiny --steps 2 --warmup 1
    python -m scripts.bench_vlmad --device cuda --config vad_base --batch 1 --steps 20

Both models start from the same driver weights and see the same batch; steps alternate between them so
machine load drifts affect both alike. A step = forward + loss + backward + AdamW step. The heads are
also timed alone (on a detached f_ego), which isolates their own cost from the driver's. Inference cost
is unchanged by construction (the exported driver is the very same VAD module; see docs/vlm_ad.md), so
only training is measured. Prints numbers only: no threshold, no pass/fail.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from models.configs import get_config
from models.train_model import TrainModel, ego_feature_dim
from models.vad import VAD
from models.vlm_ad import VLMADConfig, VLMADHeads, vlm_ad_loss
from synthetic.batch import make_dummy_batch
from vlmad.cli import resolve_device, script_parser
from vlmad.config import load_config
from vlmad.errors import cli_main


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _targets(b: int, c: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"vlm_text": torch.nn.functional.normalize(torch.randn(b, 3, c, generator=g), dim=-1).to(device),
            "vlm_text_mask": torch.ones(b, 3, dtype=torch.bool, device=device),
            "vlm_actions": torch.tensor([[0, 3, 4]] * b, device=device)}


def _to(batch: dict, device: torch.device) -> dict:
    def mv(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, dict):
            return {k: mv(v) for k, v in x.items()}
        if isinstance(x, list):
            return [mv(v) for v in x]
        return x
    return mv(batch)


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.bench_vlmad", __doc__)
    ap.add_argument("--config", default="vad_nano", help="model preset (default vad_nano)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    ap.add_argument("--text-dim", type=int, default=512, help="teacher embedding size C (CLIP 512)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a VLMADConfig field, e.g. --set action_head=mlp")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    cfg = get_config(args.config)
    vlm_cfg = load_config(VLMADConfig, overrides=args.overrides)
    torch.manual_seed(0)
    driver = VAD(cfg)
    plain = TrainModel(copy.deepcopy(driver)).to(device).train()
    with_heads = TrainModel(driver, vlm_cfg, args.text_dim).to(device).train()
    batch = _to({**make_dummy_batch(cfg, args.batch, seed=0), **_targets(args.batch, args.text_dim, device)},
                device)
    models = {"plain VAD": plain, "VAD + VLM-AD": with_heads}
    opts = {k: torch.optim.AdamW(m.param_groups(2e-4), lr=2e-4) for k, m in models.items()}

    def step(name: str) -> float:
        model, opt = models[name], opts[name]
        _sync(device)
        t0 = time.perf_counter()
        _, losses, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.warmup + args.steps):
        for name in models:
            dt = step(name)
            if i >= args.warmup:
                times[name].append(dt)

    # The heads alone on a detached f_ego: their own forward + backward + AdamW step.
    heads = VLMADHeads(ego_feature_dim(driver), args.text_dim, vlm_cfg).to(device).train()
    h_opt = torch.optim.AdamW(heads.parameters(), lr=2e-4)
    f_ego = torch.randn(args.batch, ego_feature_dim(driver), device=device)
    tgt = _targets(args.batch, args.text_dim, device)
    h_fb, h_opt_t = [], []
    for i in range(args.warmup + max(args.steps, 10)):
        _sync(device)
        t0 = time.perf_counter()
        loss = vlm_ad_loss(heads(f_ego), tgt, vlm_cfg)["total"]
        h_opt.zero_grad(set_to_none=True)
        loss.backward()
        _sync(device)
        t1 = time.perf_counter()
        h_opt.step()
        _sync(device)
        if i >= args.warmup:
            h_fb.append(t1 - t0)
            h_opt_t.append(time.perf_counter() - t1)

    n_drv = sum(p.numel() for p in driver.parameters())
    n_aux = sum(p.numel() for p in with_heads.aux.parameters())
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    extra = med["VAD + VLM-AD"] - med["plain VAD"]
    print(f"config {args.config}, batch {args.batch}, device {device}, threads {args.threads}, "
          f"text dim {args.text_dim}, {args.steps} timed steps after {args.warmup} warm-up (median)")
    print(f"parameters: driver {n_drv / 1e6:.2f} M, VLM-AD heads {n_aux / 1e6:.2f} M "
          f"(f_ego {ego_feature_dim(driver)}-d; heads: {vlm_cfg.text_head}/{vlm_cfg.action_head}, "
          f"attn {vlm_cfg.attn_dim}, {vlm_cfg.num_layers} layers)")
    for k, v in med.items():
        lo, hi = 1e3 * min(times[k]), 1e3 * max(times[k])
        print(f"  {k:14s} train step {v:9.1f} ms   (min {lo:.1f}, max {hi:.1f})")
    print(f"  extra per step {extra:+.1f} ms ({100 * extra / med['plain VAD']:+.1f} %)")
    print(f"  heads alone: forward+loss+backward {1e3 * statistics.median(h_fb):.1f} ms, AdamW step "
          f"{1e3 * statistics.median(h_opt_t):.1f} ms")
    print("  inference: unchanged by construction (the exported driver is the same VAD, no head inside)")
    return 0


if __name__ == "__main__":
    cli_main(main)
