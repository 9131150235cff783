"""Why VLM-AD helps or not on a run: loss scales, gradient share on f_ego, teacher diversity, head width.

    python -m scripts.vlmad_checks --run RUN --dataroot D --version V --features F.safetensors --out C.json

On a few training batches of a VLM-AD run's latest training checkpoint (the heads are in it, not in the
driving checkpoint) it measures:
- loss scales: the driver's planning and total losses beside lambda1 x L_align and lambda2 x L_action;
- gradient share on f_ego: |dL_vlm/df_ego| / (|dL_vlm/df_ego| + |dL_driver/df_ego|) (Frobenius norms over
  the batch), and the cosine between the VLM-AD and the planning gradients (negative = they pull f_ego
  apart). f_ego is the only place the heads reach the driver;
- the teacher's text diversity: distinct feature vectors per answer slot, and their mean pairwise cosine
  (a rule teacher's templated text has few distinct answers: an alignment target with little information);
  the action labels' entropy per kind;
- head width: parameters of the heads and of the driver.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.checkpoint_formats import load_train_checkpoint
from models.features import feature_inputs
from models.vlm_ad import vlm_ad_loss
from nusc.dataset import NuScenesVADDataset, collate
from nusc.infos import build_or_load_infos
from teacher.feature_store import FeatureStore
from teacher.prompts import ACTION_KINDS
from training.checkpoint import find_latest
from training.data import add_vlm_targets, dataset_config
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_json

PLAN_KEYS = ("plan_reg", "plan_bound", "plan_col", "plan_dir")


def text_diversity(store: FeatureStore) -> dict:
    """Per text slot: valid answers, distinct feature vectors, mean pairwise cosine; action entropy (bits)."""
    out: dict = {"text": {}, "action_entropy_bits": {}}
    for j, kind in enumerate(("current", "future", "reasoning")):
        f = store.text[:, j][store.text_mask[:, j]].double()
        if not len(f):
            continue
        distinct = len({tuple(np.round(r.numpy(), 5)) for r in f})
        u = torch.nn.functional.normalize(f, dim=-1)
        sub = u[torch.randperm(len(u), generator=torch.Generator().manual_seed(0))[:500]]
        cos = sub @ sub.T
        n = len(sub)
        mean_cos = float((cos.sum() - n) / max(n * (n - 1), 1))
        out["text"][kind] = {"valid": len(f), "distinct": distinct,
                             "mean_pairwise_cosine": round(mean_cos, 4)}
    for j, kind in enumerate(ACTION_KINDS):
        a = store.actions[:, j]
        a = a[a >= 0]
        if len(a):
            p = torch.bincount(a).double() / len(a)
            p = p[p > 0]
            out["action_entropy_bits"][kind] = round(float(-(p * p.log2()).sum()), 3)
    return out


def _norm(g: torch.Tensor | None) -> float:
    return 0.0 if g is None else float(g.norm())


def gradient_checks(ck, ds: NuScenesVADDataset, store: FeatureStore, batches: int, batch_size: int) -> dict:
    """Loss scales and gradients on f_ego over `batches` batches of the training set (eval mode: no
    dropout, same frozen BatchNorm as in training)."""
    model = ck.model.eval()
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(batches):
        idx = rng.choice(len(ds), size=min(batch_size, len(ds)), replace=False)
        batch = add_vlm_targets(collate([ds[int(i)] for i in idx]), store)
        outputs, _ = model.driver(feature_inputs(batch))
        f = outputs["f_ego"]
        drv = model.driver.loss(outputs, batch)
        vlm = vlm_ad_loss(model.aux(f), batch, ck.vlm_cfg)
        plan = sum(drv[k] for k in PLAN_KEYS if k in drv)
        wl1, wl2 = ck.vlm_cfg.lambda1 * vlm["align"], ck.vlm_cfg.lambda2 * vlm["action"]
        g_drv, g_plan, g_vlm = (torch.autograd.grad(x, f, retain_graph=True, allow_unused=True)[0]
                                for x in (drv["total"], plan, vlm["total"]))
        cos = float(torch.nn.functional.cosine_similarity(g_vlm.flatten(), g_plan.flatten(), dim=0)) \
            if g_vlm is not None and g_plan is not None and _norm(g_plan) > 0 else math.nan
        rows.append({"driver_total": float(drv["total"].detach()), "plan": float(plan.detach()),
                     "lambda1_align": float(wl1.detach()), "lambda2_action": float(wl2.detach()),
                     "grad_driver": _norm(g_drv), "grad_plan": _norm(g_plan),
                     "grad_vlm": _norm(g_vlm), "cos_vlm_plan": cos})
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    mean["grad_share_vlm"] = mean["grad_vlm"] / max(mean["grad_vlm"] + mean["grad_driver"], 1e-12)
    return {k: round(v, 5) for k, v in mean.items()}


def run_checks(run: str | Path, dataroot: str | Path, version: str, features: str | Path,
               batches: int = 6, batch_size: int = 2) -> dict:
    latest = find_latest(run)
    if latest is None:
        raise UserError(f"{run} has no training checkpoint (checkpoints/step_*): run scripts.train first")
    ck = load_train_checkpoint(latest, load_optimizer=False)
    if ck.model.aux is None:
        raise UserError(f"{run} was trained without VLM-AD (no heads): nothing to check")
    store = FeatureStore.load(features)
    infos = [r for r in build_or_load_infos(dataroot, version, progress=False) if r["token"] in store]
    if not infos:
        raise UserError(f"the feature store {features} covers no keyframe of {dataroot} ({version})")
    ds = NuScenesVADDataset(infos, dataroot, dataset_config(ck.model_cfg, infos))
    driver_params = sum(p.numel() for p in ck.model.driver.parameters())
    head_params = sum(p.numel() for p in ck.model.aux.parameters())
    return {"run": str(run), "checkpoint": str(latest), "step": ck.meta.get("step"),
            "losses_and_gradients": gradient_checks(ck, ds, store, batches, batch_size),
            "teacher": text_diversity(store), "teacher_encoder": store.meta.get("encoder"),
            "params": {"driver": driver_params, "heads": head_params,
                       "heads_over_driver": round(head_params / max(driver_params, 1), 3)}}


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.vlmad_checks", __doc__)
    p.add_argument("--run", required=True, help="a VLM-AD training run folder (scripts.train --vlm-ad --out)")
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--features", required=True, help="the feature store the run trained with")
    p.add_argument("--batches", type=int, default=6, help="training batches to measure (default 6)")
    p.add_argument("--out", required=True, help="where to write the checks (JSON)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    res = run_checks(a.run, a.dataroot, a.version, a.features, a.batches)
    atomic_write_json(a.out, res)
    lg = res["losses_and_gradients"]
    print(f"losses: plan {lg['plan']:.3f}, driver total {lg['driver_total']:.3f}, lambda1 x align "
          f"{lg['lambda1_align']:.3f}, lambda2 x action {lg['lambda2_action']:.3f}")
    print(f"gradient on f_ego: VLM-AD share {100 * lg['grad_share_vlm']:.1f} %, cosine(VLM-AD, plan) "
          f"{lg['cos_vlm_plan']:+.3f}; heads / driver parameters {res['params']['heads_over_driver']}")
    for kind, t in res["teacher"]["text"].items():
        print(f"teacher {kind}: {t['distinct']} distinct of {t['valid']} answers, mean cosine "
              f"{t['mean_pairwise_cosine']:.3f}")
    return 0


if __name__ == "__main__":
    cli_main(main)
