"""Transformer building blocks shared by the BEV encoder and the heads.

They mirror mmcv's BaseTransformerLayer layout (`attentions`, `ffns`, `norms` ModuleLists; FFN
`layers.0.0` / `layers.1`; `MultiheadAttention.attn` = `nn.MultiheadAttention`) so the official VAD
state dict maps onto ours by renaming prefixes only. Post-norm everywhere, as VAD's configs.
"""

from __future__ import annotations

import torch
from torch import nn

from models.deform_attn import MSDeformAttn


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MultiheadAttention(nn.Module):
    """mmcv's MultiheadAttention: residual + dropout around `nn.MultiheadAttention` (batch first).

    Positional embeddings are added to query and key (not value), as in DETR.
    """

    def __init__(self, embed_dims: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.proj_drop = nn.Dropout(0.0)
        self.dropout_layer = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Q, C); key/value (B, K, C) (default: query); key_padding_mask (B, K) True = ignore."""
        key = query if key is None else key
        value = key if value is None else value
        if key_pos is None and query_pos is not None and key is query:
            key_pos = query_pos
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        out = self.attn(q, k, value, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return query + self.dropout_layer(self.proj_drop(out))


class FFN(nn.Module):
    """Linear-ReLU-Linear with residual (mmcv FFN, 2 fcs)."""

    def __init__(self, embed_dims: int, ffn_dims: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(ffn_dims, embed_dims),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class DeformDecoderLayer(nn.Module):
    """DETR decoder layer: self-attn, norm, deformable cross-attn into the BEV, norm, FFN, norm."""

    def __init__(
        self, embed_dims: int, num_heads: int, ffn_dims: int, num_points: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(
            [
                MultiheadAttention(embed_dims, num_heads, dropout),
                MSDeformAttn(embed_dims, num_heads, 1, num_points),
            ]
        )
        self.ffns = nn.ModuleList([FFN(embed_dims, ffn_dims, dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        bev: torch.Tensor,
        bev_shape: tuple[int, int],
        reference_points: torch.Tensor,
    ) -> torch.Tensor:
        """query/query_pos (B, Q, C); bev (B, H*W, C); reference_points (B, Q, 2) normalised BEV (x, y)."""
        x = self.norms[0](self.attentions[0](query, query_pos=query_pos))
        ca = self.attentions[1](x + query_pos, bev, reference_points[:, :, None, :], [bev_shape])
        x = self.norms[1](x + self.drop(ca))
        return self.norms[2](self.ffns[0](x))


class InteractionLayer(nn.Module):
    """VAD's one-layer CustomTransformerDecoder: cross-attn, norm, FFN, norm (motion / ego queries)."""

    def __init__(self, embed_dims: int, num_heads: int, ffn_dims: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([MultiheadAttention(embed_dims, num_heads, dropout)])
        self.ffns = nn.ModuleList([FFN(embed_dims, ffn_dims, dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(2)])

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.norms[0](self.attentions[0](query, key, key, query_pos, key_pos, key_padding_mask))
        return self.norms[1](self.ffns[0](x))


class LearnedPositionalEncoding(nn.Module):
    """mmdet LearnedPositionalEncoding: (B?) -> (H*W, 2 * num_feats) with [col(x), row(y)] halves."""

    def __init__(self, num_feats: int, row_num_embed: int, col_num_embed: int) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(row_num_embed, num_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self) -> torch.Tensor:
        h, w = self.row_embed.num_embeddings, self.col_embed.num_embeddings
        x = self.col_embed.weight[None, :, :].expand(h, w, -1)
        y = self.row_embed.weight[:, None, :].expand(h, w, -1)
        return torch.cat([x, y], -1).reshape(h * w, -1)


def reg_branch(cin: int, cout: int, hidden: int | None = None) -> nn.Sequential:
    """VAD regression branch: (Linear, ReLU) x 2, Linear."""
    hidden = hidden or cin
    return nn.Sequential(
        nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, cout)
    )


def cls_branch(cin: int, cout: int, hidden: int | None = None) -> nn.Sequential:
    """VAD classification branch: (Linear, LayerNorm, ReLU) x 2, Linear (bias init for focal loss)."""
    hidden = hidden or cin
    seq = nn.Sequential(
        nn.Linear(cin, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, cout),
    )
    nn.init.constant_(seq[-1].bias, -4.595)  # prior probability 0.01, as mmdet's bias_init_with_prob
    return seq


class InteractionDecoder(nn.Module):
    """VAD's CustomTransformerDecoder: `num_layers` InteractionLayers with the same keys (1 in VAD)."""

    def __init__(
        self, embed_dims: int, num_heads: int, ffn_dims: int, num_layers: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            InteractionLayer(embed_dims, num_heads, ffn_dims, dropout) for _ in range(num_layers)
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Q, C), key (B, K, C) (also the value), key_padding_mask (B, K) True = ignore."""
        for layer in self.layers:
            query = layer(query, key, query_pos, key_pos, key_padding_mask)
        return query
