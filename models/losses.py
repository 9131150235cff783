"""VAD's loss: Hungarian matching and the detection / motion / map terms, plus `vad_losses`, which adds
the planning terms (models.plan_losses) and weights everything as docs/facts.md section 6.

All coordinates metric in the ego frame (x forward, y left). Matching runs on the CPU with scipy's
`linear_sum_assignment` (a few hundred queries x tens of targets per sample: negligible next to the
network). Every function returns a finite tensor connected to the predictions even when a sample has
no targets, so empty scenes train (only the "no object" side of the focal loss acts then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from models import plan_losses as P
from models.decoders import boxes_to_code

if TYPE_CHECKING:
    from models.vad import VADConfig


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Summed sigmoid focal loss (RetinaNet); targets are one-hot floats of the same shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def focal_cost(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0, eps: float = 1e-12
) -> torch.Tensor:
    """mmdet FocalLossCost: (Q, K) logits, (N,) labels -> (Q, N) cost."""
    p = logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return pos[:, labels] - neg[:, labels]


def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal assignment of a (Q, N) cost matrix -> (query indices, target indices) on cost's device."""
    c = cost.detach().float().cpu().numpy()
    c = np.nan_to_num(c, nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(c)
    dev = cost.device
    return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(
        cols, dtype=torch.long, device=dev
    )


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dim with a finite gradient at zero."""
    return (x.pow(2).sum(-1) + 1e-9).sqrt()


# ----------------------------------------------------------------------------------------------------
# Detection and motion
# ----------------------------------------------------------------------------------------------------
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)  # VAD: velocity down-weighted


def match_agents(
    logits: torch.Tensor,
    code: torch.Tensor,
    labels: torch.Tensor,
    gt_code: torch.Tensor,
    w_cls: float,
    w_reg: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample: logits (Q, K), code (Q, 10), labels (N,), gt_code (N, 10) -> matched (q_idx, gt_idx)."""
    if labels.numel() == 0:
        e = torch.zeros(0, dtype=torch.long, device=logits.device)
        return e, e
    cost = w_cls * focal_cost(logits.float(), labels) + w_reg * torch.cdist(
        code[:, :8].float(), torch.nan_to_num(gt_code[:, :8]).float(), p=1
    )
    return hungarian(cost)


def detection_loss(
    logits: torch.Tensor,
    code: torch.Tensor,
    matches: list[tuple[torch.Tensor, torch.Tensor]],
    targets: list[dict],
    gt_codes: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, Q, K), code (B, Q, 10) -> (focal sum / num_gt, weighted L1 / num_gt), unweighted."""
    num_gt = max(sum(int(t["labels"].numel()) for t in targets), 1)
    onehot = torch.zeros_like(logits, dtype=torch.float32)
    reg = logits.new_zeros((), dtype=torch.float32) + 0.0 * code.sum()
    cw = torch.tensor(CODE_WEIGHTS, device=code.device)
    for b, ((qi, gi), tgt) in enumerate(zip(matches, targets)):
        if qi.numel() == 0:
            continue
        onehot[b, qi, tgt["labels"][gi].long()] = 1.0
        gt = gt_codes[b][gi]
        valid = torch.isfinite(gt)  # unknown velocities (NaN) do not count
        diff = (code[b, qi].float() - torch.nan_to_num(gt)).abs() * cw * valid
        reg = reg + diff.sum()
    cls = sigmoid_focal_loss(logits.float(), onehot)
    return cls / num_gt, reg / num_gt


def motion_loss(
    offsets: torch.Tensor,
    mode_logits: torch.Tensor,
    matches: list[tuple[torch.Tensor, torch.Tensor]],
    targets: list[dict],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-of-M (min ADE) L1 on positions relative to the agent + focal on the mode scores.

    offsets (B, Q, M, T, 2) per-step, mode_logits (B, Q, M); targets' `fut` (N, T, 2) are future
    positions in the ego frame, made relative to the box centre here. Returns (L1, focal), unweighted."""
    reg = 0.0 * offsets.sum()
    cls = 0.0 * mode_logits.sum()
    n_agents, n_steps = 0, 0.0
    for b, ((qi, gi), tgt) in enumerate(zip(matches, targets)):
        if qi.numel() == 0 or "fut" not in tgt:
            continue
        mask = tgt["fut_mask"][gi].float()  # (n, T)
        keep = mask.sum(-1) > 0
        if not bool(keep.any()):
            continue
        gt = (tgt["fut"][gi] - tgt["boxes"][gi, None, :2]).float()[keep]  # (n, T, 2)
        mask = mask[keep]
        pred = offsets[b, qi][keep].float().cumsum(-2)  # (n, M, T, 2)
        ade = (_safe_norm(pred - gt[:, None]) * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True)
        best = ade.detach().argmin(-1)
        best_pred = pred[torch.arange(len(best), device=pred.device), best]
        reg = reg + ((best_pred - gt).abs().sum(-1) * mask).sum()
        n_steps += float(mask.sum())
        onehot = F.one_hot(best, pred.shape[1]).float()
        cls = cls + sigmoid_focal_loss(mode_logits[b, qi][keep].float(), onehot)
        n_agents += len(best)
    return reg / max(n_steps, 1.0), cls / max(n_agents, 1)


# ----------------------------------------------------------------------------------------------------
# Vectorised map
# ----------------------------------------------------------------------------------------------------
def map_permutations(pts: torch.Tensor) -> torch.Tensor:
    """(K, P, 2) -> (K, 2, P, 2): each polyline in its given and reversed order (equivalent targets)."""
    return torch.stack([pts, pts.flip(1)], 1)


def match_map(
    logits: torch.Tensor,
    pts_norm: torch.Tensor,
    labels: torch.Tensor,
    gt_norm: torch.Tensor,
    w_cls: float,
    w_pts: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample: logits (V, 3), pts_norm (V, P, 2) in [0, 1], labels (K,), gt_norm (K, P, 2).

    Returns (v_idx, k_idx, permutation index per match) with the ordered-points L1 cost (min over the
    two orders), as VAD's OrderedPtsL1Cost."""
    dev = logits.device
    if labels.numel() == 0:
        e = torch.zeros(0, dtype=torch.long, device=dev)
        return e, e, e
    perms = map_permutations(gt_norm).float()  # (K, S, P, 2)
    k, s = perms.shape[:2]
    d = torch.cdist(pts_norm.flatten(1).float(), perms.flatten(2).reshape(k * s, -1), p=1).view(-1, k, s)
    pts_cost, perm = d.min(-1)
    cost = w_cls * focal_cost(logits.float(), labels) + w_pts * pts_cost
    vi, ki = hungarian(cost)
    return vi, ki, perm[vi, ki]


def map_loss(
    logits: torch.Tensor,
    pts: torch.Tensor,
    matches: list[tuple[torch.Tensor, ...]],
    targets: list[dict],
    pc_range: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (B, V, 3), pts (B, V, P, 2) metric -> (focal, points L1 (normalised coords), direction)."""
    num_gt = max(sum(int(t["cls"].numel()) for t in targets), 1)
    onehot = torch.zeros_like(logits, dtype=torch.float32)
    l1 = 0.0 * pts.sum()
    dirl = 0.0 * pts.sum()
    for b, ((vi, ki, perm), tgt) in enumerate(zip(matches, targets)):
        if vi.numel() == 0:
            continue
        onehot[b, vi, tgt["cls"][ki].long()] = 1.0
        gt = map_permutations(tgt["pts"].to(pts.dtype))[ki, perm]  # (n, P, 2) metric
        pred = pts[b, vi].float()
        l1 = l1 + (normalize_pts(pred, pc_range) - normalize_pts(gt, pc_range)).abs().sum(-1).mean(-1).sum()
        dp, dg = pred[:, 1:] - pred[:, :-1], gt[:, 1:] - gt[:, :-1]
        cos = (dp * dg).sum(-1) / (_safe_norm(dp) * _safe_norm(dg))
        dirl = dirl + (1 - cos).mean(-1).sum()
    cls = sigmoid_focal_loss(logits.float(), onehot)
    return cls / num_gt, l1 / num_gt, dirl / num_gt


def normalize_pts(pts: torch.Tensor, pc_range: tuple[float, ...]) -> torch.Tensor:
    x0, y0, _, x1, y1, _ = pc_range
    return torch.stack([(pts[..., 0] - x0) / (x1 - x0), (pts[..., 1] - y0) / (y1 - y0)], -1)


# ----------------------------------------------------------------------------------------------------
# All terms of VAD's end-to-end loss
# ----------------------------------------------------------------------------------------------------
def vad_losses(cfg: VADConfig, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
    """Every weighted loss term plus "total". batch: ego_fut (B, T, 2), ego_fut_mask (B, T), command (B,),
    agents: list of dicts (boxes (N, 7), labels (N,), velocity (N, 2), fut (N, T, 2), fut_mask (N, T)),
    map: list of dicts (cls (K,), pts (K, P, 2)); optional tl_label (B,) long (-1 = unknown)."""
    dev = outputs["plan_offsets"].device
    # map points are ego-frame metres here: normalise by the grid's extent along the ego axes (VAD
    # normalises its lidar-frame points by the grid extent, the same scale)
    ex0, ey0, ex1, ey1 = cfg.ego_range
    ego_pc = (ex0, ey0, 0.0, ex1, ey1, 0.0)
    agents = [agent_targets(a, dev) for a in batch["agents"]]
    maps = [map_targets(m, dev, cfg.map_num_pts) for m in batch["map"]]
    gt_codes = [boxes_to_code(a["boxes"], a["velocity"]) for a in agents]
    out: dict[str, torch.Tensor] = {}

    def det_terms(logits: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        m = [
            match_agents(logits[i], code[i], a["labels"], g, cfg.w_det_cls, cfg.w_det_reg)
            for i, (a, g) in enumerate(zip(agents, gt_codes))
        ]
        cls, reg = detection_loss(logits, code, m, agents, gt_codes)
        return cls, reg, m

    def map_terms(logits: torch.Tensor, pts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = [
            match_map(
                logits[i],
                normalize_pts(pts[i], ego_pc),
                t["cls"],
                normalize_pts(t["pts"], ego_pc),
                cfg.w_map_cls,
                cfg.w_map_pts,
            )
            for i, t in enumerate(maps)
        ]
        return map_loss(logits, pts, m, maps, ego_pc)

    cls, reg, matches = det_terms(outputs["det_logits"], outputs["det_code"])
    out["det_cls"], out["det_reg"] = cfg.w_det_cls * cls, cfg.w_det_reg * reg
    mreg, mcls = motion_loss(outputs["motion_offsets"], outputs["motion_mode_logits"], matches, agents)
    out["motion_reg"], out["motion_cls"] = cfg.w_motion_reg * mreg, cfg.w_motion_cls * mcls
    mc, mp, md = map_terms(outputs["map_logits"], outputs["map_pts"])
    out["map_cls"], out["map_pts"], out["map_dir"] = (
        cfg.w_map_cls * mc,
        cfg.w_map_pts * mp,
        cfg.w_map_dir * md,
    )
    if cfg.aux_loss and outputs["aux_det_logits"]:
        zero = outputs["plan_offsets"].new_zeros(())
        aux = {k: zero for k in ("aux_det_cls", "aux_det_reg", "aux_map_cls", "aux_map_pts", "aux_map_dir")}
        for lg, cd in zip(outputs["aux_det_logits"], outputs["aux_det_code"]):
            cls, reg, _ = det_terms(lg, cd)
            aux["aux_det_cls"] = aux["aux_det_cls"] + cfg.w_det_cls * cls
            aux["aux_det_reg"] = aux["aux_det_reg"] + cfg.w_det_reg * reg
        for lg, pt in zip(outputs["aux_map_logits"], outputs["aux_map_pts"]):
            mc, mp, md = map_terms(lg, pt)
            aux["aux_map_cls"] = aux["aux_map_cls"] + cfg.w_map_cls * mc
            aux["aux_map_pts"] = aux["aux_map_pts"] + cfg.w_map_pts * mp
            aux["aux_map_dir"] = aux["aux_map_dir"] + cfg.w_map_dir * md
        out.update(aux)

    # planning
    cmd = batch["command"].to(dev).long().clamp(0, cfg.ego_fut_mode - 1)
    fut, fmask = batch["ego_fut"].to(dev).float(), batch["ego_fut_mask"].to(dev).bool()
    out["plan_reg"] = cfg.w_plan_reg * P.plan_l1(outputs["plan_offsets"].float(), fut, fmask, cmd)
    plan = outputs["plan_offsets"].float()[torch.arange(len(cmd), device=dev), cmd].cumsum(-2)
    mlog, mpts = outputs["map_logits"], outputs["map_pts"]
    bound = P.select_map(mpts, mlog, 2, cfg.plan_map_thresh)
    divider = P.select_map(mpts, mlog, 0, cfg.plan_map_thresh)
    out["plan_bound"] = cfg.w_plan_bound * P.plan_bound_loss(plan, bound, fmask, cfg.bound_dis_thresh)
    out["plan_dir"] = cfg.w_plan_dir * P.plan_direction_loss(plan, divider, fmask, cfg.dir_dis_thresh)
    out["plan_col"] = cfg.w_plan_col * P.plan_collision_loss(
        plan,
        agent_futures(outputs, cfg.plan_agent_thresh),
        fmask,
        cfg.col_lat_thresh,
        cfg.col_lon_thresh,
        cfg.col_dis_thresh,
    )
    if "tl_logits" in outputs and batch.get("tl_label") is not None:
        lbl = batch["tl_label"].to(dev).long()
        ce = F.cross_entropy(outputs["tl_logits"].float(), lbl.clamp(min=0), reduction="none")
        known = (lbl >= 0).float()
        out["tl_cls"] = cfg.w_tl * (ce * known).sum() / known.sum().clamp(min=1)
    out["total"] = sum(out.values())
    return out


def agent_futures(outputs: dict, thresh: float) -> torch.Tensor:
    """Predicted agent future positions (B, A, T, 2) of each agent's best mode; low-score agents FAR."""
    trajs = outputs["motion_trajs"].detach()
    best = outputs["motion_mode_logits"].detach().argmax(-1)  # (B, A)
    t = trajs.gather(2, best[..., None, None, None].expand(-1, -1, 1, *trajs.shape[-2:])).squeeze(2)
    keep = outputs["det_logits"].detach().sigmoid().max(-1)[0] > thresh
    return torch.where(keep[..., None, None], t, torch.full_like(t, P.FAR))


def agent_targets(a: dict, dev: torch.device) -> dict:
    """Normalise one sample's agent targets to tensors on `dev` (empty-safe)."""
    boxes = torch.as_tensor(a.get("boxes", torch.zeros(0, 7)), dtype=torch.float32, device=dev).reshape(-1, 7)
    n = len(boxes)
    out = {
        "boxes": boxes,
        "labels": torch.as_tensor(a.get("labels", torch.zeros(0)), device=dev).long().reshape(n),
        "velocity": torch.as_tensor(
            a.get("velocity", torch.zeros(n, 2)), dtype=torch.float32, device=dev
        ).reshape(n, 2),
    }
    if "fut" in a:
        fut = torch.as_tensor(a["fut"], dtype=torch.float32, device=dev)
        steps = fut.shape[-2] if fut.dim() >= 2 else 0
        out["fut"] = fut.reshape(n, steps, 2)
        mask = a.get("fut_mask", torch.ones(n, steps))
        out["fut_mask"] = torch.as_tensor(mask, device=dev).bool().reshape(n, steps)
    return out


def map_targets(m: dict | list, dev: torch.device, num_pts: int) -> dict:
    """One sample's map: dict {cls (K,), pts (K, P, 2)} or the record's list of {cls, pts} -> tensors."""
    if isinstance(m, list):
        cls = torch.tensor([int(e["cls"]) for e in m], dtype=torch.long)
        pts = (
            torch.stack([torch.as_tensor(e["pts"], dtype=torch.float32) for e in m])
            if m
            else torch.zeros(0, num_pts, 2)
        )
        m = {"cls": cls, "pts": pts}
    cls = torch.as_tensor(m.get("cls", m.get("labels", torch.zeros(0))), device=dev).long().reshape(-1)
    pts = torch.as_tensor(m["pts"], dtype=torch.float32, device=dev)
    if len(cls) == 0:
        return {"cls": cls, "pts": pts.new_zeros(0, num_pts, 2)}
    pts = pts.reshape(len(cls), -1, 2)
    if pts.shape[1] != num_pts:
        raise ValueError(f"map targets need {num_pts} points per vector, got {pts.shape[1]}")
    return {"cls": cls, "pts": pts}
