"""VAD (test size) forward shapes, losses, gradients, state handling; presets build."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.configs import PRESETS, build_config, get_config
from models.features import feature_inputs
from models.vad import VAD, BEVState
from synthetic.batch import make_dummy_batch
from vlmad.errors import UserError


@pytest.fixture(scope="module")
def nano():
    cfg = dataclasses.replace(get_config("vad_nano"), dropout=0.0)
    torch.manual_seed(0)
    return cfg, VAD(cfg)


def test_output_shapes(nano):
    cfg, model = nano
    batch = make_dummy_batch(cfg, batch_size=2)
    assert batch["img"].shape[1] == cfg.queue_length == 2
    out, state = model(feature_inputs(batch))
    q, v, p, m, t = cfg.num_agent_queries, cfg.map_num_vec, cfg.map_num_pts, cfg.fut_mode, cfg.fut_ts
    expected = {
        "plan_all": (2, 3, t, 2),
        "plan": (2, t, 2),
        "plan_offsets": (2, 3, t, 2),
        "f_ego": (2, 2 * cfg.embed_dims),
        "det_logits": (2, q, 10),
        "det_boxes": (2, q, 9),
        "det_code": (2, q, 10),
        "motion_trajs": (2, q, m, t, 2),
        "motion_mode_logits": (2, q, m),
        "map_logits": (2, v, 3),
        "map_pts": (2, v, p, 2),
        "tl_logits": (2, 4),
        "bev": (2, cfg.bev_h * cfg.bev_w, cfg.embed_dims),
    }
    for k, shape in expected.items():
        assert tuple(out[k].shape) == shape, k
        assert torch.isfinite(out[k]).all(), k
    # plan = cumulative offsets; plan = the commanded mode
    assert torch.allclose(out["plan_all"], out["plan_offsets"].cumsum(-2), atol=1e-6)
    for i, c in enumerate(batch["command"].tolist()):
        assert torch.equal(out["plan"][i], out["plan_all"][i, c])
    # map points and agent centres inside the perception range
    assert out["map_pts"][..., 0].abs().max() <= 30 and out["map_pts"][..., 1].abs().max() <= 15
    assert isinstance(state, BEVState) and state.bev.shape == out["bev"].shape and not state.bev.requires_grad
    assert len(out["aux_det_logits"]) == cfg.det_layers - 1


def test_loss_finite_and_backward_reaches_every_trainable_parameter():
    cfg = dataclasses.replace(get_config("vad_nano"), dropout=0.0, motion_map_thresh=0.0)
    torch.manual_seed(0)
    model = VAD(cfg)
    batch = make_dummy_batch(cfg, batch_size=2, seed=3)
    inputs = feature_inputs(batch)
    opt = torch.optim.AdamW(model.param_groups(1e-3))
    # two steps first: deformable-attention offset/weight layers start at zero (Deformable DETR init),
    # which makes some upstream gradients exactly zero at step 0 only
    for _ in range(2):
        out, _ = model(inputs)
        losses = model.loss(out, batch)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    out, _ = model(inputs)
    losses = model.loss(out, batch)
    for k in (
        "det_cls",
        "det_reg",
        "motion_reg",
        "motion_cls",
        "map_cls",
        "map_pts",
        "map_dir",
        "plan_reg",
        "plan_bound",
        "plan_col",
        "plan_dir",
        "aux_det_cls",
        "tl_cls",
        "total",
    ):
        assert k in losses and torch.isfinite(losses[k]), k
    opt.zero_grad()
    losses["total"].backward()
    dead = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert dead == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("img_backbone.conv1") for n in frozen)
    assert any(n.startswith("img_backbone.layer1.") for n in frozen)
    assert not any(n.startswith("img_backbone.layer2.") for n in frozen)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_empty_targets_give_finite_losses(nano):
    cfg, model = nano
    batch = make_dummy_batch(cfg, batch_size=2, num_agents=0, num_map=0, queue_length=1)
    batch["ego_fut_mask"][1] = False  # a sample without any future
    out, _ = model(feature_inputs(batch))
    losses = model.loss(out, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["det_reg"].item() == 0.0 and losses["motion_reg"].item() == 0.0
    assert losses["det_cls"].item() > 0.0  # the "no object" side still trains
    losses["total"].backward()
    # lists of records (the sample record's map layout) are accepted too
    batch["map"] = [[], [{"cls": 1, "pts": torch.zeros(20, 2).tolist()}]]
    assert torch.isfinite(model.loss(out, batch)["total"])


def test_state_round_trip_equals_the_temporal_queue(nano):
    """Tq == 1 calls passing the state reproduce a Tq == 2 queue; without state they differ."""
    cfg, model = nano
    model.eval()
    batch = make_dummy_batch(cfg, batch_size=1, queue_length=2, seed=5)
    inputs = feature_inputs(batch)
    with torch.no_grad():
        full, _ = model(inputs)
        frame = [
            {
                k: (
                    v[:, t : t + 1]
                    if k in ("img", "img_from_ego", "can_bus", "cur_from_prev", "prev_valid")
                    else v
                )
                for k, v in inputs.items()
            }
            for t in range(2)
        ]
        _, s0 = model(frame[0])
        second, s1 = model(frame[1], s0)
        cold, _ = model(frame[1])
        # repeated calls keep working and the state changes
        third, s2 = model(frame[1], s1)
    model.train()
    assert torch.allclose(second["plan"], full["plan"], atol=1e-4)
    assert torch.allclose(second["bev"], full["bev"], atol=1e-4)
    assert not torch.allclose(cold["bev"], full["bev"], atol=1e-3)
    assert torch.isfinite(third["plan"]).all() and not torch.allclose(s2.bev, s1.bev)
    # an invalid previous frame (scene start) ignores the state
    frame[1]["prev_valid"] = torch.zeros(1, 1, dtype=torch.bool)
    with torch.no_grad():
        model.eval()
        reset, _ = model(frame[1], s0)
        model.train()
    assert torch.allclose(reset["bev"], cold["bev"], atol=1e-5)


def test_bad_inputs_raise_clear_errors(nano):
    cfg, model = nano
    batch = make_dummy_batch(cfg, queue_length=1)
    inputs = feature_inputs(batch)
    with pytest.raises(ValueError, match="img"):
        model({**inputs, "img": inputs["img"][:, :, :5]})
    with pytest.raises(ValueError, match="img_from_ego"):
        model({**inputs, "img_from_ego": inputs["img_from_ego"][..., :3, :]})
    bad = inputs["can_bus"].clone()
    bad[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="can_bus"):
        model({**inputs, "can_bus": bad})
    with pytest.raises(ValueError, match="goal_point"):
        model({k: v for k, v in inputs.items() if k != "goal_point"})


def test_presets_build_and_match_design():
    with pytest.raises(UserError, match="vad_base"):
        get_config("vad_huge")
    base, tiny = get_config("vad_base"), get_config("vad_tiny")
    assert base.img_hw == (736, 1280) and tiny.img_hw == (384, 640)
    assert (base.bev_h, base.queue_length, base.encoder_layers, base.fpn_levels) == (200, 4, 6, 4)
    assert (tiny.bev_h, tiny.queue_length, tiny.map_layers, tiny.fpn_levels) == (100, 3, 3, 1)
    assert build_config("vad_tiny", overrides=["dropout=0.0"]).dropout == 0.0
    for name in PRESETS:
        model = VAD(get_config(name))
        n = sum(p.numel() for p in model.parameters())
        f_ego = model.planning.ego_fut_decoder[0].in_features
        assert f_ego == 2 * get_config(name).embed_dims
        if name != "vad_nano":
            assert f_ego == 512 and model.planning.ego_fut_decoder[-1].out_features == 36
            assert n > 25e6
    carla = VAD(get_config("vad_base_carla"))
    assert carla.tl_branch is not None and carla.planning.goal_cmd_mlp is not None


def test_param_groups_split_backbone():
    cfg = get_config("vad_nano")
    model = VAD(cfg)
    groups = model.param_groups(2e-4)
    assert groups[0]["lr"] == pytest.approx(2e-5) and groups[1]["lr"] == pytest.approx(2e-4)
    ids = {id(p) for g in groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(trainable) == sum(len(g["params"]) for g in groups)
    assert id(model.img_backbone.layer4[0].conv1.weight) in {id(p) for p in groups[0]["params"]}


def test_frozen_stages_applies_to_both_image_backbones():
    """VAD freezes the stem and layer1 of its ImageNet ResNets; the traffic-light backbone follows the same
    switch, so a randomly initialised model (no weights to keep) can train every stage of both."""
    for frozen, trainable in ((1, False), (-1, True)):
        model = VAD(build_config("vad_nano", overrides=[f"frozen_stages={frozen}"]))
        assert model.tl_branch is not None
        for bb in (model.img_backbone, model.tl_branch.tl_backbone):
            assert bb.conv1.weight.requires_grad is trainable
            assert bb.layer1[0].conv1.weight.requires_grad is trainable
            assert bb.layer2[0].conv1.weight.requires_grad
        in_groups = {id(q) for g in model.param_groups(2e-4) for q in g["params"]}
        assert (id(model.tl_branch.tl_backbone.conv1.weight) in in_groups) is trainable


def test_bf16_autocast_forward_loss_backward(nano):
    """Autocast-safe: geometry and sampling stay fp32, outputs finite, the state keeps working."""
    cfg, model = nano
    batch = make_dummy_batch(cfg, batch_size=1, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = model(feature_inputs(batch))
        losses = model.loss(out, batch)
    assert out["plan"].dtype == torch.float32 and out["map_pts"].dtype == torch.float32
    assert out["det_code"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    one = {
        k: (v[:, -1:] if k in ("img", "img_from_ego", "can_bus", "cur_from_prev", "prev_valid") else v)
        for k, v in feature_inputs(batch).items()
    }
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        again, _ = model(one, state)
    assert torch.isfinite(again["plan"]).all()


def test_bench_cli_runs_and_rejects_unknown_configs(tmp_path):
    from scripts.bench_model import main

    out = tmp_path / "bench.json"
    assert main(["--configs", "vad_nano", "--iters", "1", "--warmup", "0", "--json", str(out)]) == 0
    import json

    res = json.loads(out.read_text())[0]
    assert res["config"] == "vad_nano" and res["params"]["total"] > 0 and res["latency_ms_median"] > 0
    with pytest.raises(UserError, match="vad_base"):
        main(["--configs", "vad_huge"])


def test_can_bus_motion_fields_follow_the_ego_motion(nano):
    """can_bus[0:3] becomes the displacement in the previous frame, can_bus[17] the yaw change (deg)."""
    cfg, model = nano
    seen = []
    hook = model.transformer.can_bus_mlp.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].clone())
    )
    import math

    from vlmad.frames import relative_motion, se2_pose

    batch = make_dummy_batch(cfg, queue_length=1)
    motion = relative_motion(se2_pose(0, 0, 0), se2_pose(2.0, 0.5, math.radians(10)))
    inputs = {
        **feature_inputs(batch),
        "cur_from_prev": torch.as_tensor(motion, dtype=torch.float32)[None, None],
    }
    with torch.no_grad():
        model(inputs)
    hook.remove()
    got = seen[-1][0]
    assert torch.allclose(got[:3], torch.tensor([2.0, 0.5, 0.0]), atol=1e-5)
    assert got[17].item() == pytest.approx(10.0, abs=1e-4)
    assert torch.equal(got[3:17], inputs["can_bus"][0, 0, 3:17])


def test_tsa_points_sets_the_temporal_self_attention_sampling_points():
    """VADConfig.tsa_points reaches every encoder layer's temporal self-attention (BEVFormer / VAD: 4)."""
    for points in (4, 2):
        cfg = dataclasses.replace(get_config("vad_nano"), tsa_points=points)
        sd = VAD(cfg).state_dict()
        offsets = [v for k, v in sd.items() if k.startswith("transformer.encoder.layers.")
                   and k.endswith(".attentions.0.sampling_offsets.weight")]
        assert len(offsets) == cfg.encoder_layers
        # heads x 2 queue frames (previous BEV, current) x 1 level x points x (x, y)
        assert all(w.shape[0] == cfg.num_heads * 2 * points * 2 for w in offsets)


@pytest.mark.parametrize("ego_status", [True, False])
def test_bev_ego_status_switch_decides_whether_speed_reaches_the_plan(nano, ego_status):
    """VAD feeds the CAN bus (velocity, acceleration, motion since the last frame) into every BEV query;
    `bev_ego_status=False` zeroes those entries, so the plan cannot depend on them, while the absolute
    heading entries still reach it."""
    cfg, _ = nano
    cfg = dataclasses.replace(cfg, bev_ego_status=ego_status)
    torch.manual_seed(0)
    model = VAD(cfg).eval()
    batch = make_dummy_batch(cfg, batch_size=1)

    def plan(**edits: float) -> torch.Tensor:
        inputs = feature_inputs(batch)
        inputs["can_bus"] = inputs["can_bus"].clone()
        for idx, value in edits.items():
            inputs["can_bus"][..., int(idx[1:])] = value
        with torch.no_grad():
            return model(inputs)[0]["plan"]

    base = plan()
    moved = plan(i13=8.0, i7=2.0)  # velocity x 8 m/s, acceleration x 2 m/s^2
    assert torch.allclose(base, moved, atol=1e-6) is (not ego_status)
    assert not torch.allclose(base, plan(i16=1.0), atol=1e-6)  # heading is not ego status
