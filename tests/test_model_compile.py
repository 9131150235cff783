"""torch.compile of VAD on CPU: the whole forward is one graph (static shapes) and equals eager.

Inductor compiles the whole vad_nano forward in a minute or more on a 2-core CPU (docs/deploy.md), too slow
for the suite, so the tests split the claim: (1) the whole `forward` (backbone, BEV encoder with the
temporal state, every head) and `decode` alone trace as ONE graph (`fullgraph=True` raises on any graph
break, i.e. on any data-dependent shape or host sync) and the traced graph reproduces eager (aot_eager
backend); (2) inductor's generated kernels for the motion and planning heads, where the data-dependent
lane / agent selection used to be, equal eager within 1e-4. `scripts/bench_model.py --compile` measures
the full inductor-compiled forward and prints its difference to eager.
"""

from __future__ import annotations

import math

import pytest
import torch

from models.configs import get_config
from models.features import feature_inputs
from models.onnx_export import CapacityGuard, all_pairs, count_visible, sca_capacity
from models.vad import VAD, BEVState, compile_for_inference
from synthetic.batch import make_dummy_batch

KEYS = ("plan_all", "plan", "f_ego", "det_logits", "det_code", "motion_offsets", "motion_mode_logits",
        "map_logits", "map_pts")


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    cfg = get_config("vad_nano")
    model = VAD(cfg).eval()
    inputs = feature_inputs(make_dummy_batch(cfg, batch_size=1, queue_length=1))
    state = BEVState(torch.randn(1, cfg.bev_h * cfg.bev_w, cfg.embed_dims), torch.ones(1, dtype=torch.bool))
    with torch.no_grad():
        bev = model.encode_bev(inputs, state).bev
    return cfg, model, inputs, bev


def _turned(inputs: dict, yaw_deg: float, dx: float) -> dict:
    """The inputs with an ego motion since the previous frame: a yaw change and a forward step."""
    a = math.radians(yaw_deg)
    m = torch.eye(4)
    m[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m[0, 3] = -dx
    return {**inputs, "cur_from_prev": m[None, None], "prev_valid": torch.ones(1, 1, dtype=torch.bool)}


def test_whole_forward_is_one_graph_and_matches_eager(nano):
    """fullgraph: the BEV encoder's visible-pair packing, the history rotation and the finiteness check no
    longer break the graph; a second frame with other images and another ego motion reuses it."""
    cfg, model, inputs, bev = nano
    torch._dynamo.reset()
    state = BEVState(bev, torch.ones(1, dtype=torch.bool))
    frames = [_turned(inputs, 7.0, 0.8), _turned({**inputs, "img": inputs["img"].flip(-1)}, -3.0, 1.5)]
    cap = sca_capacity(cfg, inputs["img_from_ego"])  # the rig's visible pairs + margin, as the agent
    compiled = compile_for_inference(model, backend="eager", sca_capacity=cap)  # aot: test_export_onnx
    with torch.no_grad():
        for frame in frames:
            ref, ref_state = model(frame, state)
            got, got_state = compiled(frame, state)  # a graph break would raise (fullgraph=True)
            for k in KEYS + ("bev",):
                torch.testing.assert_close(got[k], ref[k], atol=1e-4, rtol=0, msg=k)
            torch.testing.assert_close(got_state.bev, ref_state.bev, atol=1e-4, rtol=0)
    assert model.static_shapes is False  # compiling does not change how the eager model runs
    model.sca_capacity = None


def test_fixed_capacity_packing_equals_eager_packing(nano):
    """The fixed-shape encoder (every pair, or the rig's capacity) gives eager's outputs exactly; a capacity
    below the visible pairs would drop some (other outputs), which the host-side guard refuses."""
    cfg, model, inputs, bev = nano
    state = BEVState(bev, torch.ones(1, dtype=torch.bool))
    frame = _turned(inputs, 4.0, 1.0)
    visible = count_visible(cfg, inputs["img_from_ego"])
    assert 0 < visible < all_pairs(cfg)  # the cameras do not see every cell: packing saves work
    cap = sca_capacity(cfg, inputs["img_from_ego"])
    assert visible < cap < all_pairs(cfg)
    with torch.no_grad():
        ref, _ = model(frame, state)
        outs = {}
        for c in (None, cap, visible // 2):  # None = every pair
            model.static_shapes, model.sca_capacity = True, c
            try:
                outs[c], _ = model(frame, state)
            finally:
                model.static_shapes, model.sca_capacity = False, None
    for k in KEYS + ("bev",):
        torch.testing.assert_close(outs[None][k], ref[k], atol=1e-6, rtol=0, msg=k)
        torch.testing.assert_close(outs[cap][k], ref[k], atol=1e-6, rtol=0, msg=k)
    assert (outs[visible // 2]["bev"] - ref["bev"]).abs().max() > 1e-3
    CapacityGuard(cfg, cap, "x").check(inputs["img_from_ego"])
    with pytest.raises(ValueError, match=f"sees {visible} .* at most {visible // 2}"):
        CapacityGuard(cfg, visible // 2, "x").check(inputs["img_from_ego"])


def test_heads_are_one_graph_and_match_eager(nano):
    cfg, model, inputs, bev = nano
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model.decode(bev, inputs)
        cmodel = compile_for_inference(VAD(cfg), heads_only=True, backend="aot_eager")
        cmodel.load_state_dict(model.state_dict())
        got = cmodel.decode(bev, inputs)  # fullgraph=True: a graph break would raise here
        # a second input with other values (other lanes / agents pass the thresholds) reuses the graph
        bev2 = bev + 0.5 * torch.randn_like(bev)
        got2, ref2 = cmodel.decode(bev2, inputs), model.decode(bev2, inputs)
    for k in KEYS:
        torch.testing.assert_close(got[k], ref[k], atol=1e-4, rtol=0, msg=k)
        torch.testing.assert_close(got2[k], ref2[k], atol=1e-4, rtol=0, msg=k)


def test_inductor_motion_and_planning_match_eager(nano):
    cfg, model, inputs, bev = nano
    torch._dynamo.reset()
    with torch.no_grad():
        out = model.decode(bev, inputs)
        b, v = 1, cfg.map_num_vec
        # the heads' own inputs, as decode builds them
        hs = torch.randn(b, cfg.num_agent_queries, cfg.embed_dims)
        agent_norm = torch.rand(b, cfg.num_agent_queries, 2)
        lanes = torch.randn(b, v, cfg.embed_dims)
        map_norm = out["map_pts_norm"]
        map_logits = out["map_logits"] + torch.linspace(-3, 3, v)[None, :, None]  # some lanes pass, some not
        motion = torch.compile(model.motion, fullgraph=True)
        ref_m = model.motion(hs, agent_norm, lanes, map_norm, map_logits)
        got_m = motion(hs, agent_norm, lanes, map_norm, map_logits)
        for g, r in zip(got_m, ref_m):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=0)
        planning = torch.compile(model.planning, fullgraph=True)
        args = (ref_m[2], agent_norm, out["det_logits"], lanes, map_norm, map_logits,
                model.pos_scale, inputs.get("ego_his"), inputs.get("goal_point"), inputs["command"], None)
        for g, r in zip(planning(*args), model.planning(*args)):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=0)


def test_bench_model_rejects_cuda_graphs_on_cpu(capsys):
    from scripts.bench_model import main
    from vlmad.errors import cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(main, ["--configs", "vad_nano", "--device", "cpu", "--cuda-graphs"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--cuda-graphs needs --device cuda" in err and "Traceback" not in err


def test_agent_compile_option_parses():
    from agent.options import AgentConfig
    from vlmad.config import from_dict

    assert from_dict(AgentConfig, {"compile": True}, where="test").compile is True
    assert AgentConfig().compile is False  # eager PyTorch stays the default
