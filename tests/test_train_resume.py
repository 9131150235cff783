"""Exact resume of training (vad_nano + VLM-AD heads, CPU): an interrupted and resumed run reproduces the
uninterrupted run's loss sequence and weights bit for bit; an interrupted checkpoint save never becomes
the latest checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import models.checkpoint_formats
from nusc.infos import build_or_load_infos
from synthetic.nuscenes import make_synthetic_dataset
from teacher.feature_store import FeatureStore
from training import checkpoint as ck
from training.config import TrainConfig, load_train_config
from training.loop import train
from vlmad.errors import UserError

STEPS = 6  # 8 training samples, batch 1 x grad_accum 2: 4 steps per epoch, so the runs cross an epoch end


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(dataroot, feature store path): 2 synthetic scenes (one trains, one is held out) and random VLM
    targets for the training scene's keyframes, a few of them masked."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("nusc"), num_scenes=2, keyframes_per_scene=8,
                                  image_size=(160, 90), seed=1)
    infos = build_or_load_infos(root, "v1.0-mini", progress=False)
    tokens = [r["token"] for r in infos if r["scene_name"] == "scene-0001"]
    g = np.random.default_rng(0)
    mask = np.ones((len(tokens), 3), bool)
    mask[0, 2] = False
    actions = np.stack([g.integers(0, 4, len(tokens)), g.integers(0, 4, len(tokens)),
                        g.integers(-1, 5, len(tokens))], 1)
    feats = FeatureStore.save(root / "features.safetensors", tokens, g.normal(size=(len(tokens), 3, 16)),
                              mask, actions, {"encoder": "random-test", "teacher": "none"})
    return root, feats


def make_cfg(data, out: Path, **kw) -> TrainConfig:
    root, feats = data
    base = dict(dataroot=str(root), version="v1.0-mini", out=str(out), features=str(feats), max_steps=STEPS,
                batch_size=1, grad_accum=2, num_workers=0, log_every=1, ckpt_every=2, keep_last=0,
                tensorboard=False, progress=False, warmup_iters=2, warmup_max_fraction=0.5, device="cpu")
    base.update(kw)
    cfg = load_train_config(overrides=[f"{k}={json.dumps(v)}" for k, v in base.items()])
    cfg.vlm_ad.enabled, cfg.vlm_ad.num_layers, cfg.vlm_ad.attn_dim, cfg.vlm_ad.ffn_dim = True, 1, 32, 64
    cfg.vlm_ad.mlp_hidden = 64
    return cfg


def losses(run: Path) -> list[tuple[int, dict]]:
    return [(r["step"], r["losses"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(ck.find_latest(run) / "model.safetensors")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("ref") / "run"
    summary = train(make_cfg(data, run))
    return run, summary


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == list(range(1, STEPS + 1)) == [s for s, _ in lb]
    assert la == lb  # every loss term of every step, exactly
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_reference_run_outputs(reference):
    run, summary = reference
    assert summary["steps"] == STEPS and summary["vlm_ad"] and summary["feature_coverage"] == 1.0
    assert summary["val_scenes"] == ["scene-0002"] and summary["train_samples"] == 8
    assert {"vlm/align", "vlm/action", "plan_reg", "total"} <= set(summary["final_losses"])
    assert [s for s, _ in ck.list_checkpoints(run)] == [2, 4, 6]
    assert (run / "config.yaml").is_file() and (run / "driving" / "model.safetensors").is_file()
    driving = load_file(run / "driving" / "model.safetensors")
    assert not any(k.startswith("aux") for k in driving)  # the export carries no VLM-AD head
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS
    # the heads and the planner actually trained
    first, last = losses(run)[0][1], losses(run)[-1][1]
    assert first["vlm/align"] != last["vlm/align"] and first["plan_reg"] != last["plan_reg"]


def test_interrupted_and_resumed_run_is_identical(data, reference, tmp_path):
    run = tmp_path / "run"
    part = train(make_cfg(data, run), stop_after=3)  # "killed" after step 3; last checkpoint: step 2
    assert part["steps"] == 3 and ck.find_latest(run).name == "step_00000002"
    assert [s for s, _ in losses(run)] == [1, 2, 3]
    train(make_cfg(data, run), resume=True)  # replays step 3, crosses the epoch end at step 4
    assert_same_run(reference[0], run)


def test_interrupted_save_is_never_latest(data, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = models.checkpoint_formats.atomic_write_bytes

    def dying_write(path, data_bytes):  # the process dies while writing step 4's optimizer state
        if Path(path).name == "optimizer.pt" and "step_00000004" in str(path):
            raise KeyboardInterrupt
        return real(path, data_bytes)

    monkeypatch.setattr(models.checkpoint_formats, "atomic_write_bytes", dying_write)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data, run))
    monkeypatch.undo()
    assert ck.find_latest(run).name == "step_00000002"
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step_00000002"]
    # a staging folder left by a hard kill and a damaged pointer are both ignored
    (run / "checkpoints" / ".step_00000004.staging-99").mkdir()
    (run / "checkpoints" / ".step_00000004.staging-99" / "meta.json").write_text("{}")
    (run / "checkpoints" / "latest.json").write_text("{trunc")
    assert ck.find_latest(run).name == "step_00000002"
    train(make_cfg(data, run), resume=True)
    assert_same_run(reference[0], run)


def test_resume_refuses_a_changed_run_and_a_fresh_start_refuses_an_existing_run(data, reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(make_cfg(data, run))
    with pytest.raises(UserError, match=r"\['lr'\] differ"):
        train(make_cfg(data, run, lr=1e-3, max_steps=STEPS + 1), resume=True)
    with pytest.raises(UserError, match="global batch"):
        train(make_cfg(data, run, grad_accum=1, max_steps=STEPS + 1), resume=True)
