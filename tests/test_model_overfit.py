"""A single batch is overfit by the test-size VAD: planning L1 drops at least tenfold."""

from __future__ import annotations

import dataclasses

import torch

from models.configs import get_config
from models.features import feature_inputs
from models.vad import VAD
from synthetic.batch import make_dummy_batch


def test_single_batch_overfit_reduces_planning_l1_tenfold():
    cfg = dataclasses.replace(get_config("vad_nano"), dropout=0.0)
    torch.manual_seed(0)
    model = VAD(cfg)
    batch = make_dummy_batch(cfg, batch_size=1, queue_length=1, seed=1)
    inputs = feature_inputs(batch)
    opt = torch.optim.AdamW(model.param_groups(1e-3, backbone_lr_mult=1.0, weight_decay=0.0))
    history = []
    for _ in range(60):
        out, _ = model(inputs)
        losses = model.loss(out, batch)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append(losses["plan_reg"].item())
    assert min(history[-10:]) * 10 <= history[0], (history[0], history[-10:])
