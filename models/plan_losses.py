"""Planning losses of VAD: imitation L1 and the three constraint losses (boundary, collision, direction).

The constraints follow VAD's PlanMapBoundLoss, PlanCollisionLoss and PlanMapDirectionLoss, written
vectorised. They act on the plan of the commanded mode and use the *predicted* map and agents, detached
(the constraints shape the plan, not the perception), as VAD does. All positions metric, ego frame
(x forward, y left).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FAR = 1e6  # where a filtered-out map point / agent is moved so it never counts


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dim with a finite gradient at zero."""
    return (x.pow(2).sum(-1) + 1e-9).sqrt()


def plan_l1(
    plan_offsets: torch.Tensor, ego_fut: torch.Tensor, ego_fut_mask: torch.Tensor, command: torch.Tensor
) -> torch.Tensor:
    """L1 on per-step offsets (VAD), weighted by command one-hot x future mask.

    plan_offsets (B, modes, T, 2); ego_fut (B, T, 2) positions; ego_fut_mask (B, T); command (B,)."""
    gt_off = torch.diff(ego_fut.to(plan_offsets.dtype), dim=1, prepend=torch.zeros_like(ego_fut[:, :1]))
    m = ego_fut_mask.bool()
    m_off = m & torch.cat([torch.ones_like(m[:, :1]), m[:, :-1]], 1)  # an offset needs both ends
    w = F.one_hot(command.long(), plan_offsets.shape[1]).to(plan_offsets.dtype)[:, :, None] * m_off[:, None]
    err = (plan_offsets - gt_off[:, None]).abs().mean(-1)
    return (err * w).sum() / w.sum().clamp(min=1)


def segments_intersect(
    p1: torch.Tensor, p2: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor
) -> torch.Tensor:
    """Whether segment p1-p2 crosses q1-q2 (broadcast over leading dims, last dim 2)."""

    def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    r, s = p2 - p1, q2 - q1
    den = cross(r, s)
    ok = den.abs() > 1e-9
    den = torch.where(ok, den, torch.ones_like(den))
    t = cross(q1 - p1, s) / den
    u = cross(q1 - p1, r) / den
    return ok & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)


def select_map(map_pts: torch.Tensor, map_logits: torch.Tensor, cls_idx: int, thresh: float) -> torch.Tensor:
    """Predicted vectors of class `cls_idx` with score > thresh; the others moved FAR away. (B, V, P, 2)."""
    prob = map_logits.detach().sigmoid()
    keep = (prob.argmax(-1) == cls_idx) & (prob[..., cls_idx] > thresh)
    return torch.where(keep[..., None, None], map_pts.detach().float(), torch.full_like(map_pts.float(), FAR))


def point_segment_dist(pts: torch.Tensor, lines: torch.Tensor) -> torch.Tensor:
    """Distance from points (B, T, 2) to every segment of polylines (B, V, P, 2) -> (B, T, V, P - 1)."""
    a, b = lines[:, None, :, :-1], lines[:, None, :, 1:]  # (B, 1, V, P-1, 2)
    p = pts[:, :, None, None, :]
    ab = b - a
    t = (((p - a) * ab).sum(-1) / ab.pow(2).sum(-1).clamp(min=1e-9)).clamp(0, 1)
    return _safe_norm(p - (a + t[..., None] * ab))


def plan_bound_loss(
    plan: torch.Tensor, bound_pts: torch.Tensor, mask: torch.Tensor, dis_thresh: float = 1.0
) -> torch.Tensor:
    """Keep the plan >= dis_thresh from predicted road boundaries; stop counting once it has crossed one.

    plan (B, T, 2) positions; bound_pts (B, V, P, 2); mask (B, T)."""
    b, t, _ = plan.shape
    v, p = bound_pts.shape[1:3]
    starts = torch.cat([plan.new_zeros(b, 1, 2), plan[:, :-1]], 1)
    # distance to the boundary polylines (VAD measures to their points; segments are exact)
    d = point_segment_dist(plan, bound_pts)  # (B, T, V, P-1)
    min_dist = d.flatten(2).min(-1)[0]
    # nearest boundary instance per step; does the step's segment cross it?
    inst = d.min(-1)[0].argmin(-1)  # (B, T)
    lines = (
        bound_pts[:, None]
        .expand(b, t, v, p, 2)
        .gather(2, inst[..., None, None, None].expand(-1, -1, 1, p, 2))
    )
    lines = lines.squeeze(2)  # (B, T, P, 2)
    cross = segments_intersect(
        starts[:, :, None].detach(), plan[:, :, None].detach(), lines[:, :, :-1], lines[:, :, 1:]
    )
    crossed = cross.any(-1).long().cumsum(-1) > 0  # from the first crossing on
    loss = F.relu(dis_thresh - min_dist) * (~crossed)
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp(min=1)


def plan_collision_loss(
    plan: torch.Tensor,
    agent_trajs: torch.Tensor,
    mask: torch.Tensor,
    lat_thresh: float = 1.5,
    lon_thresh: float = 3.0,
    dis_thresh: float = 3.0,
) -> torch.Tensor:
    """Push the plan out of a box (|dx| < lon, |dy| < lat) around each predicted agent at the same step.

    plan (B, T, 2); agent_trajs (B, A, T, 2) positions (FAR for filtered agents); mask (B, T)."""
    diff = plan[:, None] - agent_trajs  # (B, A, T, 2)
    near = _safe_norm(diff) <= dis_thresh
    dx, dy = diff[..., 0].abs(), diff[..., 1].abs()
    inside = near & (dx < lon_thresh) & (dy < lat_thresh)
    loss = ((lon_thresh - dx) + (lat_thresh - dy)) * inside
    loss = loss.sum(1)  # over agents
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp(min=1)


def plan_direction_loss(
    plan: torch.Tensor, div_pts: torch.Tensor, mask: torch.Tensor, dis_thresh: float = 2.0
) -> torch.Tensor:
    """Align each plan step's heading with the nearest predicted lane divider (undirected).

    plan (B, T, 2); div_pts (B, V, P, 2); mask (B, T). Static plans (< 1 m overall) are not penalised."""
    b, t, _ = plan.shape
    v, p = div_pts.shape[1:3]
    d = _safe_norm(plan[:, :, None, None, :].detach() - div_pts[:, None])  # (B, T, V, P)
    inst_d, inst_pt = d.min(-1)
    near_d, inst = inst_d.min(-1)  # (B, T)
    pt = inst_pt.gather(2, inst[..., None]).squeeze(-1)  # (B, T) nearest point index on that line
    lines = (
        div_pts[:, None].expand(b, t, v, p, 2).gather(2, inst[..., None, None, None].expand(-1, -1, 1, p, 2))
    )
    lines = lines.squeeze(2)
    i0 = torch.where(pt >= p - 1, pt - 1, pt).clamp(min=0)
    a0 = lines.gather(2, i0[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
    a1 = lines.gather(2, (i0 + 1).clamp(max=p - 1)[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)
    lane_dir = a1 - a0
    ego_dir = plan - torch.cat([plan.new_zeros(b, 1, 2), plan[:, :-1]], 1)
    tiny = _safe_norm(ego_dir) < 1e-3
    ego_dir = torch.where(tiny[..., None], torch.ones_like(ego_dir), ego_dir)  # atan2 has no gradient at 0
    lane_dir = torch.where((_safe_norm(lane_dir) < 1e-6)[..., None], torch.ones_like(lane_dir), lane_dir)
    diff = (
        torch.atan2(lane_dir[..., 1], lane_dir[..., 0]) - torch.atan2(ego_dir[..., 1], ego_dir[..., 0])
    ).abs()
    diff = torch.remainder(diff, 2 * math.pi)
    diff = torch.minimum(diff, 2 * math.pi - diff)  # [0, pi]
    diff = torch.minimum(diff, math.pi - diff)  # undirected lines: [0, pi / 2]
    static = _safe_norm(plan[:, -1] - plan[:, 0]).detach() < 1.0
    valid = (near_d <= dis_thresh) & ~tiny & ~static[:, None]
    m = mask.to(diff.dtype) * valid
    return (diff * m).sum() / mask.to(diff.dtype).sum().clamp(min=1)
