"""Matching, loss terms, planning constraints, backbone weight loading, image normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from models import losses as L
from models import plan_losses as P
from models.backbone import ResNet, load_backbone_weights
from models.decoders import box_code_to_boxes, boxes_to_code
from models.features import normalize_images
from vlmad.errors import UserError


def test_hungarian_detection_matching_recovers_permutation():
    boxes = torch.tensor(
        [
            [5.0, 1.0, 0.8, 4.5, 1.9, 1.6, 0.3],
            [-10.0, -4.0, 0.8, 4.0, 1.8, 1.5, -1.0],
            [20.0, 6.0, 0.5, 0.6, 0.6, 1.7, 2.0],
        ]
    )
    labels = torch.tensor([0, 3, 8])
    gt = boxes_to_code(boxes, torch.zeros(3, 2))
    perm = torch.tensor([4, 0, 2])  # targets live at these queries
    code = torch.randn(6, 10) * 5
    code[perm] = gt
    logits = torch.full((6, 10), -5.0)
    logits[perm, labels] = 5.0
    qi, gi = L.match_agents(logits, code, labels, gt, 2.0, 0.25)
    assert dict(zip(qi.tolist(), gi.tolist())) == {4: 0, 0: 1, 2: 2}
    cls, reg = L.detection_loss(logits[None], code[None], [(qi, gi)], [{"labels": labels}], [gt])
    assert reg.item() == pytest.approx(0.0, abs=1e-6) and cls.item() < 0.01
    assert torch.allclose(box_code_to_boxes(gt)[:, :7], boxes, atol=1e-5)


def test_map_matching_accepts_reversed_polylines():
    pc = (-30.0, -15.0, -1.0, 30.0, 15.0, 3.0)
    line = torch.stack([torch.linspace(-10, 10, 20), torch.full((20,), 3.0)], -1)
    gt = line[None]
    pred = torch.stack([line.flip(0) + 0.01, line + torch.tensor([0.0, 8.0])])  # query 0 = reversed copy
    logits = torch.tensor([[5.0, -5, -5], [-5.0, -5, -5]])
    vi, ki, perm = L.match_map(
        logits, L.normalize_pts(pred, pc), torch.tensor([0]), L.normalize_pts(gt, pc), 2.0, 1.0
    )
    assert vi.tolist() == [0] and perm.tolist() == [1]
    _, l1, dirl = L.map_loss(
        logits[None], pred[None], [(vi, ki, perm)], [{"cls": torch.tensor([0]), "pts": gt}], pc
    )
    assert l1.item() < 1e-3 and dirl.item() < 1e-6


def test_plan_l1_uses_command_mode_and_mask():
    fut = torch.tensor([[[1.0, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0]]])
    pred = torch.zeros(1, 3, 6, 2)
    pred[0, 2] = 1.0  # mode 2 (straight) predicts offsets (1, 1)
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert P.plan_l1(pred, fut, mask, torch.tensor([2])).item() == pytest.approx(0.5)  # |0| and |1| averaged
    assert P.plan_l1(pred, fut, mask, torch.tensor([0])).item() == pytest.approx(0.5)  # zeros vs (1, 0)
    pred[0, 0, 3:] = 100.0
    mask[0, 3:] = False  # the wrong future steps are masked out
    assert P.plan_l1(pred, fut, mask, torch.tensor([0])).item() == pytest.approx(0.5)


def _straight(speed: float = 2.0) -> torch.Tensor:
    return torch.stack([torch.arange(1, 7) * speed, torch.zeros(6)], -1)[None].float()


def test_boundary_loss_near_and_after_crossing():
    mask = torch.ones(1, 6, dtype=torch.bool)
    near = torch.stack([torch.linspace(-5, 20, 20), torch.full((20,), 0.5)], -1)[None, None]  # 0.5 m left
    far = near + torch.tensor([0.0, 5.0])
    assert P.plan_bound_loss(_straight(), near, mask, 1.0).item() == pytest.approx(0.5, abs=1e-3)
    assert P.plan_bound_loss(_straight(), far, mask, 1.0).item() == 0.0
    # a boundary across the road at x = 5: steps from the crossing on do not count
    across = torch.stack([torch.full((20,), 5.0), torch.linspace(-5, 5, 20)], -1)[None, None]
    loss = P.plan_bound_loss(_straight(), across, mask, 1.0)
    # only step 2 (x = 4, 1 m away -> 0) precedes the crossing at step 3; all zero afterwards
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    plan = _straight().requires_grad_(True)
    P.plan_bound_loss(plan, near, mask, 1.0).backward()
    assert plan.grad[0, :, 1].gt(0).all()  # descent moves the plan away from the boundary on its left (-y)


def test_collision_loss_uses_lateral_and_longitudinal_thresholds():
    mask = torch.ones(1, 6, dtype=torch.bool)
    plan = _straight()
    ahead = plan[:, None] + torch.tensor([2.0, 0.0])  # same lane, 2 m ahead at every step
    beside = plan[:, None] + torch.tensor([0.0, 2.0])  # 2 m to the left: outside the 1.5 m lateral band
    far = torch.full_like(ahead, P.FAR)
    assert P.plan_collision_loss(plan, ahead, mask).item() == pytest.approx((3.0 - 2.0) + 1.5)
    assert P.plan_collision_loss(plan, beside, mask).item() == 0.0
    assert P.plan_collision_loss(plan, far, mask).item() == 0.0


def test_direction_loss_penalises_crossing_the_lanes():
    mask = torch.ones(1, 6, dtype=torch.bool)
    along = torch.stack([torch.linspace(-5, 20, 20), torch.full((20,), 1.0)], -1)[None, None]
    assert P.plan_direction_loss(_straight(), along, mask).item() == pytest.approx(0.0, abs=1e-4)
    diag = torch.stack([torch.arange(1, 7) * 1.5, torch.arange(1, 7) * 1.5], -1)[None].float()  # 45 degrees
    lines = torch.stack([torch.linspace(-5, 20, 20), torch.linspace(-5, 20, 20) * 1.0 + 0.5], -1)[None, None]
    assert P.plan_direction_loss(diag, lines, mask).item() == pytest.approx(0.0, abs=1e-3)
    assert P.plan_direction_loss(
        _straight(), lines * torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 1.0]), mask
    ).item() == pytest.approx(0.0, abs=1e-4)
    across = torch.stack([torch.linspace(-5, 20, 20), torch.linspace(-5, 20, 20)], -1)[None, None]
    got = P.plan_direction_loss(_straight(1.0), across, mask).item()
    assert 0.1 < got <= math.pi / 4 + 1e-4  # near steps 45 degrees off, far ones ignored
    static = torch.zeros(1, 6, 2)
    assert P.plan_direction_loss(static, across, mask).item() == 0.0


def test_backbone_loads_torchvision_format(tmp_path):
    net = ResNet()
    state = {k: v.clone() + 0.5 for k, v in net.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    state["bn1.num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    fresh = ResNet()
    report = load_backbone_weights(fresh, path)
    assert report == {"missing": [], "unexpected": []}
    assert torch.equal(fresh.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert not fresh.conv1.weight.requires_grad and fresh.layer2[0].conv1.weight.requires_grad
    with pytest.raises(UserError, match="do not exist"):
        load_backbone_weights(fresh, tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a torchvision resnet50"):
        load_backbone_weights(fresh, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        load_backbone_weights(fresh, tmp_path / "junk.pth")
    with pytest.raises(UserError, match="shape mismatch"):
        load_backbone_weights(ResNet(width=8, blocks=(1, 1, 1, 1)), path)


def test_caffe_normalisation_is_bgr_mean_only():
    img = torch.zeros(3, 2, 2)
    img[0] = 255.0  # pure red
    out = normalize_images(img, "caffe")
    assert out[2, 0, 0].item() == pytest.approx(255.0 - 123.675)  # red moved to the last (BGR) channel
    assert out[0, 0, 0].item() == pytest.approx(-103.53)
    with pytest.raises(UserError):
        normalize_images(img, "imagenet")


def test_backbone_and_fpn_levels_and_strides():
    """Base wiring (C3-C5 -> 4 levels with one extra strided level) and Tiny wiring (C5 -> 1 level)."""
    from models.fpn import FPN

    x = torch.randn(1, 3, 64, 96)
    net = ResNet(width=8, blocks=(1, 1, 1, 1), out_indices=(1, 2, 3))
    feats = net(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 8, 12), (128, 4, 6), (256, 2, 3)]
    outs = FPN(net.out_channels, 16, num_outs=4)(feats)
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 8, 12), (16, 4, 6), (16, 2, 3), (16, 1, 2)]
    tiny = ResNet(width=8, blocks=(1, 1, 1, 1), out_indices=(3,))
    assert [tuple(o.shape[1:]) for o in FPN(tiny.out_channels, 16, num_outs=1)(tiny(x))] == [(16, 2, 3)]
