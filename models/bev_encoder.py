"""BEVFormer-style BEV encoder: temporal self-attention + spatial cross-attention, in plain PyTorch.

BEV grid convention (VAD's, used by every head): the grid lives in the *BEV frame*, which for VAD is the
nuScenes LIDAR_TOP frame (x right, y forward, z up, origin at the lidar; docs/coordinate_systems.md); the
model maps it to the ego frame with `ego_from_bev`. A (H, W) = (bev_h, bev_w) grid is flattened row-major
to H * W queries: the W axis (column) runs along BEV x over [x_min, x_max], the H axis (row) along BEV y
over [y_min, y_max]. A normalised BEV location (u, v) in [0, 1]^2 is ((x - x_min) / (x_max - x_min),
(y - y_min) / (y_max - y_min)), which is exactly grid_sample's (x along W, y along H) convention and
the official checkpoints' layout, so their BEV embedding, positional tables and heads load unchanged.

Temporal alignment, `bev_align` (models.vad.VADConfig):
- "official" (VAD / BEVFormer): the previous BEV is rotated by the yaw change with a nearest-neighbour
  image rotation about pixel (100, 100) (torchvision `rotate` with VAD's default `rotate_center`: the grid
  centre for Base, the far corner of Tiny's 100x100 grid), and the reference points of both BEVs in the
  temporal attention are shifted by the ego translation in grid units (`official_shift`);
- "exact": the previous BEV is resampled in one bilinear `grid_sample` at the positions where the
  current cells were in the previous BEV frame (`align_prev_bev`): shift and rotation together, exact
  for any ego motion, zeros where the previous grid did not reach. Not what the released weights saw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.deform_attn import MSDeformAttn, ms_deform_attn_core
from models.layers import FFN


def invert_4x4(m: torch.Tensor) -> torch.Tensor:
    """Inverse of 4x4 matrices (..., 4, 4) by the adjugate (cofactors of 2x2 sub-determinants), in float64.

    Used instead of `torch.linalg.inv` because it is plain arithmetic: it exports to ONNX (which has no
    matrix inverse) and traces into one torch.compile graph. The transforms inverted here (ego motion,
    BEV mounting) are rigid and well conditioned; float64 keeps the result as exact as LAPACK's."""
    a = m.double()
    g = [[a[..., i, j] for j in range(4)] for i in range(4)]
    s0 = g[0][0] * g[1][1] - g[1][0] * g[0][1]
    s1 = g[0][0] * g[1][2] - g[1][0] * g[0][2]
    s2 = g[0][0] * g[1][3] - g[1][0] * g[0][3]
    s3 = g[0][1] * g[1][2] - g[1][1] * g[0][2]
    s4 = g[0][1] * g[1][3] - g[1][1] * g[0][3]
    s5 = g[0][2] * g[1][3] - g[1][2] * g[0][3]
    c5 = g[2][2] * g[3][3] - g[3][2] * g[2][3]
    c4 = g[2][1] * g[3][3] - g[3][1] * g[2][3]
    c3 = g[2][1] * g[3][2] - g[3][1] * g[2][2]
    c2 = g[2][0] * g[3][3] - g[3][0] * g[2][3]
    c1 = g[2][0] * g[3][2] - g[3][0] * g[2][2]
    c0 = g[2][0] * g[3][1] - g[3][0] * g[2][1]
    det = s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
    rows = [
        [g[1][1] * c5 - g[1][2] * c4 + g[1][3] * c3, -g[0][1] * c5 + g[0][2] * c4 - g[0][3] * c3,
         g[3][1] * s5 - g[3][2] * s4 + g[3][3] * s3, -g[2][1] * s5 + g[2][2] * s4 - g[2][3] * s3],
        [-g[1][0] * c5 + g[1][2] * c2 - g[1][3] * c1, g[0][0] * c5 - g[0][2] * c2 + g[0][3] * c1,
         -g[3][0] * s5 + g[3][2] * s2 - g[3][3] * s1, g[2][0] * s5 - g[2][2] * s2 + g[2][3] * s1],
        [g[1][0] * c4 - g[1][1] * c2 + g[1][3] * c0, -g[0][0] * c4 + g[0][1] * c2 - g[0][3] * c0,
         g[3][0] * s4 - g[3][1] * s2 + g[3][3] * s0, -g[2][0] * s4 + g[2][1] * s2 - g[2][3] * s0],
        [-g[1][0] * c3 + g[1][1] * c1 - g[1][2] * c0, g[0][0] * c3 - g[0][1] * c1 + g[0][2] * c0,
         -g[3][0] * s3 + g[3][1] * s1 - g[3][2] * s0, g[2][0] * s3 - g[2][1] * s1 + g[2][2] * s0],
    ]
    inv = torch.stack([torch.stack(r, -1) for r in rows], -2) / det[..., None, None]
    return inv.to(m.dtype)


def bev_cell_centres(
    bev_h: int, bev_w: int, pc_range: tuple[float, ...], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of the BEV cells: (normalised (H*W, 2) as (u, v), metric (H*W, 2) as (x, y))."""
    v, u = torch.meshgrid(
        (torch.arange(bev_h, device=device, dtype=torch.float32) + 0.5) / bev_h,
        (torch.arange(bev_w, device=device, dtype=torch.float32) + 0.5) / bev_w,
        indexing="ij",
    )
    norm = torch.stack([u.reshape(-1), v.reshape(-1)], -1)
    x0, y0, _, x1, y1, _ = pc_range
    metric = torch.stack([x0 + norm[:, 0] * (x1 - x0), y0 + norm[:, 1] * (y1 - y0)], -1)
    return norm, metric


def align_prev_bev(
    prev_bev: torch.Tensor, cur_from_prev: torch.Tensor, bev_h: int, bev_w: int, pc_range: tuple[float, ...]
) -> torch.Tensor:
    """Resample the previous BEV (B, H*W, C) onto the current grid given the ego motion (B, 4, 4).

    Cell p of the current grid takes the previous BEV's value at `prev_from_cur @ p` (bilinear, zeros
    outside the previous grid). Only the planar part (x, y, yaw) of the motion matters.
    """
    b, hw, c = prev_bev.shape
    with torch.autocast(prev_bev.device.type, enabled=False):
        prev_from_cur = invert_4x4(cur_from_prev.float())
        _, metric = bev_cell_centres(bev_h, bev_w, pc_range, prev_bev.device)
        pts = metric[None] @ prev_from_cur[:, :2, :2].transpose(1, 2) + prev_from_cur[:, None, :2, 3]
        x0, y0, _, x1, y1, _ = pc_range
        grid = torch.stack([(pts[..., 0] - x0) / (x1 - x0), (pts[..., 1] - y0) / (y1 - y0)], -1) * 2 - 1
        img = prev_bev.float().transpose(1, 2).reshape(b, c, bev_h, bev_w)  # fp32: see deform_attn
        out = F.grid_sample(
            img, grid.view(b, bev_h, bev_w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
        )
    return out.flatten(2).transpose(1, 2).to(prev_bev.dtype)


# VAD's VADPerceptionTransformer `rotate_center` default (pixels, (x = column, y = row)); both presets keep it
OFFICIAL_ROTATE_CENTER = (100.0, 100.0)


def rotate_prev_bev_official(
    prev_bev: torch.Tensor,
    angle_deg: torch.Tensor,
    bev_h: int,
    bev_w: int,
    center: tuple[float, float] = OFFICIAL_ROTATE_CENTER,
) -> torch.Tensor:
    """VAD's history rotation: previous BEV (B, H*W, C) rotated by `angle_deg` (B,) degrees.

    Reproduces torchvision's `rotate(img, angle, center=center)` on the (C, H, W) image as VAD calls it:
    nearest neighbour, zero fill, the inverse affine matrix built in float64 and applied in the image's
    dtype with `align_corners=False` sampling (torchvision's `_gen_affine_grid`). Positive angles rotate
    counter-clockwise in image coordinates (x = column, y = row)."""
    b, hw, c = prev_bev.shape
    dev = prev_bev.device
    cx, cy = center[0] - bev_w * 0.5, center[1] - bev_h * 0.5  # torchvision: relative to the image centre
    with torch.autocast(dev.type, enabled=False):
        # the inverse affine matrix in float64 on the device (torchvision builds it in Python floats):
        # no host round trip, so the rotation traces into one graph (torch.compile, ONNX)
        rot = torch.deg2rad(-angle_deg.detach().double())  # torchvision's rotate passes -angle
        cos, sin = torch.cos(rot), torch.sin(rot)
        tx = cos * (-cx) + sin * (-cy) + cx
        ty = -sin * (-cx) + cos * (-cy) + cy
        img = prev_bev.float().transpose(1, 2).reshape(b, c, bev_h, bev_w)
        theta = torch.stack([cos, sin, tx, -sin, cos, ty], -1).to(img.dtype).view(b, 2, 3)
        # torchvision's base grid (pixel centres relative to the image centre, homogeneous), built without
        # in-place slice writes (the ONNX exporter mistranslates those)
        xs = torch.linspace(-bev_w * 0.5 + 0.5, bev_w * 0.5 - 0.5, bev_w, dtype=img.dtype, device=dev)
        ys = torch.linspace(-bev_h * 0.5 + 0.5, bev_h * 0.5 - 0.5, bev_h, dtype=img.dtype, device=dev)
        base = torch.stack(
            [xs[None].expand(bev_h, -1), ys[:, None].expand(-1, bev_w), xs.new_ones(bev_h, bev_w)], -1
        )[None]
        scale = torch.tensor([0.5 * bev_w, 0.5 * bev_h], dtype=img.dtype, device=dev)
        grid = base.view(1, -1, 3).expand(b, -1, -1).bmm(theta.transpose(1, 2) / scale)
        out = F.grid_sample(
            img, grid.view(b, bev_h, bev_w, 2), mode="nearest", padding_mode="zeros", align_corners=False
        )
    return out.flatten(2).transpose(1, 2).to(prev_bev.dtype)


def official_shift(
    disp_bev: torch.Tensor, pc_range: tuple[float, ...]
) -> torch.Tensor:
    """VAD's reference-point shift (B, 2) for the temporal attention: the ego translation since the previous
    frame (B, 2), metres in BEV axes (x, y), in normalised grid units. VAD computes the same quantity from
    the CAN bus (global translation delta rotated by the current yaw, divided by grid size x cells)."""
    x0, y0, _, x1, y1, _ = pc_range
    return disp_bev / torch.tensor([x1 - x0, y1 - y0], dtype=disp_bev.dtype, device=disp_bev.device)


def pillar_points(
    bev_h: int, bev_w: int, pc_range: tuple[float, ...], num_heights: int, device: torch.device | None = None
) -> torch.Tensor:
    """3-D points of the BEV pillars: (H*W, D, 3) metric in the BEV frame.

    Heights as BEVFormer: `linspace(0.5, Z - 0.5, D)` metres above z_min with Z = z_max - z_min (VAD: Z = 4,
    D = 4 -> z = -1.5, -0.5, 0.5, 1.5 m around the lidar)."""
    _, metric = bev_cell_centres(bev_h, bev_w, pc_range, device)
    z0, z1 = pc_range[2], pc_range[5]
    zs = z0 + torch.linspace(0.5, (z1 - z0) - 0.5, num_heights, device=device, dtype=torch.float32)
    xy = metric[:, None, :].expand(-1, num_heights, 2)
    return torch.cat([xy, zs[None, :, None].expand(metric.shape[0], -1, 1)], -1)


def project_pillars(
    points: torch.Tensor, img_from_ego: torch.Tensor, img_hw: tuple[int, int], eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project pillar points (N, D, 3) into every camera.

    img_from_ego: (B, Ncam, 4, 4) projection of the points' frame (the model passes `img_from_bev`) for
    the resized/padded images of size img_hw = (H, W) (VAD normalises by the padded `img_shape`).
    Returns normalised image coordinates (B, Ncam, N, D, 2) and visibility (B, Ncam, N, D) bool
    (in front of the camera and inside the padded image).
    """
    with torch.autocast(points.device.type, enabled=False):
        m = img_from_ego.float()
        hom = torch.einsum("bcij,ndj->bcndi", m[..., :3, :3], points.float()) + m[:, :, None, None, :3, 3]
        depth = hom[..., 2]
        uv = hom[..., :2] / depth.clamp(min=eps).unsqueeze(-1)
        uv = uv / torch.tensor([img_hw[1], img_hw[0]], dtype=uv.dtype, device=uv.device)
        mask = (depth > eps) & (uv[..., 0] > 0) & (uv[..., 0] < 1) & (uv[..., 1] > 0) & (uv[..., 1] < 1)
        uv = torch.nan_to_num(uv, nan=-1.0, posinf=-1.0, neginf=-1.0)
    return uv, mask


class TemporalSelfAttention(MSDeformAttn):
    """BEVFormer TSA: deformable attention over [previous aligned BEV, current queries] (queue of 2).

    The offsets and weights are predicted from [previous BEV, query + pos]; without a valid previous BEV
    the current queries stand in for it (BEVFormer's first-frame behaviour). A subclass of MSDeformAttn so
    its parameters carry the official names (attentions.0.sampling_offsets, ...)."""

    def __init__(self, embed_dims: int, num_heads: int, num_points: int = 4, dropout: float = 0.1) -> None:
        super().__init__(
            embed_dims, num_heads, num_levels=1, num_points=num_points, num_queue=2, query_dims=2 * embed_dims
        )
        self.dropout = nn.Dropout(dropout)

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        bev_query: torch.Tensor,
        prev_bev: torch.Tensor | None,
        prev_valid: torch.Tensor | None,
        ref_2d: torch.Tensor,
        bev_shape: tuple[int, int],
    ) -> torch.Tensor:
        """query (B, HW, C) current layer input; bev_query (B, HW, C) the encoder's initial queries;
        prev_bev (B, HW, C) already aligned; prev_valid (B,) bool; ref_2d (HW, 2) or (B, HW, 2)
        normalised, shared by both queue entries (VAD shifts both: its `shift_ref_2d = ref_2d` aliasing)."""
        if prev_bev is None or prev_valid is None:
            prev, cur = query, query
        else:
            keep = prev_valid.view(-1, 1, 1)
            prev = torch.where(keep, prev_bev.to(query.dtype), query)
            cur = torch.where(keep, bev_query, query)
        value = torch.stack([prev, cur], 1)  # (B, 2, HW, C)
        q = torch.cat([prev, query + query_pos], -1)
        ref = (ref_2d if ref_2d.dim() == 3 else ref_2d[None]).unsqueeze(2).expand(query.shape[0], -1, 1, 2)
        return query + self.dropout(super().forward(q, value, ref, [bev_shape]))


class SpatialCrossAttention(nn.Module):
    """BEVFormer SCA: each BEV query samples the camera features around its projected pillar points.

    Only the (query, camera) pairs where the camera sees the query are computed, all cameras packed into
    one flat list (no per-camera padding: on the CARLA / nuScenes rigs the back camera sees ~3x more
    queries than a rear-side one). To sample all cameras in one `grid_sample` per level, the camera
    feature maps of a level are stacked vertically with one zero row between cameras; a sample then
    reads exactly what it would read from its own camera with zero padding (the zero row covers the
    bilinear footprint across an edge; samples entirely above or below their camera get weight 0).
    Outputs are summed per query and divided by the number of cameras that see it. As in VAD, the BEV
    queries enter without the BEV positional encoding (its BEVFormerLayer passes `query_pos=None` here)."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        num_levels: int,
        num_points: int = 8,
        num_heights: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.deformable_attention = MSDeformAttn(
            embed_dims, num_heads, num_levels, num_points, num_anchors=num_heights, output_proj=False
        )
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        packed: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """query (B, HW, C); value (B*Ncam, S, C) camera features; packed from `pack_visible`."""
        b, hw, c = query.shape
        da = self.deformable_attention
        qidx, cam, slot_valid, ref = packed["query"], packed["camera"], packed["slot_valid"], packed["ref"]
        q = query.gather(1, qidx[..., None].expand(-1, -1, c))  # (B, N, C)
        loc, attn = da.sampling(q, ref, spatial_shapes)  # (B, N, heads, 1, L, P, 2), (B, N, heads, 1, L, P)
        loc, attn = loc[:, :, :, 0], attn[:, :, :, 0]
        ncam = value.shape[0] // b
        v = da.project_value(value).view(b, ncam, value.shape[1], da.num_heads, -1)
        values, stacked_shapes, locs, weights = [], [], [], []
        start = 0
        camf = cam[:, :, None, None].float()  # (B, N, 1, 1)
        for lvl, (h, w) in enumerate(spatial_shapes):  # stack the cameras of each level (<= 4 levels)
            vl = v[:, :, start : start + h * w].reshape(b, ncam, h, w, da.num_heads, -1)
            start += h * w
            vl = torch.nn.functional.pad(vl, (0, 0, 0, 0, 0, 0, 1, 0))  # a zero row above every camera
            vl = torch.cat([vl.flatten(1, 2), vl.new_zeros(b, 1, w, *vl.shape[-2:])], 1)  # + one at the end
            hs = ncam * (h + 1) + 1
            values.append(vl.reshape(b, hs * w, *vl.shape[-2:]))
            stacked_shapes.append((hs, w))
            y = loc[:, :, :, lvl, :, 1] * h - 0.5  # pixel row in the camera
            inside = (y > -1) & (y < h)  # else both bilinear rows are outside this camera: zero anyway
            y_stacked = (y + camf * (h + 1) + 1 + 0.5) / hs
            locs.append(torch.stack([loc[:, :, :, lvl, :, 0], y_stacked], -1))
            weights.append(attn[:, :, :, lvl] * inside)
        out = ms_deform_attn_core(
            torch.cat(values, 1), stacked_shapes, torch.stack(locs, 3), torch.stack(weights, 3)
        )
        out = (out * slot_valid[..., None].to(out.dtype)).to(query.dtype)
        slots = torch.zeros_like(query).scatter_add_(1, qidx[..., None].expand(-1, -1, c), out)
        slots = slots / packed["count"][..., None].to(slots.dtype)
        return query + self.dropout(self.output_proj(slots))


def pack_visible(
    ref_cam: torch.Tensor, mask: torch.Tensor, capacity: int | None = None
) -> dict[str, torch.Tensor]:
    """The (query, camera) pairs where a camera sees a BEV query, as one flat list per sample.

    ref_cam (B, Ncam, HW, D, 2), mask (B, Ncam, HW, D) -> dict with query (B, N) and camera (B, N) long
    indices, slot_valid (B, N) bool (samples with fewer pairs are padded), ref (B, N, D, 2), count
    (B, HW) = cameras seeing each query (>= 1) and visible (B,) = visible pairs (may exceed N).

    capacity None: N = the largest number of visible pairs in the batch (one host sync, for N).
    capacity int: N = capacity, fixed; no data-dependent shape, so the forward is one graph
    (torch.compile, ONNX). The visible pairs keep their camera-major grid order; with capacity = Ncam * HW
    every pair fits whatever the calibration. Visibility depends on the calibration and the image size
    only (not on the images), so for a fixed rig a smaller capacity (its visible count plus a margin, see
    models/onnx_export.py) computes as little as the packed list; pairs beyond it would be dropped, which
    the callers rule out by checking `visible` on the host (docs/deploy.md).
    """
    b, ncam, hw, d, _ = ref_cam.shape
    hit = mask.any(-1)  # (B, Ncam, HW)
    flat = hit.flatten(1)
    n_hit = flat.sum(-1)
    count = hit.sum(1).clamp(min=1)
    if capacity is None:
        n = max(int(n_hit.max()), 1)
        # visible pairs first (stable keeps camera-major grid order), then the first n
        order = torch.argsort((~flat).to(torch.int8), dim=-1, stable=True)[:, :n]
    else:
        # compaction by prefix sums, fixed size: visible pair i goes to slot (number of visible pairs
        # before it); invisible ones and any beyond the capacity go to one extra slot that is cut off
        n = capacity
        slot = torch.cumsum(flat.to(torch.int32), -1) - 1
        slot = torch.where(flat & (slot < n), slot, torch.full_like(slot, n)).long()
        pair = torch.arange(flat.shape[1], device=mask.device)[None].expand(b, -1)
        order = torch.zeros(b, n + 1, dtype=torch.long, device=mask.device).scatter(1, slot, pair)[:, :n]
    ref = ref_cam.flatten(1, 2).gather(1, order[..., None, None].expand(-1, -1, d, 2))
    return {
        "query": order % hw,
        "camera": torch.div(order, hw, rounding_mode="floor"),
        "slot_valid": torch.arange(n, device=mask.device)[None] < n_hit[:, None],
        "ref": ref,
        "count": count,
        "visible": n_hit,
    }


def visible_pairs(
    img_from_bev: torch.Tensor, img_hw: tuple[int, int], bev_h: int, bev_w: int, pc_range: tuple[float, ...],
    num_heights: int,
) -> torch.Tensor:
    """(B,) number of (BEV query, camera) pairs that `pack_visible` keeps for projections img_from_bev
    (B, Ncam, 4, 4) at image size img_hw: what a fixed capacity must hold."""
    pts = pillar_points(bev_h, bev_w, pc_range, num_heights, img_from_bev.device)
    _, mask = project_pillars(pts, img_from_bev, img_hw)
    return mask.any(-1).flatten(1).sum(-1)


class BEVFormerLayer(nn.Module):
    """self_attn (TSA), norm, cross_attn (SCA), norm, ffn, norm."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        ffn_dims: int,
        num_levels: int,
        num_points_tsa: int = 4,
        num_points_sca: int = 8,
        num_heights: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(
            [
                TemporalSelfAttention(embed_dims, num_heads, num_points_tsa, dropout),
                SpatialCrossAttention(
                    embed_dims, num_heads, num_levels, num_points_sca, num_heights, dropout
                ),
            ]
        )
        self.ffns = nn.ModuleList([FFN(embed_dims, ffn_dims, dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        bev_query: torch.Tensor,
        prev_bev: torch.Tensor | None,
        prev_valid: torch.Tensor | None,
        ref_2d: torch.Tensor,
        bev_shape: tuple[int, int],
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        packed: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        x = self.norms[0](
            self.attentions[0](query, query_pos, bev_query, prev_bev, prev_valid, ref_2d, bev_shape)
        )
        x = self.norms[1](self.attentions[1](x, value, spatial_shapes, packed))
        return self.norms[2](self.ffns[0](x))


class BEVFormerEncoder(nn.Module):
    """A stack of BEVFormer layers over one frame.

    forward(bev_query (B, HW, C), bev_pos (HW, C), value (B*Ncam, S, C), spatial_shapes, img_from_bev
    (B, Ncam, 4, 4), img_hw, prev_bev (B, HW, C) aligned or None, prev_valid (B,), shift (B, 2) or None:
    VAD's reference-point shift of the temporal attention, capacity: see `pack_visible`) -> (B, HW, C).
    """

    def __init__(
        self,
        num_layers: int,
        embed_dims: int,
        num_heads: int,
        ffn_dims: int,
        num_levels: int,
        bev_h: int,
        bev_w: int,
        pc_range: tuple[float, ...],
        num_heights: int = 4,
        num_points_sca: int = 8,
        dropout: float = 0.1,
        num_points_tsa: int = 4,
    ) -> None:
        super().__init__()
        self.bev_h, self.bev_w, self.pc_range, self.num_heights = bev_h, bev_w, tuple(pc_range), num_heights
        self.layers = nn.ModuleList(
            BEVFormerLayer(
                embed_dims, num_heads, ffn_dims, num_levels, num_points_tsa, num_points_sca, num_heights,
                dropout,
            )
            for _ in range(num_layers)
        )

    def forward(
        self,
        bev_query: torch.Tensor,
        bev_pos: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        img_from_bev: torch.Tensor,
        img_hw: tuple[int, int],
        prev_bev: torch.Tensor | None,
        prev_valid: torch.Tensor | None,
        shift: torch.Tensor | None = None,
        capacity: int | None = None,
    ) -> torch.Tensor:
        """capacity: fixed number of (query, camera) slots of the cross-attention (`pack_visible`), for one
        graph; None = as many as visible (one host sync)."""
        dev = bev_query.device
        ref_2d, _ = bev_cell_centres(self.bev_h, self.bev_w, self.pc_range, dev)
        if shift is not None:
            ref_2d = ref_2d[None] + shift[:, None, :].to(ref_2d.dtype)  # (B, HW, 2)
        pts = pillar_points(self.bev_h, self.bev_w, self.pc_range, self.num_heights, dev)
        ref_cam, mask = project_pillars(pts, img_from_bev, img_hw)
        packed = pack_visible(ref_cam, mask, capacity)
        pos = bev_pos[None].to(bev_query.dtype)
        x = bev_query
        for layer in self.layers:
            x = layer(
                x,
                pos,
                bev_query,
                prev_bev,
                prev_valid,
                ref_2d,
                (self.bev_h, self.bev_w),
                value,
                spatial_shapes,
                packed,
            )
        return x
