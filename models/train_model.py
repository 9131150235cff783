"""The training-time model: the VAD driver plus, optionally, the VLM-AD auxiliary heads.

    TrainModel
    ├── driver: VAD            the only thing a driving checkpoint contains (models.checkpoint_formats)
    └── aux: VLMADHeads | None reads outputs["f_ego"] after the driver has run; never called at inference

The driver runs exactly as it would alone: the heads only read the ego feature it returns, so the plan
of a `TrainModel` and of its exported driver are bit-identical (tests/test_vlmad_train_export.py). The
heads' gradient reaches the driver through f_ego, which is the point of the method.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.features import feature_inputs
from models.vad import VAD
from models.vlm_ad import VLMADConfig, VLMADHeads, vlm_ad_loss

VLM_KEYS = ("vlm_text", "vlm_text_mask", "vlm_actions")  # batch keys the VLM-AD targets travel under


def ego_feature_dim(driver: VAD) -> int:
    """Size D of the driver's f_ego: the ego query's outputs on agents and on the map, concatenated (2C)."""
    return 2 * int(driver.cfg.embed_dims)


class TrainModel(nn.Module):
    """`driver` (VAD) + `aux` (VLM-AD heads, None when disabled). Used for training only."""

    def __init__(self, driver: VAD, vlm_cfg: VLMADConfig | None = None, text_dim: int | None = None):
        super().__init__()
        self.driver = driver
        self.aux_cfg = vlm_cfg if vlm_cfg is not None and vlm_cfg.enabled else None
        self.aux = VLMADHeads(ego_feature_dim(driver), text_dim, self.aux_cfg) if self.aux_cfg else None

    def forward(self, batch: dict[str, Any], state: Any = None
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
        """One training (or validation) pass.

        batch: the model batch (docs/data_contract.md) plus, for VLM-AD, "vlm_text" (B, 3, C),
        "vlm_text_mask" (B, 3) bool and "vlm_actions" (B, 3) int64 (-1 = missing).
        Returns (outputs, losses, new_state): outputs are the driver's, plus "vlm" (head outputs) when
        the heads ran; losses are the driver's loss dict with "vlm/<name>" entries added and "total" =
        driver total + VLM-AD total. With the heads on, a training batch without the VLM keys is a
        `UserError` (a missing feature store must not silently train plain VAD); in eval mode such a
        batch just gets the driver's losses.
        """
        # The driver sees the feature keys only (never targets), exactly as at inference.
        outputs, new_state = self.driver(feature_inputs(batch), state)
        losses = dict(self.driver.loss(outputs, batch))
        if self.aux is None:
            return outputs, losses, new_state
        if not self.training and not any(k in batch for k in VLM_KEYS):
            return outputs, losses, new_state
        head_out = self.aux(outputs["f_ego"])
        vlm = vlm_ad_loss(head_out, batch, self.aux_cfg)
        outputs = {**outputs, "vlm": head_out}
        losses.update({f"vlm/{k}": v for k, v in vlm.items()})
        losses["total"] = losses["total"] + vlm["total"]
        return outputs, losses, new_state

    def param_groups(self, lr: float, backbone_lr_mult: float = 0.1, weight_decay: float = 0.01
                     ) -> list[dict]:
        """The driver's AdamW groups plus one "vlm_ad" group (full lr) for the heads when present."""
        groups = self.driver.param_groups(lr, backbone_lr_mult, weight_decay)
        if self.aux is not None:
            groups.append({"params": [p for p in self.aux.parameters() if p.requires_grad], "lr": lr,
                           "weight_decay": weight_decay, "name": "vlm_ad"})
        return groups
