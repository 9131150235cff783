"""Motion prediction and planning heads of VAD, plus the CARLA variant's goal / traffic-light inputs.

Motion: every agent query gets `fut_mode` learnable mode queries; agent-agent self-attention
(`motion_decoder`), then each (agent, mode) query attends to its nearest predicted lane
(`motion_map_decoder`, lane features from the shared LaneNet polyline encoder); trajectories are per-step
offsets (cumulated to positions relative to the agent's centre) plus a mode score.

Planning: one learnable ego query (+ optional ego-history embedding, + CARLA goal/command and traffic-
light features) attends to the agents' motion features (`ego_agent_decoder`) and then to the lane
features (`ego_map_decoder`); f_ego = concat of the two outputs (2C = 512) -> `ego_fut_decoder`
MLP 512-512-512-(3 modes x 6 steps x 2) offsets. The ego sits at the origin of the ego frame.

Positions fed to the positional MLPs are metric positions divided by the half ranges (x / 30, y / 15).
"""

from __future__ import annotations

import torch
from torch import nn

from models.backbone import ResNet
from models.layers import InteractionDecoder, cls_branch, reg_branch


class _LaneMLP(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.linear(x)))


class LaneNet(nn.Module):
    """VectorNet-style polyline encoder (VAD's LaneNet): (B, V, P, C) -> (B, V, 2 * hidden)."""

    def __init__(self, in_channels: int, hidden_unit: int, num_subgraph_layers: int = 3) -> None:
        super().__init__()
        self.layer_seq = nn.Sequential()
        for i in range(num_subgraph_layers):
            self.layer_seq.add_module(f"lmlp_{i}", _LaneMLP(in_channels, hidden_unit))
            in_channels = hidden_unit * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer_seq:
            x = layer(x)
            x = torch.cat([x, x.max(-2, keepdim=True)[0].expand_as(x)], -1)
        return x.max(-2)[0]


def _pad_key(key: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Append VAD's fixed pad token (zero feature, zero position, never masked) so no row is all-masked."""
    zk = key.new_zeros(key.shape[:-2] + (1, key.shape[-1]))
    zp = pos.new_zeros(pos.shape[:-2] + (1, pos.shape[-1]))
    zm = mask.new_zeros(mask.shape[:-1] + (1,))
    return torch.cat([key, zk], -2), torch.cat([pos, zp], -2), torch.cat([mask, zm], -1)


class MotionHead(nn.Module):
    """Agent motion: (B, A, C) agent features -> trajectories (B, A, M, T, 2) offsets, scores (B, A, M)."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        ffn_dims: int,
        fut_mode: int,
        fut_ts: int,
        map_thresh: float = 0.5,
        map_dis_thresh: float = 10.0,
        map_topk: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        c = embed_dims
        self.fut_mode, self.fut_ts = fut_mode, fut_ts
        self.map_thresh, self.map_dis_thresh, self.map_topk = map_thresh, map_dis_thresh, map_topk
        self.motion_mode_query = nn.Embedding(fut_mode, c)
        self.motion_decoder = InteractionDecoder(c, num_heads, ffn_dims, 1, dropout)
        self.motion_map_decoder = InteractionDecoder(c, num_heads, ffn_dims, 1, dropout)
        self.pos_mlp_sa = nn.Linear(2, c)
        self.pos_mlp = nn.Linear(2, c)
        self.traj_branches = nn.ModuleList([reg_branch(2 * c, fut_ts * 2)])
        self.traj_cls_branches = nn.ModuleList([cls_branch(2 * c, 1)])

    def forward(
        self,
        agent_hs: torch.Tensor,
        agent_xy: torch.Tensor,
        lane_feats: torch.Tensor,
        map_pts: torch.Tensor,
        map_score: torch.Tensor,
        pos_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """agent_hs (B, A, C); agent_xy (B, A, 2) metric centres; lane_feats (B, V, C); map_pts
        (B, V, P, 2) metric; map_score (B, V) best class probability; pos_scale (2,) half ranges.

        Returns offsets (B, A, M, T, 2), mode logits (B, A, M), motion features (B, A, M, 2C)."""
        b, a, c = agent_hs.shape
        m = self.fut_mode
        q = (agent_hs[:, :, None, :] + self.motion_mode_query.weight[None, None]).reshape(b, a * m, c)
        xy = agent_xy.detach() / pos_scale
        pos = self.pos_mlp_sa(xy)[:, :, None, :].expand(b, a, m, c).reshape(b, a * m, c)
        hs = self.motion_decoder(q, q, pos, pos)

        # nearest confident lanes per agent, in agent-centric coordinates
        rel = map_pts.detach()[:, None] - agent_xy.detach()[:, :, None, None]  # (B, A, V, P, 2)
        d_pts = rel.norm(dim=-1)
        dist, near_pt = d_pts.min(-1)  # (B, A, V)
        bad = (map_score.detach() < self.map_thresh)[:, None, :] | (dist > self.map_dis_thresh)
        dist = dist.masked_fill(bad, float("inf"))
        k = min(self.map_topk, dist.shape[-1])
        top_d, top_v = dist.topk(k, dim=-1, largest=False)  # (B, A, k)
        key = lane_feats[:, None].expand(b, a, -1, c).gather(2, top_v[..., None].expand(-1, -1, -1, c))
        near_rel = rel.gather(3, near_pt[..., None, None].expand(-1, -1, -1, 1, 2)).squeeze(3)
        key_xy = near_rel.gather(2, top_v[..., None].expand(-1, -1, -1, 2)) / pos_scale
        key, key_xy, mask = _pad_key(key, key_xy, ~torch.isfinite(top_d))
        kk = key.shape[2]
        key = key[:, :, None].expand(b, a, m, kk, c).reshape(b * a * m, kk, c)
        key_pos = self.pos_mlp(key_xy)[:, :, None].expand(b, a, m, kk, c).reshape(b * a * m, kk, c)
        mask = mask[:, :, None].expand(b, a, m, kk).reshape(b * a * m, kk)
        qpos = self.pos_mlp(hs.new_zeros(1, 1, 2))
        ca = self.motion_map_decoder(hs.reshape(b * a * m, 1, c), key, qpos, key_pos, mask)
        feats = torch.cat([hs.view(b, a, m, c), ca.view(b, a, m, c)], -1)
        offsets = self.traj_branches[0](feats).view(b, a, m, self.fut_ts, 2)
        logits = self.traj_cls_branches[0](feats).squeeze(-1)
        return offsets, logits, feats


class TrafficLightBranch(nn.Module):
    """CARLA variant: a ResNet-50 on the upper-middle crop of the front image -> feature (B, C) + logits.

    crop = (top, bottom, left, right) as fractions of the padded image; VAD's CARLA agent looks at the
    upper half, middle half of the width, where traffic lights hang over the lane."""

    def __init__(
        self,
        embed_dims: int,
        num_classes: int,
        crop: tuple[float, float, float, float],
        width: int = 64,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        self.crop = tuple(crop)
        self.tl_backbone = ResNet(width, blocks, out_indices=(3,), frozen_stages=1)
        self.tl_mlp = nn.Sequential(
            nn.Linear(self.tl_backbone.out_channels[-1], embed_dims),
            nn.ReLU(),
            nn.Linear(embed_dims, embed_dims),
        )
        self.tl_cls = nn.Linear(embed_dims, num_classes)

    def forward(self, front_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """front_img (B, 3, H, W) -> (feature (B, C), traffic-light logits (B, num_classes))."""
        h, w = front_img.shape[-2:]
        t, bt, lf, rt = self.crop
        crop = front_img[
            ...,
            int(t * h) : max(int(bt * h), int(t * h) + 1),
            int(lf * w) : max(int(rt * w), int(lf * w) + 1),
        ]
        f = self.tl_mlp(self.tl_backbone(crop)[-1].mean((-1, -2)))
        return f, self.tl_cls(f)


class PlanningHead(nn.Module):
    """Ego planning. forward -> (plan offsets (B, modes, T, 2), f_ego (B, 2C))."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        ffn_dims: int,
        fut_mode: int,
        ego_modes: int,
        fut_ts: int,
        ego_his_steps: int = 2,
        use_ego_his: bool = False,
        use_goal: bool = False,
        num_commands: int = 3,
        query_thresh: float = 0.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        c = embed_dims
        self.ego_modes, self.fut_ts, self.query_thresh = ego_modes, fut_ts, query_thresh
        self.ego_query = nn.Embedding(1, c)
        self.ego_his_encoder = (
            nn.Sequential(nn.Linear(ego_his_steps * 2, c), nn.ReLU(), nn.Linear(c, c))
            if use_ego_his
            else None
        )
        self.goal_cmd_mlp = (
            nn.Sequential(nn.Linear(2 + num_commands, c), nn.ReLU(), nn.Linear(c, c)) if use_goal else None
        )
        self.num_commands = num_commands
        self.agent_fus_mlp = nn.Sequential(
            nn.Linear(fut_mode * 2 * c, c), nn.LayerNorm(c), nn.ReLU(), nn.Linear(c, c)
        )
        self.ego_agent_decoder = InteractionDecoder(c, num_heads, ffn_dims, 1, dropout)
        self.ego_map_decoder = InteractionDecoder(c, num_heads, ffn_dims, 1, dropout)
        self.ego_agent_pos_mlp = nn.Linear(2, c)
        self.ego_map_pos_mlp = nn.Linear(2, c)
        self.ego_fut_decoder = nn.Sequential(
            nn.Linear(2 * c, 2 * c),
            nn.ReLU(),
            nn.Linear(2 * c, 2 * c),
            nn.ReLU(),
            nn.Linear(2 * c, ego_modes * fut_ts * 2),
        )

    def forward(
        self,
        motion_feats: torch.Tensor,
        agent_xy: torch.Tensor,
        agent_score: torch.Tensor,
        lane_feats: torch.Tensor,
        map_pts: torch.Tensor,
        map_score: torch.Tensor,
        pos_scale: torch.Tensor,
        ego_his: torch.Tensor | None = None,
        goal_point: torch.Tensor | None = None,
        command: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """motion_feats (B, A, M, 2C); agent_xy (B, A, 2); agent_score (B, A); lane_feats (B, V, C);
        map_pts (B, V, P, 2); map_score (B, V); ego_his (B, H, 2); goal_point (B, 2) metres in the ego
        frame; command (B,); extra (B, C) features added to the ego query (traffic light)."""
        b = motion_feats.shape[0]
        q = self.ego_query.weight[None].expand(b, 1, -1)
        if self.ego_his_encoder is not None:
            if ego_his is None:
                raise ValueError("this config embeds the ego history: inputs need 'ego_his' (B, H, 2)")
            q = q + self.ego_his_encoder(ego_his.flatten(1).to(q.dtype))[:, None]
        if self.goal_cmd_mlp is not None:
            if goal_point is None or command is None:
                raise ValueError("the CARLA variant needs inputs 'goal_point' (B, 2) and 'command' (B,)")
            onehot = nn.functional.one_hot(command.long(), self.num_commands).to(q.dtype)
            q = q + self.goal_cmd_mlp(torch.cat([goal_point.to(q.dtype) / pos_scale, onehot], -1))[:, None]
        if extra is not None:
            q = q + extra[:, None]

        zero = q.new_zeros(b, 1, 2)
        agents = self.agent_fus_mlp(motion_feats.flatten(2))
        a_pos = agent_xy.detach() / pos_scale
        a_mask = agent_score.detach() < self.query_thresh
        agents, a_pos, a_mask = _pad_key(agents, a_pos, a_mask)
        ego_agent = self.ego_agent_decoder(
            q, agents, self.ego_agent_pos_mlp(zero), self.ego_agent_pos_mlp(a_pos), a_mask
        )
        # each lane's position: its point nearest to the ego
        pts = map_pts.detach()
        near = pts.norm(dim=-1).argmin(-1)  # (B, V)
        m_pos = pts.gather(2, near[..., None, None].expand(-1, -1, 1, 2)).squeeze(2) / pos_scale
        m_mask = map_score.detach() < self.query_thresh
        lanes, m_pos, m_mask = _pad_key(lane_feats, m_pos, m_mask)
        ego_map = self.ego_map_decoder(
            ego_agent, lanes, self.ego_map_pos_mlp(zero), self.ego_map_pos_mlp(m_pos), m_mask
        )
        f_ego = torch.cat([ego_agent, ego_map], -1).squeeze(1)
        plan = self.ego_fut_decoder(f_ego).view(b, self.ego_modes, self.fut_ts, 2)
        return plan, f_ego
