"""TrainModel (VAD + VLM-AD heads) and the checkpoint formats: zero inference overhead of the heads,
export/load round trips, the export_agent CLI contract, and corrupt checkpoints (vad_nano, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from models.checkpoint_formats import (
    export_driving_checkpoint,
    load_driving_checkpoint,
    load_train_checkpoint,
    save_train_checkpoint,
)
from models.configs import get_config
from models.features import feature_inputs
from models.train_model import TrainModel
from models.vad import VAD
from models.vlm_ad import VLMADConfig
from scripts import export_agent
from synthetic.batch import make_dummy_batch
from vlmad.config import to_dict
from vlmad.errors import UserError, cli_main

ROOT = Path(__file__).resolve().parents[1]
TEXT_DIM = 24


def vlm_targets(b: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 3, dtype=torch.bool)
    mask[0, 2] = False
    return {"vlm_text": torch.nn.functional.normalize(torch.randn(b, 3, TEXT_DIM, generator=g), dim=-1),
            "vlm_text_mask": mask, "vlm_actions": torch.tensor([[0, 3, 4], [1, -1, 2]])[:b]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A vad_nano TrainModel with heads, trained 2 AdamW steps, plus its training checkpoint."""
    torch.manual_seed(0)
    cfg = get_config("vad_nano")
    vlm_cfg = VLMADConfig(attn_dim=32, ffn_dim=64, mlp_hidden=64)
    model = TrainModel(VAD(cfg), vlm_cfg, TEXT_DIM)
    batch = {**make_dummy_batch(cfg, 2, seed=1), **vlm_targets(2)}
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    grad_from_vlm = None
    for step in range(2):
        _, losses, _ = model(batch)
        if step == 0:  # the heads' loss alone reaches the driver through f_ego
            grads = torch.autograd.grad(losses["vlm/total"], list(model.driver.planning.parameters()),
                                        retain_graph=True, allow_unused=True)
            grad_from_vlm = sum(float(g.abs().sum()) for g in grads if g is not None)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    ckpt = save_train_checkpoint(tmp_path_factory.mktemp("train") / "ckpt", model, cfg, vlm_cfg,
                                 train_cfg={"lr": 1e-3, "steps": 2, "data": Path("/d")},
                                 optimizer_state={"optimizer": opt.state_dict()},
                                 meta={"step": 2, "epoch": 0})
    return {"cfg": cfg, "vlm_cfg": vlm_cfg, "model": model.eval(), "batch": batch, "init": init, "ckpt": ckpt,
            "opt": opt, "grad_from_vlm": grad_from_vlm, "losses": losses}


def test_training_touches_driver_and_heads(trained):
    model, init = trained["model"], trained["init"]
    assert trained["grad_from_vlm"] > 0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, init[k])}
    assert any(k.startswith("aux.text.") for k in changed)
    assert any(k.startswith("aux.action.") for k in changed)
    assert any(k.startswith("driver.planning.") for k in changed)
    losses = trained["losses"]
    driver_total = sum(v for k, v in losses.items() if not k.startswith("vlm/") and k != "total")
    assert torch.allclose(losses["total"], driver_total + losses["vlm/total"])


def test_zero_inference_overhead(trained, tmp_path):
    """A trained-with-heads model and its exported driving checkpoint plan bit-identically; the file has
    no head parameter."""
    model, cfg, batch = trained["model"], trained["cfg"], trained["batch"]
    with torch.no_grad():
        ref, _ = model.driver(feature_inputs(batch))
        via_train, losses, _ = model(batch)  # eval mode, heads run for the loss only
    assert "vlm" in via_train and "vlm/total" in losses
    for key in ("plan", "plan_all", "f_ego"):
        assert torch.equal(ref[key], via_train[key]), key
    out = export_driving_checkpoint(model.driver, cfg, tmp_path / "agent", {"trained_with_vlm_ad": True})
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.driver.state_dict())
    aux_names = {n for n, _ in model.aux.named_parameters()}
    assert aux_names and not any(k.startswith("aux") or k in aux_names for k in keys)
    loaded, cfg2, meta = load_driving_checkpoint(out)
    assert to_dict(cfg2) == to_dict(cfg) and meta["trained_with_vlm_ad"] is True
    assert not loaded.training
    with torch.no_grad():
        got, _ = loaded(feature_inputs(batch))
    for key in ("plan", "plan_all", "f_ego"):
        assert torch.equal(ref[key], got[key]), key
    with pytest.raises(TypeError, match="driver"):
        export_driving_checkpoint(model, cfg, tmp_path / "bad")


def test_train_checkpoint_round_trip(trained):
    ck = load_train_checkpoint(trained["ckpt"])
    want = trained["model"].state_dict()
    got = ck.model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert to_dict(ck.vlm_cfg) == to_dict(trained["vlm_cfg"]) and ck.text_dim == TEXT_DIM
    assert ck.train == {"lr": 1e-3, "steps": 2, "data": "/d"}  # Path stored as a string
    assert ck.meta["step"] == 2 and ck.meta["trained_with_vlm_ad"]
    opt = torch.optim.AdamW(ck.model.parameters(), lr=1e-3)
    opt.load_state_dict(ck.optimizer_state["optimizer"])
    ref_state, got_state = trained["opt"].state_dict()["state"], opt.state_dict()["state"]
    assert set(ref_state) == set(got_state) and ref_state
    assert all(torch.equal(got_state[i]["exp_avg"], ref_state[i]["exp_avg"]) for i in ref_state)
    with pytest.raises(ValueError, match="weights_only"):
        save_train_checkpoint(trained["ckpt"].parent / "x", ck.model, ck.model_cfg,
                              optimizer_state={"bad": Path("/")})


def test_train_model_targets_and_disabled_heads():
    torch.manual_seed(0)
    cfg = get_config("vad_nano")
    driver = VAD(cfg)
    batch = make_dummy_batch(cfg, 1, seed=2)
    model = TrainModel(driver, VLMADConfig(attn_dim=32, ffn_dim=64, mlp_hidden=64), TEXT_DIM)
    with pytest.raises(UserError, match="feature store"):
        model.train()(batch)
    plain = TrainModel(driver, VLMADConfig(enabled=False))
    assert plain.aux is None and not any(k.startswith("aux") for k in plain.state_dict())
    with torch.no_grad():
        _, l_eval, _ = model.eval()(batch)  # eval without targets: driver losses only
        _, l_plain, _ = plain.eval()(batch)
    assert not any(k.startswith("vlm/") for k in l_eval) and torch.equal(l_eval["total"], l_plain["total"])
    assert {g["name"] for g in model.param_groups(1e-4)} == {"backbone", "rest", "vlm_ad"}


def test_export_agent_cli(trained, tmp_path):
    out = tmp_path / "random"
    export_agent.main(["--random-init", "--config", "vad_nano", "--seed", "3", "--out", str(out)])
    loaded, cfg, meta = load_driving_checkpoint(out)
    assert meta["random_init"] is True and meta["config_name"] == "vad_nano" and cfg.name == "vad_nano"
    assert meta["training_rig"] is None  # untrained: no rig to warn about (tests/test_agent_run.py)
    torch.manual_seed(3)
    ref = VAD(get_config("vad_nano")).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    assert yaml.safe_load((out / "config.yaml").read_text()) == to_dict(get_config("vad_nano"))
    # the same folder can be exported again (replaced), and --set overrides reach the config
    export_agent.main(["--random-init", "--config", "vad_nano", "--set", "num_agent_queries=10", "--out",
                       str(out)])
    assert load_driving_checkpoint(out)[1].num_agent_queries == 10

    out2 = tmp_path / "from_train"
    export_agent.main(["--checkpoint", str(trained["ckpt"]), "--out", str(out2)])
    loaded, _, meta = load_driving_checkpoint(out2)
    want = trained["model"].driver.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    assert meta["trained_with_vlm_ad"] is True and meta["step"] == 2 and meta["random_init"] is False
    assert meta["source_checkpoint"] == str(trained["ckpt"].resolve())

    a = str(tmp_path / "a")
    for argv, msg in ((["--random-init", "--config", "vad_huge", "--out", a], "vad_huge"),
                      (["--random-init", "--out", a], "--config"),
                      (["--checkpoint", str(out2), "--out", a], "driving checkpoint"),
                      (["--checkpoint", str(tmp_path / "nope"), "--out", a], "does not exist")):
        with pytest.raises(UserError, match=msg):
            export_agent.main(argv)


def test_export_agent_subprocess_contract(tmp_path, capsys):
    """The exact command line other parts rely on (vad_nano instead of vad_tiny to stay fast)."""
    out = tmp_path / "agent"
    r = subprocess.run([sys.executable, "-m", "scripts.export_agent", "--random-init", "--config", "vad_nano",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "RANDOM-INIT" in r.stdout and (out / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as e:  # user errors: one line, exit code 2
        cli_main(export_agent.main, ["--random-init", "--config", "nope", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: unknown model config")


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    return export_driving_checkpoint(trained["model"].driver, trained["cfg"],
                                     tmp_path_factory.mktemp("exp") / "agent")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_load_via_yaml_reference_and_file_paths(exported, tmp_path):
    ref = tmp_path / "agent.yaml"
    ref.write_text(yaml.safe_dump({"checkpoint": str(exported), "other_agent_field": 1}))
    assert load_driving_checkpoint(ref)[2]["format"] == "vlmad-driving"
    rel = exported.parent / "rel.yaml"
    rel.write_text("checkpoint: agent\n")  # relative to the YAML file's folder
    load_driving_checkpoint(rel)
    load_driving_checkpoint(exported / "config.yaml")
    bad = tmp_path / "noref.yaml"
    bad.write_text("speed: 3\n")
    with pytest.raises(UserError, match="checkpoint:"):
        load_driving_checkpoint(bad)


def test_corrupt_or_mismatched_checkpoints_raise(exported, trained, tmp_path):
    def case(name: str) -> Path:
        return _copy(exported, tmp_path / name)

    with pytest.raises(UserError, match="does not exist"):
        load_driving_checkpoint(tmp_path / "missing")
    d = case("no_weights")
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match="missing"):
        load_driving_checkpoint(d)
    d = case("truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    (d / "meta.json").write_text(json.dumps({"format": "vlmad-driving", "format_version": 1}))
    with pytest.raises(UserError, match="corrupt"):
        load_driving_checkpoint(d)
    d = case("garbage")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt|sha256"):
        load_driving_checkpoint(d)
    d = case("bitflip")  # still a valid safetensors file, caught by the recorded hash
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        load_driving_checkpoint(d)
    d = case("no_config")
    (d / "config.yaml").unlink()
    with pytest.raises(UserError, match="config.yaml is missing"):
        load_driving_checkpoint(d)
    d = case("bad_yaml")
    (d / "config.yaml").write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_driving_checkpoint(d)
    d = case("unknown_field")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "warp_drive": True}))
    with pytest.raises(UserError, match="warp_drive"):
        load_driving_checkpoint(d)
    d = case("shape")
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "num_agent_queries": 10}))
    with pytest.raises(UserError, match="another shape"):
        load_driving_checkpoint(d)
    d = case("newer")
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UserError, match="newer"):
        load_driving_checkpoint(d)
    with pytest.raises(UserError, match="training checkpoint"):
        load_driving_checkpoint(trained["ckpt"])
    d = _copy(trained["ckpt"], tmp_path / "train_bad_opt")
    (d / "optimizer.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="optimizer.pt is corrupt"):
        load_train_checkpoint(d)
    assert load_train_checkpoint(d, load_optimizer=False).optimizer_state is None
    keep = tmp_path / "user_folder"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="refusing"):
        export_driving_checkpoint(trained["model"].driver, trained["cfg"], keep)
    assert (keep / "notes.txt").read_text() == "mine"
