"""Multi-scale deformable attention in plain PyTorch (one implementation, used everywhere).

Deformable DETR / BEVFormer sample a few learned points around a reference point in every feature level
and mix them with learned weights. The upstream code needs mmcv's compiled CUDA op; here the sampling is
`F.grid_sample` (bilinear, zero padding, `align_corners=False`), which runs on CPU and GPU alike and is
autocast-safe. The same module serves:

- BEVFormer temporal self-attention (`num_queue=2`: previous aligned BEV and current queries; the query
  projection sees both, outputs are averaged over the queue);
- BEVFormer spatial cross-attention (`num_anchors=4` pillar heights, several camera feature levels,
  no output projection inside, as in MSDeformableAttention3D);
- the detection and map decoders' cross-attention into the BEV (1 level, 4 points).

Parameter names (sampling_offsets, attention_weights, value_proj, output_proj) follow mmcv so a
converter can map the official checkpoints one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear multi-scale sampling and weighted sum, computed in fp32 whatever the input dtype.

    value: (B, S, heads, head_dim) with S = sum(H_l * W_l), levels flattened row-major in order.
    sampling_locations: (B, Q, heads, L, P, 2) normalised (x along W, y along H) in [0, 1].
    attention_weights: (B, Q, heads, L, P).
    Returns (B, Q, heads * head_dim) in value's dtype.

    fp32 as BEVFormer's MultiScaleDeformableAttnFunction_fp32: in bf16 a location in [0, 1] has ~1/256
    resolution, i.e. up to ~0.8 BEV cells or image pixels of error at the far edge.
    """
    b, _, heads, hd = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    value_list = value.float().split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2.0 * sampling_locations.float() - 1.0  # grid_sample wants [-1, 1]
    w = attention_weights.float().transpose(1, 2).reshape(b * heads, 1, q, levels, points)
    out = None
    with torch.autocast(value.device.type, enabled=False):
        for lvl, (h, w_) in enumerate(spatial_shapes):  # loop over the (<= 4) levels only
            v = value_list[lvl].permute(0, 2, 3, 1).reshape(b * heads, hd, h, w_)
            g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, points, 2)
            # (B*heads, hd, Q, P)
            s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            s = (s * w[:, :, :, lvl]).sum(-1)  # accumulate per level: never hold all levels' samples at once
            out = s if out is None else out + s
    return out.view(b, heads * hd, q).transpose(1, 2).to(value.dtype).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (no residual; callers add it).

    Args:
        embed_dims: channels C of queries and values.
        num_heads, num_levels, num_points: as in Deformable DETR. With `num_anchors` > 1 (pillar
            heights), `num_points` are split evenly over the anchors (BEVFormer's MSDeformableAttention3D).
        num_queue: number of value maps the query attends to in parallel (2 for temporal self-attention);
            per-queue softmax, outputs averaged over the queue.
        query_dims: input channels of the offset/weight projections (2C for temporal self-attention,
            which predicts them from [previous BEV, query]).
        output_proj: add the final linear projection (spatial cross-attention does it outside).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 1,
        num_points: int = 4,
        num_anchors: int = 1,
        num_queue: int = 1,
        query_dims: int | None = None,
        output_proj: bool = True,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads or num_points % num_anchors:
            raise ValueError("embed_dims must divide by num_heads and num_points by num_anchors")
        self.embed_dims, self.num_heads, self.num_levels = embed_dims, num_heads, num_levels
        self.num_points, self.num_anchors, self.num_queue = num_points, num_anchors, num_queue
        qd = query_dims or embed_dims
        n = num_heads * num_queue * num_levels * num_points
        self.sampling_offsets = nn.Linear(qd, n * 2)
        self.attention_weights = nn.Linear(qd, n)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims) if output_proj else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on a ring of directions, uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 1, 2).repeat(
            1, self.num_queue, self.num_levels, self.num_points, 1
        )
        for i in range(self.num_points):
            grid[:, :, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        if self.output_proj is not None:
            nn.init.xavier_uniform_(self.output_proj.weight)
            nn.init.zeros_(self.output_proj.bias)

    def sampling(
        self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations (B, Q, heads, queue, L, P, 2) and softmaxed weights (B, Q, heads, queue, L, P),
        both fp32, for query (B, Q, query_dims) and reference_points (B, Q, num_anchors, 2) in [0, 1]."""
        b, q, _ = query.shape
        nq, heads, lv, pts, anc = (
            self.num_queue,
            self.num_heads,
            self.num_levels,
            self.num_points,
            self.num_anchors,
        )
        if len(spatial_shapes) != lv:
            raise ValueError(f"expected {lv} levels, got {len(spatial_shapes)}")
        off = self.sampling_offsets(query).float().view(b, q, heads, nq, lv, pts, 2)
        attn = self.attention_weights(query).float().view(b, q, heads, nq, lv * pts).softmax(-1)
        attn = attn.view(b, q, heads, nq, lv, pts)
        # offsets are in pixels of each level: normalise by (W, H)
        norm = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=off.dtype, device=off.device)
        off = off / norm[None, None, None, None, :, None, :]
        ref = reference_points.float()
        # points split over anchors: (..., P/anchors, anchors, 2) + ref (B, Q, 1, 1, 1, 1, anchors, 2)
        off = off.view(b, q, heads, nq, lv, pts // anc, anc, 2)
        loc = (ref[:, :, None, None, None, None, :, :] + off).view(b, q, heads, nq, lv, pts, 2)
        return loc, attn

    def project_value(self, value: torch.Tensor, value_mask: torch.Tensor | None = None) -> torch.Tensor:
        """value (..., S, C) -> value_proj, padding zeroed, split into heads (..., S, heads, C / heads)."""
        v = self.value_proj(value)
        if value_mask is not None:
            v = v.masked_fill(value_mask[..., None], 0.0)
        return v.unflatten(-1, (self.num_heads, self.embed_dims // self.num_heads))

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        value_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query: (B, Q, query_dims); value: (B, S, C), or (B, num_queue, S, C) when num_queue > 1;
        reference_points: (B, Q, num_anchors, 2) normalised [0, 1] (x along W, y along H), shared by all
        levels; value_mask: (B, S) or (B, num_queue, S) True where the value is padding.
        Returns (B, Q, C)."""
        b, q, _ = query.shape
        nq, heads, lv, pts = self.num_queue, self.num_heads, self.num_levels, self.num_points
        if value.dim() == 3:
            value = value.unsqueeze(1)
            value_mask = None if value_mask is None else value_mask.unsqueeze(1)
        v = self.project_value(value, value_mask).flatten(0, 1)  # (B*nq, S, heads, hd)
        loc, attn = self.sampling(query, reference_points, spatial_shapes)
        # fold the queue into the batch: (B*nq, Q, heads, L, P, ...)
        loc = loc.permute(0, 3, 1, 2, 4, 5, 6).reshape(b * nq, q, heads, lv, pts, 2)
        attn = attn.permute(0, 3, 1, 2, 4, 5).reshape(b * nq, q, heads, lv, pts)
        out = ms_deform_attn_core(v, spatial_shapes, loc, attn).view(b, nq, q, self.embed_dims).mean(1)
        if self.output_proj is not None:
            out = self.output_proj(out)
        return out


def inductor_keeping_grid_sample(gm: torch.fx.GraphModule, example_inputs: list) -> object:
    """torch.compile backend: inductor, except that on CPU `grid_sample` stays ATen's kernel.

    Inductor decomposes `grid_sampler_2d` into per-corner gathers and weights; on CPU that generated code
    is several times slower than ATen's vectorised kernel (measured at vad_nano's cross-attention sizes,
    one thread: 171 ms vs 20 ms per call, docs/deploy.md), and every attention here is a `grid_sample`.
    Keeping the op as an ATen call (an inductor fallback kernel) makes the compiled graph equal eager
    there bit for bit. On CUDA inductor's own lowering is kept (its Triton kernel is competitive)."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    on_cpu = all(not isinstance(x, torch.Tensor) or x.device.type == "cpu" for x in example_inputs)
    if not on_cpu:
        return compile_fx(gm, example_inputs)
    aten = torch.ops.aten
    keep = {aten.grid_sampler_2d.default, aten.grid_sampler_2d.out}
    table = {k: v for k, v in select_decomp_table().items() if k not in keep}
    return compile_fx(gm, example_inputs, decompositions=table)
