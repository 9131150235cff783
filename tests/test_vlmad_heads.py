"""VLM-AD heads and losses on random f_ego tensors: values against independent numpy formulas, gradients,
masking, and that each ablation switch changes what it should and nothing else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.vlm_ad import ALIGN_LOSSES, NUM_CLASSES, VLMADConfig, VLMADHeads, vlm_ad_loss
from vlmad.config import from_dict
from vlmad.errors import UserError

TEXT = ("current", "future", "reasoning")
ACTS = ("control", "turn", "lane")
D, C = 16, 6  # tiny ego / text sizes


def small_cfg(**kw) -> VLMADConfig:
    return VLMADConfig(attn_dim=16, ffn_dim=32, mlp_hidden=32, num_heads=8, dropout=0.0, **kw)


def fixed_case(seed: int = 0, b: int = 4):
    """Hand-made outputs / targets: sample 1 misses 'current', sample 3 misses every text; labels with -1."""
    g = torch.Generator().manual_seed(seed)
    outputs = {"text": {k: torch.randn(b, C, generator=g) for k in TEXT},
               "action": {k: torch.randn(b, NUM_CLASSES[k], generator=g) for k in ACTS}}
    mask = torch.ones(b, 3, dtype=torch.bool)
    mask[1, 0] = False
    mask[3] = False
    targets = {"vlm_text": torch.randn(b, 3, C, generator=g) * 0.3, "vlm_text_mask": mask,
               "vlm_actions": torch.tensor([[0, 3, 4], [-1, 1, 2], [2, -1, -1], [3, 0, 0]][:b])}
    return outputs, targets


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_reference(outputs, targets, kind: str, tau_t=0.04, tau_s=0.1, clip_tau=0.07, normalize=False):
    """Independent float64 numpy implementation of the alignment and action losses."""
    text = targets["vlm_text"].numpy().astype(np.float64)
    mask = targets["vlm_text_mask"].numpy()
    if normalize:
        text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    align = 0.0
    for j, k in enumerate(TEXT):
        f = outputs["text"][k].numpy().astype(np.float64)
        y = text[:, j]
        v = mask[:, j]
        if kind == "align":
            per = -(np_softmax(y / tau_t) * np.log(np_softmax(f / tau_s))).sum(-1)
        elif kind == "kl":
            p = np_softmax(y / tau_t)
            per = (p * (np.log(p) - np.log(np_softmax(f / tau_s)))).sum(-1)
        elif kind == "mse":
            per = ((f - y) ** 2).mean(-1)
        elif kind == "cosine":
            per = 1 - (f * y).sum(-1) / np.linalg.norm(f, axis=-1) / np.linalg.norm(y, axis=-1)
        else:  # clip over the valid samples only
            fv = f[v] / np.linalg.norm(f[v], axis=-1, keepdims=True)
            yv = y[v] / np.linalg.norm(y[v], axis=-1, keepdims=True)
            s = fv @ yv.T / clip_tau
            i2t = -np.log(np.diag(np_softmax(s)))
            t2i = -np.log(np.diag(np_softmax(s.T)))
            align += (0.5 * (i2t + t2i)).mean()
            continue
        align += per[v].mean()
    action = 0.0
    labels = targets["vlm_actions"].numpy()
    for j, k in enumerate(ACTS):
        z = outputs["action"][k].numpy().astype(np.float64)
        v = labels[:, j] >= 0
        ce = -np.log(np_softmax(z)[np.arange(len(z)), np.maximum(labels[:, j], 0)])
        action += ce[v].mean()
    return align, action


@pytest.mark.parametrize("kind", ALIGN_LOSSES)
def test_loss_values_match_numpy(kind):
    outputs, targets = fixed_case()
    cfg = small_cfg(align_loss=kind)
    res = vlm_ad_loss(outputs, targets, cfg)
    align, action = np_reference(outputs, targets, kind)
    assert res["align"].item() == pytest.approx(align, rel=1e-5, abs=1e-6)
    assert res["action"].item() == pytest.approx(action, rel=1e-5)
    assert res["total"].item() == pytest.approx(1.0 * align + 0.1 * action, rel=1e-5)
    assert res["n_text_valid"].item() == 8 and res["n_action_valid"].item() == 9


def test_paper_align_loss_by_hand_on_two_dims():
    """One sample, C = 2: CE = -(p log q) written out with exp by hand."""
    f, y = [0.3, -0.2], [0.05, 0.01]
    p = np.exp(np.array(y) / 0.04) / np.exp(np.array(y) / 0.04).sum()
    q = np.exp(np.array(f) / 0.1) / np.exp(np.array(f) / 0.1).sum()
    expected = -(p * np.log(q)).sum()
    cfg = small_cfg(use_q2=False, q1_mask=(True, False, False))
    outputs = {"text": {"current": torch.tensor([f])}, "action": {}}
    targets = {"vlm_text": torch.tensor([[y, y, y]]), "vlm_text_mask": torch.ones(1, 3, dtype=torch.bool)}
    assert vlm_ad_loss(outputs, targets, cfg)["total"].item() == pytest.approx(expected, rel=1e-6)


def test_normalize_teacher_switch():
    outputs, targets = fixed_case()
    for norm in (False, True):
        res = vlm_ad_loss(outputs, targets, small_cfg(normalize_teacher=norm))
        expected = np_reference(outputs, targets, "align", normalize=norm)[0]
        assert res["align"].item() == pytest.approx(expected, rel=1e-5)
    # Unit-norm teacher features (MiniLM): the switch changes nothing.
    unit = dict(targets, vlm_text=torch.nn.functional.normalize(targets["vlm_text"], dim=-1))
    a = vlm_ad_loss(outputs, unit, small_cfg(normalize_teacher=False))["align"]
    b = vlm_ad_loss(outputs, unit, small_cfg(normalize_teacher=True))["align"]
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("head", ["mhca", "mlp"])
def test_gradient_reaches_f_ego_and_not_the_teacher(head):
    torch.manual_seed(0)
    cfg = small_cfg(text_head=head, action_head=head)
    heads = VLMADHeads(D, C, cfg)
    f_ego = torch.randn(4, D, requires_grad=True)
    _, targets = fixed_case()
    targets["vlm_text"].requires_grad_(True)
    res = vlm_ad_loss(heads(f_ego), targets, cfg)
    res["total"].backward()
    assert f_ego.grad is not None and f_ego.grad[0].abs().sum() > 0
    assert targets["vlm_text"].grad is None  # teacher: no gradient
    for name, p in heads.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kind", ALIGN_LOSSES)
def test_masked_samples_are_left_out_not_zero_filled(kind):
    """Loss on a batch with unannotated samples == loss on the annotated samples alone."""
    outputs, targets = fixed_case()
    cfg = small_cfg(align_loss=kind, q1_mask=(False, True, True), q2_mask=(False, True, False))
    res = vlm_ad_loss(outputs, targets, cfg)
    keep = torch.tensor([0, 1, 2])  # sample 3 has no text at all; its turn/lane labels are valid (0, 0)
    targets3 = {"vlm_text": targets["vlm_text"][keep], "vlm_text_mask": targets["vlm_text_mask"][keep],
                "vlm_actions": targets["vlm_actions"][keep].clone()}
    outputs3 = {"text": {k: v[keep] for k, v in outputs["text"].items()},
                "action": {k: v[keep] for k, v in outputs["action"].items()}}
    res3 = vlm_ad_loss(outputs3, targets3, cfg)
    assert torch.allclose(res["align"], res3["align"], atol=1e-6)
    # Changing what a masked sample holds (text, student output, labels -1) changes nothing.
    outputs2 = {"text": {k: v.clone() for k, v in outputs["text"].items()},
                "action": {k: v.clone() for k, v in outputs["action"].items()}}
    targets2 = {k: v.clone() for k, v in targets.items()}
    targets2["vlm_text"][3] = float("nan")  # masked rows may hold anything, even NaN
    targets2["vlm_text"][1, 0] = 100.0
    for k in TEXT:
        outputs2["text"][k][3] = 50.0
    outputs2["action"]["turn"][2] = 9.0  # turn label of sample 2 is -1
    res2 = vlm_ad_loss(outputs2, targets2, cfg)
    for key in ("align", "action", "total"):
        assert torch.equal(res[key], res2[key]), key


def test_all_masked_batch_gives_zero_with_graph():
    torch.manual_seed(0)
    cfg = small_cfg()
    heads = VLMADHeads(D, C, cfg)
    f_ego = torch.randn(3, D, requires_grad=True)
    targets = {"vlm_text": torch.full((3, 3, C), float("nan")),
               "vlm_text_mask": torch.zeros(3, 3, dtype=torch.bool), "vlm_actions": torch.full((3, 3), -1)}
    for kind in ALIGN_LOSSES:
        res = vlm_ad_loss(heads(f_ego), targets, dataclasses.replace(cfg, align_loss=kind))
        assert res["total"].item() == 0.0 and res["total"].requires_grad
        res["total"].backward()
        assert torch.isfinite(f_ego.grad).all() and f_ego.grad.abs().sum() == 0
        assert res["n_text_valid"].item() == 0 and res["n_action_valid"].item() == 0
        f_ego.grad = None


def test_corrupt_targets_raise():
    outputs, targets = fixed_case()
    cfg = small_cfg()
    bad = dict(targets, vlm_text=targets["vlm_text"].clone())
    bad["vlm_text"][0, 1, 2] = float("nan")  # valid slot
    with pytest.raises(UserError, match="corrupt"):
        vlm_ad_loss(outputs, bad, cfg)
    bad = dict(targets, vlm_actions=targets["vlm_actions"].clone())
    bad["vlm_actions"][0, 2] = 5  # lane has 5 classes: 0..4
    with pytest.raises(UserError, match="corrupt"):
        vlm_ad_loss(outputs, bad, cfg)
    with pytest.raises(UserError, match="lacks"):
        vlm_ad_loss(outputs, {"vlm_actions": targets["vlm_actions"]}, cfg)
    with pytest.raises(UserError, match="encoder"):  # text size of the store != C of the heads
        vlm_ad_loss(outputs, dict(targets, vlm_text=torch.zeros(4, 3, C + 1)), cfg)


def test_f_ego_token_shapes():
    torch.manual_seed(0)
    heads = VLMADHeads(D, C, small_cfg()).eval()
    f = torch.randn(2, D)
    a, b = heads(f), heads(f[:, None])
    for group in ("text", "action"):
        for k in a[group]:
            assert torch.equal(a[group][k], b[group][k])
    out = heads(torch.randn(2, 5, D))
    assert out["text"]["reasoning"].shape == (2, C) and out["action"]["lane"].shape == (2, 5)
    with pytest.raises(ValueError, match="f_ego"):
        heads(torch.randn(2, D + 1))


def test_single_token_attention_ignores_the_query():
    """Documented property: with L = 1 the attention output does not depend on the query."""
    torch.manual_seed(0)
    layer = VLMADHeads(D, C, small_cfg()).text["current"].layers[0].attn
    kv = torch.randn(3, 1, D)
    out1 = layer(torch.randn(3, 1, 16), kv, kv, need_weights=False)[0]
    out2 = layer(torch.randn(3, 1, 16), kv, kv, need_weights=False)[0]
    assert torch.allclose(out1, out2, atol=1e-6)
    kv5 = torch.randn(3, 5, D)
    out3 = layer(torch.randn(3, 1, 16), kv5, kv5, need_weights=False)[0]
    out4 = layer(torch.randn(3, 1, 16), kv5, kv5, need_weights=False)[0]
    assert not torch.allclose(out3, out4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Ablation switches: each changes its own part and nothing else.

def run(cfg: VLMADConfig, full: VLMADHeads, f_ego, targets):
    """Build heads for `cfg`, copy the shared parameters of `full`, return (param names, loss dict)."""
    heads = VLMADHeads(D, C, cfg)
    missing, unexpected = heads.load_state_dict(full.state_dict(), strict=False)
    assert not missing, missing  # an ablated head set is a subset of the full one
    res = vlm_ad_loss(heads.eval()(f_ego), targets, cfg)
    return set(heads.state_dict()), res


def test_each_ablation_switch_changes_only_its_part():
    torch.manual_seed(0)
    base = small_cfg()
    full = VLMADHeads(D, C, base).eval()
    f_ego = torch.randn(4, D)
    _, targets = fixed_case()
    targets["vlm_text"] = targets["vlm_text"] * 5  # not unit norm, so normalize_teacher matters
    keys0, r0 = run(base, full, f_ego, targets)
    text_keys = {k for k in keys0 if k.startswith("text.")}
    act_keys = keys0 - text_keys

    def same(r, names):
        for n in names:
            assert torch.equal(r[n], r0[n]), n

    def differ(r, names):
        for n in names:
            assert not torch.allclose(r[n], r0[n]), n

    aligns = [f"align/{k}" for k in TEXT]
    acts = [f"action/{k}" for k in ACTS]

    keys, r = run(dataclasses.replace(base, use_q1=False), full, f_ego, targets)  # Q2 only
    assert keys == act_keys and r["align"].item() == 0.0 and not any(a in r for a in aligns)
    same(r, acts + ["action"])
    keys, r = run(dataclasses.replace(base, use_q2=False), full, f_ego, targets)  # Q1 only
    assert keys == text_keys and r["action"].item() == 0.0
    same(r, aligns + ["align"])
    for j, k in enumerate(TEXT):  # Q1-1 / Q1-2 / Q1-3 masks
        m = [True] * 3
        m[j] = False
        keys, r = run(dataclasses.replace(base, q1_mask=tuple(m)), full, f_ego, targets)
        assert keys == keys0 - {n for n in keys0 if n.startswith(f"text.{k}.")}
        assert f"align/{k}" not in r
        same(r, [a for a in aligns if a != f"align/{k}"] + acts + ["action"])
        assert r["align"].item() == pytest.approx(r0["align"].item() - r0[f"align/{k}"].item(), rel=1e-5)
    for j, k in enumerate(ACTS):
        m = [True] * 3
        m[j] = False
        keys, r = run(dataclasses.replace(base, q2_mask=tuple(m)), full, f_ego, targets)
        assert keys == keys0 - {n for n in keys0 if n.startswith(f"action.{k}.")}
        same(r, [a for a in acts if a != f"action/{k}"] + aligns + ["align"])
    for kind in ALIGN_LOSSES[1:]:
        _, r = run(dataclasses.replace(base, align_loss=kind), full, f_ego, targets)
        same(r, acts + ["action"])
        differ(r, aligns)
    for field, value in (("tau_t", 0.07), ("tau_s", 0.2), ("normalize_teacher", True)):
        _, r = run(dataclasses.replace(base, **{field: value}), full, f_ego, targets)
        same(r, acts + ["action"])
        differ(r, ["align"])
    # MLP action head: only the action head's parameters and losses change.
    torch.manual_seed(1)
    mlp_cfg = dataclasses.replace(base, action_head="mlp")
    mlp = VLMADHeads(D, C, mlp_cfg)
    mlp.text.load_state_dict(full.text.state_dict())
    r = vlm_ad_loss(mlp.eval()(f_ego), targets, mlp_cfg)
    assert all(not isinstance(h, type(full.action["control"])) for h in mlp.action.values())
    same(r, aligns + ["align"])
    differ(r, ["action"])
    mlp_params = sum(p.numel() for p in mlp.action.parameters())
    assert mlp_params < sum(p.numel() for p in full.action.parameters())
    # lambda1 / lambda2 only reweight the total.
    _, r = run(dataclasses.replace(base, lambda1=0.5, lambda2=2.0), full, f_ego, targets)
    same(r, aligns + acts + ["align", "action"])
    assert r["total"].item() == pytest.approx(0.5 * r0["align"].item() + 2.0 * r0["action"].item(), rel=1e-5)


def test_config_validation_and_yaml_lists():
    cfg = from_dict(VLMADConfig, {"q1_mask": [True, False, True], "align_loss": "clip"})
    assert cfg.q1_mask == (True, False, True) and cfg.text_kinds == ("current", "reasoning")
    for bad in ({"align_loss": "l1"}, {"action_head": "gru"}, {"tau_t": 0.0}, {"q1_mask": [True, True]},
                {"use_q1": False, "use_q2": False}, {"q1_mask": [False] * 3, "use_q2": False},
                {"attn_dim": 20}, {"nonsense": 1}):
        with pytest.raises(UserError):
            from_dict(VLMADConfig, bad)
    assert not from_dict(VLMADConfig, {"enabled": False, "use_q1": False, "use_q2": False}).q1_active
    with pytest.raises(UserError, match="text-embedding size"):
        VLMADHeads(D, None, small_cfg())
    assert len(VLMADHeads(D, None, small_cfg(use_q1=False)).text) == 0
