"""Detection and vectorised-map decoders: DETR layers with iterative reference refinement in the BEV.

Both follow VAD (DetectionTransformerDecoder / MapDetectionTransformerDecoder with `with_box_refine`):
each layer self-attends, samples the BEV with deformable attention around its reference point, and the
layer's regression branch moves the reference (detached) for the next layer. Every layer's outputs are
kept for the auxiliary losses.

Frames: the decoders work in the BEV frame (LIDAR_TOP axes for VAD). Their box code is VAD's,
[cx, cy, log w, log l, cz, log h, sin r, cos r, vx, vy] with metric BEV-frame centres and mmdet3d's
(pre-1.0) LiDAR yaw r = -heading - pi/2 (heading counter-clockwise from BEV x); map points come out
normalised to the grid. `code_bev_to_ego` / `points_bev_to_ego` / `vectors_bev_to_ego` give the ego-frame
outputs of the model: box code [x, y, log l, log w, z, log h, sin yaw, cos yaw, vx, vy] (x forward,
y left, yaw counter-clockwise from ego x), points and offsets in metres.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import DeformDecoderLayer, inverse_sigmoid


class RefineDecoder(nn.Module):
    """A stack of DeformDecoderLayer with reference refinement.

    `ref_slices` says which outputs of the regression branch refine which reference dims: detection
    uses outputs (0, 1, 4) for reference (x, y, z); the map uses (0, 1) for (x, y).
    """

    def __init__(
        self,
        num_layers: int,
        embed_dims: int,
        num_heads: int,
        ffn_dims: int,
        num_points: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformDecoderLayer(embed_dims, num_heads, ffn_dims, num_points, dropout)
            for _ in range(num_layers)
        )

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        bev: torch.Tensor,
        bev_shape: tuple[int, int],
        reference_points: torch.Tensor,
        reg_branches: nn.ModuleList,
        ref_index: tuple[int, ...],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """query/query_pos (B, Q, C); reference_points (B, Q, R) in (0, 1).

        Returns per layer: hidden states (B, Q, C), the raw regression output (B, Q, code), and the
        reference *used* by that layer (B, Q, R) (for decoding its regression)."""
        hs, regs, refs = [], [], []
        x, ref = query, reference_points.float()  # references stay fp32 under autocast (bf16: ~0.2 m steps)
        idx = list(ref_index)
        for lid, layer in enumerate(self.layers):
            x = layer(x, query_pos, bev, bev_shape, ref[..., :2])
            reg = reg_branches[lid](x)
            hs.append(x)
            regs.append(reg)
            refs.append(ref)
            ref = (reg[..., idx].float() + inverse_sigmoid(ref)).sigmoid().detach()
        return hs, regs, refs


def decode_boxes(reg: torch.Tensor, ref: torch.Tensor, pc_range: tuple[float, ...]) -> torch.Tensor:
    """Agent regression (B, Q, 10) + reference (B, Q, 3) -> metric box code (B, Q, 10), fp32."""
    reg = reg.float()
    r = inverse_sigmoid(ref.float())
    x0, y0, z0, x1, y1, z1 = pc_range
    xy = (reg[..., 0:2] + r[..., 0:2]).sigmoid()
    z = (reg[..., 4:5] + r[..., 2:3]).sigmoid()
    x = xy[..., 0:1] * (x1 - x0) + x0
    y = xy[..., 1:2] * (y1 - y0) + y0
    z = z * (z1 - z0) + z0
    return torch.cat([x, y, reg[..., 2:4], z, reg[..., 5:10]], -1)


def normalised_xy(reg: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Regression (B, N, code) + reference (B, N, >= 2) -> normalised BEV (x, y) (B, N, 2) in (0, 1), fp32:
    VAD's `outputs_coords_bev` (agents) and `map_all_pts_preds` (map points)."""
    return (reg[..., 0:2].float() + inverse_sigmoid(ref[..., 0:2].float())).sigmoid()


def points_bev_to_ego(pts: torch.Tensor, ego_from_bev: torch.Tensor) -> torch.Tensor:
    """Planar BEV-frame points (B, ..., 2) (z = 0 in the BEV frame) -> ego-frame (x, y) (B, ..., 2), fp32."""
    e = ego_from_bev.float()
    shape = pts.shape
    p = pts.float().reshape(shape[0], -1, 2)
    out = p @ e[:, :2, :2].transpose(1, 2) + e[:, None, :2, 3]
    return out.view(shape)


def vectors_bev_to_ego(vec: torch.Tensor, ego_from_bev: torch.Tensor) -> torch.Tensor:
    """Planar BEV-frame displacements (B, ..., 2) -> ego axes (rotation only), in vec's dtype."""
    shape = vec.shape
    r = ego_from_bev[:, :2, :2].to(vec.dtype)
    return (vec.reshape(shape[0], -1, 2) @ r.transpose(1, 2)).view(shape)


def code_bev_to_ego(code: torch.Tensor, ego_from_bev: torch.Tensor) -> torch.Tensor:
    """VAD box code in the BEV frame (B, Q, 10) -> this project's ego-frame code (B, Q, 10), fp32.

    Centre: the full rigid transform; (log w, log l) -> (log l, log w); VAD's yaw r = -heading - pi/2, so
    (cos heading, sin heading) = (-sin r, -cos r), rotated into the ego frame (the regressed pair is not
    unit length: the map is linear, atan2 stays consistent); velocity rotated."""
    code = code.float()
    e = ego_from_bev.float()
    b, q, _ = code.shape
    ctr = code[..., [0, 1, 4]] @ e[:, :3, :3].transpose(1, 2) + e[:, None, :3, 3]
    heading_bev = torch.stack([-code[..., 6], -code[..., 7]], -1)  # (cos, sin) of the BEV-frame heading
    r = e[:, :2, :2]
    cs = heading_bev @ r.transpose(1, 2)
    vel = code[..., 8:10] @ r.transpose(1, 2)
    return torch.cat(
        [ctr[..., 0:2], code[..., 3:4], code[..., 2:3], ctr[..., 2:3], code[..., 5:6], cs[..., 1:2],
         cs[..., 0:1], vel], -1
    )


def box_code_to_boxes(code: torch.Tensor) -> torch.Tensor:
    """Box code (..., 10) -> (..., 9) [x, y, z, l, w, h, yaw, vx, vy] (the data contract's box layout
    plus velocity)."""
    dims = code[..., 2:4].clamp(max=6.0).exp()
    h = code[..., 5:6].clamp(max=6.0).exp()
    yaw = torch.atan2(code[..., 6:7], code[..., 7:8])
    return torch.cat([code[..., 0:2], code[..., 4:5], dims, h, yaw, code[..., 8:10]], -1)


def boxes_to_code(boxes: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """Targets (N, 7) [x, y, z, l, w, h, yaw] and velocity (N, 2) -> code (N, 10)."""
    lw = boxes[:, 3:5].clamp(min=1e-3).log()
    h = boxes[:, 5:6].clamp(min=1e-3).log()
    yaw = boxes[:, 6:7]
    return torch.cat([boxes[:, 0:2], lw, boxes[:, 2:3], h, yaw.sin(), yaw.cos(), velocity], -1)
