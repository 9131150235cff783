"""VLM-AD auxiliary heads and losses (Xu et al., CoRL 2025; docs/facts.md section 5). Training only.

The heads read the planner's ego feature f_ego and nothing else; the driving model never calls them, so
removing them (see `models.checkpoint_formats`) leaves inference unchanged bit for bit.

Text alignment head (Q1): for each text target (current action, future action, reasoning) one learnable
query runs through its own stack of multi-head cross-attention layers (8 heads, 3 layers; key = value =
the f_ego tokens), is concatenated with f_ego and mapped by an MLP to the teacher's text-embedding size C.
Action head (Q2): the same structure with 3 queries (control, turn, lane) mapped to 4 / 4 / 5 logits, or,
as the paper's ablation, a plain MLP on f_ego.

A note on f_ego as a token sequence. The heads accept f_ego as (B, L, D) tokens, or (B, D) = one token.
VAD exposes one 512-d ego feature, so L = 1 and the softmax over a single key is exactly 1: each
cross-attention layer then returns W_o (W_v f_ego + b_v) + b_o whatever the query, and the query only
enters through the residual connection. Each sub-head is therefore a query-specific (biased) MLP of
f_ego; it stays a valid and trainable head, but the attention selects nothing. With L > 1 (for instance
the ego query's agent and map outputs kept as separate tokens) the attention becomes meaningful.

Loss (paper): L = lambda1 * L_align + lambda2 * L_action with
    L_align  = sum_k mean_valid CE( softmax(y_k / tau_t), softmax(f_k / tau_s) )   (over the feature dim)
    L_action = sum_k mean_valid CE( labels_k, logits_k )
where y_k is the teacher text feature (no gradient, no centring). Samples whose target is missing are
masked out: the mean runs over valid samples only, and a batch without any valid sample contributes a
zero that still belongs to the autograd graph (so DDP and the optimizer see every head parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from teacher.prompts import ACTION_KINDS, ACTION_LABELS, TEXT_KINDS
from vlmad.errors import UserError

ALIGN_LOSSES = ("align", "mse", "kl", "cosine", "clip")
HEAD_KINDS = ("mhca", "mlp")
NUM_CLASSES = {k: len(ACTION_LABELS[k]) for k in ACTION_KINDS}  # control 4, turn 4, lane 5


@dataclass
class VLMADConfig:
    """Auxiliary VLM-AD supervision. Every switch is one of the paper's ablations or a head size."""

    enabled: bool = True  # build the heads and add their loss; False = plain VAD training (no aux module)
    use_q1: bool = True  # Q1 freeform answers: text alignment head + L_align ("Q1 only" = use_q2 False)
    use_q2: bool = True  # Q2 structured answers: action head + L_action ("Q2 only" = use_q1 False)
    q1_mask: tuple[bool, bool, bool] = (True, True, True)  # which of (current, future, reasoning) are aligned
    q2_mask: tuple[bool, bool, bool] = (True, True, True)  # which of (control, turn, lane) are classified
    align_loss: str = "align"  # "align" (paper: CE of tempered softmaxes), "mse", "kl", "cosine", "clip"
    tau_t: float = 0.04  # teacher temperature of "align"/"kl" (paper); sharper than the student's
    tau_s: float = 0.1  # student temperature of "align"/"kl" (paper)
    # L2-normalise the teacher text feature before any loss. The paper applies softmax(y / tau_t) to the
    # encoder's feature as is (it lists the teacher processing it does: no centring, no gradient; it
    # mentions no normalisation), so the default is False. This project's encoders already store unit-norm
    # features (then the switch changes nothing); it matters for stores of raw CLIP text_embeds.
    # See docs/vlm_ad.md.
    normalize_teacher: bool = False
    clip_tau: float = 0.07  # temperature of the "clip" contrastive variant (CLIP's initial value)
    text_head: str = "mhca"  # text alignment head: "mhca" (paper) or "mlp" (MLP on f_ego, no queries)
    action_head: str = "mhca"  # action head: "mhca" (paper) or "mlp" (the paper's MLP ablation)
    lambda1: float = 1.0  # weight of L_align (paper: 1.0)
    lambda2: float = 0.1  # weight of L_action (paper: 0.1)
    num_heads: int = 8  # attention heads per cross-attention layer (paper: 8)
    num_layers: int = 3  # cross-attention layers per query (paper: 3)
    attn_dim: int = 256  # width of each query / attention block (not given in the paper; VAD's embed size)
    ffn_dim: int = 512  # feed-forward width inside each attention layer (VAD's FFN size)
    mlp_hidden: int = 512  # hidden width of the output MLPs (after the concat with f_ego)
    dropout: float = 0.1  # dropout in the attention layers (training only; heads never run at inference)

    def __post_init__(self) -> None:
        self.q1_mask = tuple(bool(x) for x in self.q1_mask)  # type: ignore[assignment]
        self.q2_mask = tuple(bool(x) for x in self.q2_mask)  # type: ignore[assignment]
        problems = []
        if len(self.q1_mask) != 3 or len(self.q2_mask) != 3:
            problems.append("q1_mask and q2_mask need exactly 3 entries")
        if self.align_loss not in ALIGN_LOSSES:
            problems.append(f"align_loss {self.align_loss!r} not in {ALIGN_LOSSES}")
        for name in ("text_head", "action_head"):
            if getattr(self, name) not in HEAD_KINDS:
                problems.append(f"{name} {getattr(self, name)!r} not in {HEAD_KINDS}")
        for name in ("tau_t", "tau_s", "clip_tau"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        if self.attn_dim % max(self.num_heads, 1) or self.num_heads < 1:
            problems.append(f"attn_dim {self.attn_dim} must be a multiple of num_heads {self.num_heads}")
        if self.num_layers < 1:
            problems.append("num_layers must be >= 1")
        if self.enabled and not (self.q1_active or self.q2_active):
            problems.append("enabled but no target is used (use_q1/use_q2 and the masks select nothing); "
                            "set enabled: false for plain VAD")
        if problems:
            raise UserError("vlm_ad config: " + "; ".join(problems))

    @property
    def q1_active(self) -> bool:
        return self.use_q1 and any(self.q1_mask)

    @property
    def q2_active(self) -> bool:
        return self.use_q2 and any(self.q2_mask)

    @property
    def text_kinds(self) -> tuple[str, ...]:
        """Text targets that get a head and a loss, in `TEXT_KINDS` order."""
        return tuple(k for k, m in zip(TEXT_KINDS, self.q1_mask) if m) if self.use_q1 else ()

    @property
    def action_kinds(self) -> tuple[str, ...]:
        """Action targets that get a head and a loss, in `ACTION_KINDS` order."""
        return tuple(k for k, m in zip(ACTION_KINDS, self.q2_mask) if m) if self.use_q2 else ()


# ----------------------------------------------------------------------------------------------------
# Heads


class CrossAttentionLayer(nn.Module):
    """Query attends to the f_ego tokens, then a feed-forward block; post-norm as in DETR/VAD decoders."""

    def __init__(self, dim: int, kv_dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, kdim=kv_dim, vdim=kv_dim,
                                          batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """q (B, 1, dim), tokens (B, L, kv_dim) -> (B, 1, dim)."""
        a = self.attn(q, tokens, tokens, need_weights=False)[0]
        q = self.norm1(q + self.drop(a))
        return self.norm2(q + self.drop(self.ffn(q)))


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))


class QueryHead(nn.Module):
    """One target: learnable query -> `num_layers` cross-attention layers -> concat(pooled f_ego) -> MLP."""

    def __init__(self, ego_dim: int, out_dim: int, cfg: VLMADConfig):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, cfg.attn_dim))  # N(0, 1) like DETR's query embedding
        self.layers = nn.ModuleList(
            CrossAttentionLayer(cfg.attn_dim, ego_dim, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
            for _ in range(cfg.num_layers))
        self.mlp = _mlp(cfg.attn_dim + ego_dim, cfg.mlp_hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D) -> (B, out_dim)."""
        q = self.query.expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, tokens)
        return self.mlp(torch.cat([q[:, 0], tokens.mean(dim=1)], dim=-1))


class MLPHead(nn.Module):
    """Ablation head: MLP on the token-averaged f_ego (for L = 1 simply f_ego)."""

    def __init__(self, ego_dim: int, out_dim: int, cfg: VLMADConfig):
        super().__init__()
        self.mlp = _mlp(ego_dim, cfg.mlp_hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D) -> (B, out_dim)."""
        return self.mlp(tokens.mean(dim=1))


def _head(kind: str, ego_dim: int, out_dim: int, cfg: VLMADConfig) -> nn.Module:
    return QueryHead(ego_dim, out_dim, cfg) if kind == "mhca" else MLPHead(ego_dim, out_dim, cfg)


class VLMADHeads(nn.Module):
    """Text alignment and action heads on f_ego. Only the enabled targets get a sub-head.

    Parameter names are stable across ablations (`text.<kind>.*`, `action.<kind>.*`), so an ablated head
    set holds a subset of the full set's parameters.
    """

    def __init__(self, ego_dim: int, text_dim: int | None, cfg: VLMADConfig):
        super().__init__()
        if cfg.q1_active and not (text_dim and text_dim > 0):
            raise UserError("VLM-AD text alignment (use_q1) needs the text-embedding size C; it is read from "
                            "the feature store (FeatureStore.dim)")
        self.cfg = cfg
        self.ego_dim = int(ego_dim)
        self.text_dim = int(text_dim) if text_dim else None
        self.text = nn.ModuleDict({k: _head(cfg.text_head, ego_dim, self.text_dim, cfg)
                                   for k in cfg.text_kinds})
        self.action = nn.ModuleDict({k: _head(cfg.action_head, ego_dim, NUM_CLASSES[k], cfg)
                                     for k in cfg.action_kinds})

    def forward(self, f_ego: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """f_ego (B, D) or (B, L, D) -> {"text": {kind: (B, C)}, "action": {kind: (B, n_classes)}}."""
        tokens = f_ego[:, None] if f_ego.ndim == 2 else f_ego
        if tokens.ndim != 3 or tokens.shape[-1] != self.ego_dim:
            raise ValueError(f"f_ego must be (B, {self.ego_dim}) or (B, L, {self.ego_dim}); "
                             f"got {tuple(f_ego.shape)}")
        return {"text": {k: h(tokens) for k, h in self.text.items()},
                "action": {k: h(tokens) for k, h in self.action.items()}}


# ----------------------------------------------------------------------------------------------------
# Losses


def masked_mean(per_sample: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of per_sample (B,) over valid (B,) bool; 0 (with graph) when nothing is valid."""
    w = valid.to(per_sample.dtype)
    return (per_sample * w).sum() / w.sum().clamp(min=1.0)


def align_per_sample(f: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, cfg: VLMADConfig) -> torch.Tensor:
    """Alignment loss of each sample (B,) between student f (B, C) and teacher y (B, C, no grad).

    `y` must already be finite where valid; rows where `valid` is False may hold anything finite.
    For "clip" the value of a sample depends on the other valid samples of the batch (contrastive).
    """
    f = f.float()
    y = y.detach().float()
    if cfg.align_loss in ("align", "kl"):
        p_t = F.softmax(y / cfg.tau_t, dim=-1)
        log_q = F.log_softmax(f / cfg.tau_s, dim=-1)
        if cfg.align_loss == "align":
            return -(p_t * log_q).sum(-1)
        return (p_t * (F.log_softmax(y / cfg.tau_t, dim=-1) - log_q)).sum(-1)
    if cfg.align_loss == "mse":
        return (f - y).pow(2).mean(-1)
    if cfg.align_loss == "cosine":
        return 1.0 - F.cosine_similarity(f, y, dim=-1, eps=1e-8)
    # "clip": symmetric InfoNCE over the valid samples of the batch (other samples are the negatives;
    # identical answers in one batch are false negatives, as in CLIP). Invalid rows/columns are pushed
    # out with a large negative logit instead of being indexed away, which keeps shapes static.
    logits = F.normalize(f, dim=-1) @ F.normalize(y, dim=-1).T / cfg.clip_tau  # (B, B)
    pair_ok = valid[:, None] & valid[None, :]
    logits = logits.masked_fill(~pair_ok, -1e9)
    diag = logits.diagonal()
    return 0.5 * ((torch.logsumexp(logits, 1) - diag) + (torch.logsumexp(logits, 0) - diag))


def _check_targets(targets: dict, cfg: VLMADConfig, batch: int, text_dim: int | None) -> None:
    need = ["vlm_text", "vlm_text_mask"] if cfg.q1_active else []
    need += ["vlm_actions"] if cfg.q2_active else []
    missing = [k for k in need if k not in targets]
    if missing:
        raise UserError(f"VLM-AD is enabled but the batch lacks {missing}; give the training run a feature "
                        "store (teacher.feature_store) or set vlm_ad.enabled: false")
    if cfg.q1_active:
        text, mask = targets["vlm_text"], targets["vlm_text_mask"]
        if tuple(text.shape) != (batch, 3, text_dim) or tuple(mask.shape) != (batch, 3):
            raise UserError(f"vlm_text must be ({batch}, 3, {text_dim}) and vlm_text_mask ({batch}, 3); got "
                            f"{tuple(text.shape)} and {tuple(mask.shape)} (does the feature store's encoder "
                            "match the one the heads were built for?)")
    if cfg.q2_active and tuple(targets["vlm_actions"].shape) != (batch, 3):
        raise UserError(f"vlm_actions must be ({batch}, 3); got {tuple(targets['vlm_actions'].shape)}")


def vlm_ad_loss(outputs: dict[str, dict[str, torch.Tensor]], targets: dict, cfg: VLMADConfig
                ) -> dict[str, torch.Tensor]:
    """VLM-AD losses of one batch.

    outputs: `VLMADHeads.forward` result. targets: a dict (the batch) with "vlm_text" (B, 3, C) float,
    "vlm_text_mask" (B, 3) bool, "vlm_actions" (B, 3) int64 with -1 = missing (only the keys the config
    uses are required). Returns "align", "action", "total" (= lambda1 * align + lambda2 * action),
    per-target "align/<kind>" and "action/<kind>", and detached counts "n_text_valid" / "n_action_valid".

    A non-finite teacher feature in a slot its mask calls valid, or an action id outside its label set,
    is corrupt input and raises `UserError` (the feature store refuses to write either).
    """
    any_out = next(iter(outputs["text"].values()), None)
    if any_out is None:
        any_out = next(iter(outputs["action"].values()))
    batch, device = any_out.shape[0], any_out.device
    text_dim = next(iter(outputs["text"].values())).shape[-1] if outputs["text"] else None
    _check_targets(targets, cfg, batch, text_dim)
    zero = any_out.sum() * 0.0  # a zero that belongs to the graph
    res: dict[str, torch.Tensor] = {}
    bad: list[torch.Tensor] = []

    align = zero.float()
    n_text = torch.zeros((), device=device)
    if outputs["text"]:
        text = targets["vlm_text"].to(device)
        mask = targets["vlm_text_mask"].to(device).bool()
        bad.append((mask[..., None] & ~torch.isfinite(text)).any())
        text = torch.where(mask[..., None], text, torch.zeros((), dtype=text.dtype, device=device))
        if cfg.normalize_teacher:
            text = F.normalize(text, dim=-1)
        for kind, f in outputs["text"].items():
            j = TEXT_KINDS.index(kind)
            term = masked_mean(align_per_sample(f, text[:, j], mask[:, j], cfg), mask[:, j])
            res[f"align/{kind}"] = term
            align = align + term
            n_text = n_text + mask[:, j].sum()

    action = zero.float()
    n_act = torch.zeros((), device=device)
    if outputs["action"]:
        labels_all = targets["vlm_actions"].to(device).long()
        for kind, logits in outputs["action"].items():
            j = ACTION_KINDS.index(kind)
            labels = labels_all[:, j]
            bad.append((labels < -1).any() | (labels >= NUM_CLASSES[kind]).any())
            valid = labels >= 0
            ce = F.cross_entropy(logits.float(), labels.clamp(0, NUM_CLASSES[kind] - 1), reduction="none")
            term = masked_mean(ce, valid)
            res[f"action/{kind}"] = term
            action = action + term
            n_act = n_act + valid.sum()

    if bad and bool(torch.stack(bad).any()):  # one host sync per step; corrupt targets must not train
        raise UserError("VLM-AD targets are corrupt: NaN/inf text features where vlm_text_mask is True, or "
                        f"action ids outside -1..n_classes-1 ({NUM_CLASSES}); rebuild the feature store")
    res.update(align=align, action=action, total=cfg.lambda1 * align + cfg.lambda2 * action,
               n_text_valid=n_text.detach(), n_action_valid=n_act.detach())
    return res
