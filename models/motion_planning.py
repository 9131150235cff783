"""Motion prediction and planning heads of VAD, plus the CARLA variant's goal / traffic-light inputs.

Positions fed to every positional MLP are VAD's: normalised BEV coordinates in [0, 1]^2 (grid corner
(x_min, y_min) at (0, 0); models/bev_encoder.py), never metres.

Motion: every agent query gets `fut_mode` learnable mode queries; agent-agent self-attention
(`motion_decoder`, positions = the agents' normalised centres), then each (agent, mode) query attends to
the lanes (`motion_map_decoder`, lane features from the shared LaneNet polyline encoder). As VAD
(`select_and_pad_pred_map`): a lane's position is its point nearest the normalised origin (the grid
corner, not the agent); only lanes with a class score above `map_thresh` whose position lies within
`dis_thresh` (normalised distance) of the agent are attended, at their agent-relative position; one pad
key (zero feature, position (1, 1), never masked) is always appended. Trajectories are per-step offsets in
the BEV frame plus a mode score.

Planning: one learnable ego query (+ optional ego-history embedding, + CARLA goal/command and traffic-
light features) attends to the agents' motion features (`ego_agent_decoder`) and then to the lane
features (`ego_map_decoder`); f_ego = concat of the two outputs (2C = 512) -> `ego_fut_decoder`
MLP 512-512-512-(3 modes x 6 steps x 2) offsets. As VAD's end-to-end configs: the ego's position is the
normalised origin (0, 0), each lane sits at its point nearest that origin, agents at their centres, keys
with a score not above `query_thresh` are left out and no pad key is added (`query_use_fix_pad=False`).
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


def lane_positions(map_norm: torch.Tensor) -> torch.Tensor:
    """(B, V, P, 2) normalised lane points -> (B, V, 2): each lane's point nearest the normalised origin
    (VAD's `min_map_pos`, same distance formula so ties break the same way)."""
    d = torch.sqrt(map_norm[..., 0] ** 2 + map_norm[..., 1] ** 2)
    idx = d.argmin(-1)
    return map_norm.gather(2, idx[..., None, None].expand(-1, -1, 1, 2)).squeeze(2)


def _never_all_masked(mask: torch.Tensor) -> torch.Tensor:
    """Clear rows of a key-padding mask (..., K) that mask every key (VAD would attend to an empty key set
    and return NaN; this only happens when no query scores above the threshold)."""
    return mask & ~mask.all(-1, keepdim=True)


def lane_cross_attention(
    layer: nn.Module,
    query: torch.Tensor,
    query_pos: torch.Tensor,
    lanes: torch.Tensor,
    key_pos_mlp: nn.Linear,
    rel: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One InteractionLayer (cross-attention, norm, FFN, norm) of (agent, mode) queries over lane keys
    whose positional encoding depends on the agent, without materialising per-agent keys.

    query (B, A, M, C); query_pos (C,); lanes (B, K, C) key features (shared by all agents); rel
    (B, A, K, 2) the keys' positions for each agent (input of `key_pos_mlp`); mask (B, A, K) True = left out.
    Equals `layer(query, lanes + key_pos_mlp(rel), query_pos, ...)` per agent: the key projection is linear,
    W_k (lane + W_p rel + b_p) = W_k lane + (W_k W_p) rel + W_k b_p, so the agent-dependent part is a
    2-vector per key (VAD repeats the lane keys for all 300 x 6 queries instead). Returns (B, A, M, C)."""
    mha = layer.attentions[0].attn
    b, a, m, c = query.shape
    h = mha.num_heads
    hd = c // h
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q = ((query + query_pos) @ wq.T + bq).view(b, a, m, h, hd) * hd**-0.5
    k_lane = (lanes @ wk.T).view(b, -1, h, hd)  # (B, K, h, hd)
    w_kp = (wk @ key_pos_mlp.weight).view(h, hd, 2)  # W_k W_p
    k_bias = (wk @ key_pos_mlp.bias + bk).view(h, hd)
    scores = torch.einsum("bamhd,bkhd->bamhk", q, k_lane)
    scores = scores + torch.einsum("bamhe,bake->bamhk", torch.einsum("bamhd,hde->bamhe", q, w_kp), rel)
    scores = scores + torch.einsum("bamhd,hd->bamh", q, k_bias)[..., None]
    scores = scores.masked_fill(mask[:, :, None, None, :], float("-inf"))
    attn = nn.functional.dropout(scores.softmax(-1), mha.dropout, mha.training)
    v = (lanes @ wv.T + bv).view(b, -1, h, hd)
    out = mha.out_proj(torch.einsum("bamhk,bkhd->bamhd", attn, v).reshape(b, a, m, c))
    wrap = layer.attentions[0]
    x = layer.norms[0](query + wrap.dropout_layer(wrap.proj_drop(out)))
    return layer.norms[1](layer.ffns[0](x))


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
        map_dis_thresh: float = 0.2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        c = embed_dims
        self.fut_mode, self.fut_ts = fut_mode, fut_ts
        self.map_thresh, self.map_dis_thresh = map_thresh, map_dis_thresh
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
        agent_norm: torch.Tensor,
        lane_feats: torch.Tensor,
        map_norm: torch.Tensor,
        map_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """agent_hs (B, A, C); agent_norm (B, A, 2) normalised centres; lane_feats (B, V, C); map_norm
        (B, V, P, 2) normalised points; map_logits (B, V, 3).

        Returns offsets (B, A, M, T, 2) (BEV frame), mode logits (B, A, M), motion features (B, A, M, 2C)."""
        b, a, c = agent_hs.shape
        m = self.fut_mode
        q = (agent_hs[:, :, None, :] + self.motion_mode_query.weight[None, None]).reshape(b, a * m, c)
        pos = self.pos_mlp_sa(agent_norm.to(q.dtype))[:, :, None, :].expand(b, a, m, c).reshape(b, a * m, c)
        hs = self.motion_decoder(q, q, pos, pos)

        # lanes as keys; their positional encoding depends on the agent (agent-relative positions)
        lane_xy = lane_positions(map_norm)  # (B, V, 2)
        rel = lane_xy[:, None] - agent_norm[:, :, None]  # (B, A, V, 2)
        dist = torch.sqrt(rel[..., 0] ** 2 + rel[..., 1] ** 2)
        conf = map_logits.sigmoid().max(-1)[0] > self.map_thresh  # (B, V)
        mask = ~conf[:, None, :] | ~(dist <= self.map_dis_thresh)  # (B, A, V)
        # VAD's fixed pad key: zero feature at position (1, 1), never masked
        keys = torch.cat([lane_feats, lane_feats.new_zeros(b, 1, c)], 1)
        rel = torch.cat([rel, rel.new_ones(b, a, 1, 2)], 2).to(q.dtype)
        mask = torch.cat([mask, mask.new_zeros(b, a, 1)], 2)
        qpos = self.pos_mlp(hs.new_zeros(2))
        (layer,) = self.motion_map_decoder.layers
        ca = lane_cross_attention(layer, hs.view(b, a, m, c), qpos, keys, self.pos_mlp, rel, mask)
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
        frozen_stages: int = 1,
    ) -> None:
        super().__init__()
        self.crop = tuple(crop)
        # The same freezing as the image backbone (VADConfig.frozen_stages): both are ImageNet ResNets in VAD
        self.tl_backbone = ResNet(width, blocks, out_indices=(3,), frozen_stages=frozen_stages)
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
        agent_norm: torch.Tensor,
        agent_score: torch.Tensor,
        lane_feats: torch.Tensor,
        map_norm: torch.Tensor,
        map_score: torch.Tensor,
        pos_scale: torch.Tensor,
        ego_his: torch.Tensor | None = None,
        goal_point: torch.Tensor | None = None,
        command: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """motion_feats (B, A, M, 2C); agent_norm (B, A, 2) normalised centres; agent_score (B, A, 10)
        detection logits; lane_feats (B, V, C); map_norm (B, V, P, 2) normalised points; map_score (B, V, 3)
        map logits; pos_scale (2,) ego half extents for the goal point; ego_his (B, H, 2); goal_point (B, 2)
        metres in the ego frame; command (B,); extra (B, C) features added to the ego query (traffic
        light). Returns plan offsets (B, modes, T, 2) in the BEV frame and f_ego (B, 2C)."""
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

        zero = q.new_zeros(b, 1, 2)  # VAD: the ego at the normalised origin
        agents = self.agent_fus_mlp(motion_feats.flatten(2))
        a_mask = _never_all_masked(~(agent_score.sigmoid().max(-1)[0] > self.query_thresh))
        ego_agent = self.ego_agent_decoder(
            q, agents, self.ego_agent_pos_mlp(zero), self.ego_agent_pos_mlp(agent_norm.to(q.dtype)), a_mask
        )
        m_pos = lane_positions(map_norm)
        m_mask = _never_all_masked(~(map_score.sigmoid().max(-1)[0] > self.query_thresh))
        ego_map = self.ego_map_decoder(
            ego_agent, lane_feats, self.ego_map_pos_mlp(zero), self.ego_map_pos_mlp(m_pos.to(q.dtype)), m_mask
        )
        f_ego = torch.cat([ego_agent, ego_map], -1).squeeze(1)
        plan = self.ego_fut_decoder(f_ego).view(b, self.ego_modes, self.fut_ts, 2)
        return plan, f_ego
