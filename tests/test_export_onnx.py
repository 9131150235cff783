"""ONNX export (scripts.export_onnx, models.onnx_export): onnxruntime on CPU equals PyTorch within 1e-4 on
the test size (first frame without a previous BEV, second frame fed the new state, with an ego motion),
clear errors, and the agent driving from the ONNX file gives the torch backend's controls."""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np
import pytest
import torch
import yaml

from agent.vad_agent import VADAgent
from models.checkpoint_formats import load_driving_checkpoint
from models.features import feature_inputs
from models.onnx_export import OnnxRunner, all_pairs, output_names
from scripts.export_agent import main as export_agent
from scripts.export_onnx import main as export_onnx
from synthetic.batch import make_dummy_batch
from tests.test_agent_run import SMALL, Drive
from vlmad.errors import UserError, cli_main


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A random-init vad_nano driving checkpoint and its ONNX file for the agent's rig (the CLI also
    checks it once against PyTorch)."""
    root = tmp_path_factory.mktemp("onnx")
    ckpt = root / "nano"
    export_agent(["--random-init", "--config", "vad_nano", "--seed", "3", "--out", str(ckpt)])
    argv = ["--checkpoint", str(ckpt), "--out", str(ckpt / "model.onnx"), "--rig", "carla_vad"]
    assert export_onnx(argv) == 0
    model, cfg, _ = load_driving_checkpoint(ckpt, "cpu")
    return {"ckpt": ckpt, "onnx": ckpt / "model.onnx", "model": model, "cfg": cfg, "root": root}


def _frame(cfg, seed: int, yaw_deg: float, dx: float, prev_valid: bool) -> dict:
    """One frame of the test size with random images and an ego motion since the previous one."""
    torch.manual_seed(seed)
    inputs = feature_inputs(make_dummy_batch(cfg, batch_size=1, queue_length=1))
    a = math.radians(yaw_deg)
    m = torch.eye(4)
    m[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m[0, 3] = -dx
    inputs["cur_from_prev"] = m[None, None]
    inputs["prev_valid"] = torch.tensor([[prev_valid]])
    inputs["command"] = torch.tensor([seed % 3])
    return inputs


def test_onnxruntime_matches_pytorch_over_two_frames(exported):
    model, cfg = exported["model"], exported["cfg"]
    runner = OnnxRunner(exported["onnx"], cfg)
    assert runner.outputs == output_names(cfg)
    assert runner.capacity < all_pairs(cfg)  # sized for the rig: the packed work, not every pair
    state_ref = state_ort = None
    for i, (yaw, dx) in enumerate([(0.0, 0.0), (6.0, 1.2)]):  # frame 0 has no previous BEV
        inputs = _frame(cfg, 10 + i, yaw, dx, prev_valid=i > 0)
        with torch.no_grad():
            ref, state_ref = model(inputs, state_ref)
        got, state_ort = runner(inputs, state_ort)
        ref["bev"] = state_ref.bev
        for k in output_names(cfg):
            torch.testing.assert_close(got[k], ref[k], atol=1e-4, rtol=0, msg=f"frame {i}: {k}")
    # the state mattered: frame 1 without it gives another BEV (so the comparison above tested the state)
    cold, _ = runner(_frame(cfg, 11, 6.0, 1.2, prev_valid=False), None)
    assert (cold["bev"] - state_ort.bev).abs().max() > 1e-3


def test_runner_errors_are_clear(exported, monkeypatch):
    cfg, path = exported["cfg"], exported["onnx"]
    runner = OnnxRunner(path, cfg)
    inputs = _frame(cfg, 0, 0.0, 0.0, prev_valid=False)
    with pytest.raises(ValueError, match=r"'img' has shape .* exported for"):
        runner({**inputs, "img": inputs["img"][..., :64]})
    bad = inputs["can_bus"].clone()
    bad[0, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="can_bus"):  # as VAD.forward: the graph itself cannot raise
        runner({**inputs, "can_bus": bad})
    with pytest.raises(ValueError, match="goal_point"):
        runner({k: v for k, v in inputs.items() if k != "goal_point"})
    wide = inputs["img_from_ego"].clone()
    wide[..., :2, :3] *= 0.3  # much wider field of view: more BEV cells visible than the file holds
    with pytest.raises(ValueError, match=r"sees \d+ .* at most"):
        runner({**inputs, "img_from_ego": wide})
    with pytest.raises(UserError, match="does not exist"):
        OnnxRunner(exported["root"] / "missing.onnx", cfg)
    other = dataclasses.replace(cfg, bev_h=20)
    with pytest.raises(UserError, match=r"another model config .*bev_h"):
        OnnxRunner(path, other)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(UserError, match="pip install onnxruntime"):
        OnnxRunner(path, cfg)


def test_export_cli_errors(exported, tmp_path, capsys):
    for argv, msg in [
        (["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")], "does not exist"),
        (["--checkpoint", str(exported["ckpt"]), "--out", str(tmp_path / "m.txt")], "should end in .onnx"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli_main(export_onnx, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and "Traceback" not in err


def test_a_file_that_fails_the_check_is_not_written_as_out(exported, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as e:  # no difference is <= -1: the check always fails
        cli_main(export_onnx, ["--checkpoint", str(exported["ckpt"]), "--out", str(out), "--rig", "carla_vad",
                               "--tolerance", "-1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "m.onnx not written" in err
    assert not out.exists() and (tmp_path / "m.unverified.onnx").is_file()


def test_agent_onnxruntime_backend_drives_like_torch(exported, tmp_path):
    """Same checkpoint, same synthetic ticks: the onnxruntime backend's plans and controls equal the torch
    backend's (the state is carried from tick 1 on: bev_history_ticks 1)."""
    opts = {"checkpoint": str(exported["ckpt"]), "camera_size": SMALL, "bev_history_ticks": 1}
    agents = []
    for backend in ("torch", "onnxruntime"):
        path = tmp_path / f"{backend}.yaml"
        path.write_text(yaml.safe_dump({**opts, "backend": backend}))
        agents.append(VADAgent(str(path)))
    assert agents[0]._onnx is None and agents[1]._onnx is not None
    drives = [Drive(a, speed=2.0, yaw=0.3) for a in agents]
    for _ in range(3):
        ct, co = (d.step() for d in drives)
        for a in agents:
            assert a.brake_reason is None
        plans = [a.last_control.info["plan"] for a in agents]
        assert np.allclose(plans[1], plans[0], atol=1e-4)
        for f in ("throttle", "steer", "brake"):
            assert getattr(co, f) == pytest.approx(getattr(ct, f), abs=1e-4)
    states = [a._history[-1].state.bev for a in agents]
    torch.testing.assert_close(states[1], states[0].cpu(), atol=1e-4, rtol=0)  # the carried BEV, too
    for a in agents:
        a.destroy()


@pytest.mark.parametrize("threads", [1, 3])
def test_agent_onnxruntime_backend_uses_torchs_thread_count(exported, tmp_path, monkeypatch, threads):
    """onnxruntime's default (a thread per core) made two drives side by side take twice as long."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"checkpoint": str(exported["ckpt"]), "camera_size": SMALL,
                                    "backend": "onnxruntime"}))
    agent = VADAgent(str(path))
    opts = agent._onnx.session.get_session_options()
    assert opts.intra_op_num_threads == threads and opts.inter_op_num_threads == 1
    agent.destroy()


def test_agent_backend_options_are_checked(exported, tmp_path):
    for extra, msg in [({"backend": "tensorrt"}, "backend must be"),
                       ({"backend": "onnxruntime", "compile": True}, "compile applies"),
                       ({"backend": "onnxruntime", "onnx": "nope.onnx"}, "does not exist")]:
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump({"checkpoint": str(exported["ckpt"]), **extra}))
        with pytest.raises(UserError, match=msg):
            VADAgent(str(path))
