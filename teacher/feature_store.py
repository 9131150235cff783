"""Teacher targets for training: text features and action labels per sample token, one file per split.

File format (safetensors, so it loads without pickle):
    text       (N, 3, C) float32  embeddings of A_c, A_f, A_r (order `prompts.TEXT_KINDS`); zeros where masked
    text_mask  (N, 3)    uint8    1 where that text answer exists
    actions    (N, 3)    int64    class ids of control / turn / lane (`prompts.ACTION_KINDS`), -1 missing
    metadata (str -> str): tokens (JSON list, row order), encoder, dim, teacher, prompt_version,
                           action_labels (JSON), plus any extra keys given to `save`.

Training code calls `FeatureStore.load(path).lookup(batch["token"])`; a token the store does not know
comes back fully masked (text_mask False, actions -1), so the VLM-AD losses simply skip it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from teacher.prompts import ACTION_KINDS, ACTION_LABELS
from vlmad.errors import UserError
from vlmad.io import atomic_write_bytes

_REQUIRED_META = ("tokens", "encoder", "dim")


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(dtype).contiguous()
    return torch.as_tensor(np.asarray(x)).to(dtype).contiguous()


class FeatureStore:
    """Text features (N, 3, C), text mask (N, 3) and action ids (N, 3) of one split, keyed by token."""

    def __init__(self, tokens: Sequence[str], text: torch.Tensor, text_mask: torch.Tensor,
                 actions: torch.Tensor, meta: dict[str, str]):
        self.tokens = list(tokens)
        self.text = text  # (N, 3, C) float32
        self.text_mask = text_mask  # (N, 3) bool
        self.actions = actions  # (N, 3) int64, -1 = missing
        self.meta = dict(meta)
        self._index = {t: i for i, t in enumerate(self.tokens)}

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def save(path: str | Path, tokens: Sequence[str], text: Any, text_mask: Any, actions: Any,
             meta: dict[str, Any] | None = None) -> Path:
        """Validate and write a store atomically. `meta` needs at least "encoder"; values are stringified.

        text (N, 3, C) float, text_mask (N, 3) bool, actions (N, 3) int (-1 missing, else < class count).
        Masked text rows are zeroed so a stray value can never leak into a loss.
        """
        tokens = [str(t) for t in tokens]
        if len(set(tokens)) != len(tokens):
            raise ValueError("FeatureStore.save: duplicate sample tokens")
        text_t = _as_tensor(text, torch.float32)
        mask_t = _as_tensor(text_mask, torch.bool)
        act_t = _as_tensor(actions, torch.int64)
        n = len(tokens)
        if text_t.ndim != 3 or text_t.shape[:2] != (n, 3):
            raise ValueError(f"text must be (N, 3, C) with N={n}; got {tuple(text_t.shape)}")
        if tuple(mask_t.shape) != (n, 3) or tuple(act_t.shape) != (n, 3):
            raise ValueError(f"text_mask and actions must be ({n}, 3); got {tuple(mask_t.shape)}, "
                             f"{tuple(act_t.shape)}")
        if not torch.isfinite(text_t[mask_t]).all():
            raise ValueError("text features contain NaN/inf where the mask says they are valid")
        for j, kind in enumerate(ACTION_KINDS):
            col = act_t[:, j]
            if ((col < -1) | (col >= len(ACTION_LABELS[kind]))).any():
                raise ValueError(f"actions[:, {j}] ({kind}) outside -1..{len(ACTION_LABELS[kind]) - 1}")
        text_t = torch.where(mask_t[..., None], text_t, torch.zeros((), dtype=torch.float32))
        meta = dict(meta or {})
        if "encoder" not in meta:
            raise ValueError("meta must name the encoder")
        md = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        md.update(tokens=json.dumps(tokens), dim=str(text_t.shape[2]),
                  action_labels=json.dumps({k: list(v) for k, v in ACTION_LABELS.items()}))
        data = st_save({"text": text_t, "text_mask": mask_t.to(torch.uint8), "actions": act_t}, metadata=md)
        path = Path(path)
        atomic_write_bytes(path, data)
        return path

    @staticmethod
    def random(path: str | Path, tokens: Sequence[str], dim: int, seed: int = 0) -> Path:
        """A store of random targets for `tokens` (every slot valid): for benchmarks and tests of the
        training plumbing only, labelled as such; it carries no teacher knowledge."""
        g = np.random.default_rng(seed)
        n = len(tokens)
        return FeatureStore.save(path, tokens, g.normal(size=(n, 3, dim)), np.ones((n, 3), bool),
                                 g.integers(0, 4, (n, 3)), {"encoder": "random (not a text encoder)"})

    @classmethod
    def load(cls, path: str | Path) -> FeatureStore:
        """Read a store; a missing, truncated or inconsistent file is a `UserError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"feature store {path} does not exist; create it with "
                            f"`python -m scripts.encode_text --store ANNOTATIONS.sqlite --out {path} ...`")
        raw = path.read_bytes()
        try:
            tensors = st_load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            md = json.loads(raw[8:8 + header_len]).get("__metadata__", {}) or {}
        except (SafetensorError, ValueError, UnicodeDecodeError) as e:
            raise UserError(f"feature store {path} is corrupt ({e}); re-run scripts.encode_text") from None
        missing = [k for k in ("text", "text_mask", "actions") if k not in tensors]
        missing += [k for k in _REQUIRED_META if k not in md]
        if missing:
            raise UserError(f"feature store {path} lacks {missing}; re-run scripts.encode_text")
        try:
            tokens = json.loads(md["tokens"])
        except json.JSONDecodeError:
            raise UserError(f"feature store {path}: token list is corrupt; re-run scripts.encode_text"
                            ) from None
        text, mask, actions = tensors["text"].float(), tensors["text_mask"].bool(), tensors["actions"].long()
        n = len(tokens)
        if text.ndim != 3 or text.shape[:2] != (n, 3) or mask.shape != (n, 3) or actions.shape != (n, 3):
            raise UserError(f"feature store {path} has inconsistent shapes ({n} tokens, text "
                            f"{tuple(text.shape)}, mask {tuple(mask.shape)}, actions {tuple(actions.shape)})")
        if str(text.shape[2]) != md["dim"]:
            raise UserError(f"feature store {path}: metadata dim {md['dim']} != feature size {text.shape[2]}")
        return cls(tokens, text, mask, actions, md)

    # ------------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Text feature size C (512 for CLIP ViT-B/32, 384 MiniLM, 768 T5-base / MPNet-base)."""
        return int(self.text.shape[2])

    @property
    def encoder(self) -> str:
        return self.meta["encoder"]

    @property
    def teacher(self) -> str:
        return self.meta.get("teacher", "")

    @property
    def prompt_version(self) -> str:
        return self.meta.get("prompt_version", "")

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def lookup(self, tokens: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets for a batch of sample tokens.

        Returns text (B, 3, C) float32, text_mask (B, 3) bool, actions (B, 3) int64. Unknown tokens get
        zeros / False / -1 (no target) rather than an error, so a partly annotated split still trains.
        """
        idx = torch.tensor([self._index.get(t, -1) for t in tokens], dtype=torch.long)
        known = idx >= 0
        safe = idx.clamp(min=0)
        b = len(idx)
        if len(self.tokens) == 0:
            return (torch.zeros(b, 3, self.dim), torch.zeros(b, 3, dtype=torch.bool),
                    torch.full((b, 3), -1, dtype=torch.long))
        text = self.text[safe] * known[:, None, None]
        mask = self.text_mask[safe] & known[:, None]
        actions = torch.where(known[:, None], self.actions[safe], torch.full_like(self.actions[safe], -1))
        return text, mask, actions
