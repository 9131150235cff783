"""torch.compile of VAD on CPU: the compiled heads equal eager, and the heads are one graph (static shapes).

Inductor compiles the whole vad_nano forward in minutes on a 2-core CPU (docs/deploy.md), too slow for the
suite, so the tests split the claim: (1) the full `decode` (every head: detection, map, motion, planning)
traces as ONE graph (`fullgraph=True`, which raises on any graph break, i.e. on any data-dependent shape
or host sync) and the traced graph reproduces eager (aot_eager backend); (2) inductor's generated kernels
for the motion and planning heads, where the data-dependent lane / agent selection used to be, equal
eager within 1e-4. `scripts/bench_model.py --compile` measures the full compiled forward.
"""

from __future__ import annotations

import pytest
import torch

from models.configs import get_config
from models.dummy_batch import feature_inputs, make_dummy_batch
from models.vad import VAD, BEVState, compile_for_inference

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
