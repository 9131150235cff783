"""Training configuration, scene splits, schedule, VLM-AD input errors and the CLI's one-line failures."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nusc.infos import build_or_load_infos
from scripts.train import build_parser, resolve_config
from synthetic.nuscenes import make_synthetic_dataset
from teacher.feature_store import FeatureStore
from training.config import TrainConfig, load_train_config
from training.data import dataset_config, split_scenes
from training.loop import lr_factor, resolve_model_config, train
from vlmad.errors import UserError

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("nusc"), num_scenes=2, keyframes_per_scene=4,
                                  image_size=(160, 90), seed=3)
    build_or_load_infos(root, "v1.0-mini", progress=False)
    return root


def args(root: Path, out: Path, *extra: str):
    return build_parser().parse_args(["--dataroot", str(root), "--version", "v1.0-mini", "--out", str(out),
                                      "--num-workers", "0", "--device", "cpu", "--quiet", *extra])


# ---- config ----------------------------------------------------------------------------------------
def test_config_precedence_file_then_flags_then_set(tmp_path, root):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"model": "vad_tiny", "lr": 1.0e-4, "batch_size": 4,
                                 "vlm_ad": {"lambda2": 0.5}}))
    cfg = resolve_config(args(root, tmp_path / "r", "--config-file", str(f), "--batch-size", "2",
                              "--set", "lr=3e-4", "--vlm-ad", "--model-set", "dropout=0.0"))
    assert (cfg.model, cfg.batch_size, cfg.lr) == ("vad_tiny", 2, 3e-4)  # "3e-4" (YAML text) is a number
    assert cfg.vlm_ad.enabled and cfg.vlm_ad.lambda2 == 0.5 and cfg.model_overrides == ["dropout=0.0"]
    assert resolve_model_config(cfg)[0].dropout == 0.0


def test_resume_with_the_runs_own_model_flags_keeps_its_overrides(tmp_path, root):
    """scripts.experiment resumes an interrupted training with its original flags plus --resume: repeated
    --model-set flags must not be appended to the saved list again (the resume check then refused)."""
    from vlmad.config import save_resolved

    flags = ["--model-set", "use_ego_his=false", "--model-set", "frozen_stages=-1"]
    first = resolve_config(args(root, tmp_path / "r", *flags))
    save_resolved(first, tmp_path / "r", "config.yaml")
    again = resolve_config(args(root, tmp_path / "r", *flags, "--resume"))
    assert again.model_overrides == first.model_overrides == ["use_ego_his=false", "frozen_stages=-1"]
    changed = resolve_config(args(root, tmp_path / "r", "--model-set", "frozen_stages=1", "--resume"))
    assert changed.model_overrides == ["use_ego_his=false", "frozen_stages=-1", "frozen_stages=1"]


def test_config_errors_are_user_errors(tmp_path, root):
    with pytest.raises(UserError, match="unknown field"):
        load_train_config(overrides=["learning_rate=1"])
    with pytest.raises(UserError, match="split"):
        TrainConfig(split="random")
    with pytest.raises(UserError, match="lr must be a number"):
        load_train_config(overrides=["lr=fast"])
    with pytest.raises(UserError, match="unknown model config"):
        resolve_model_config(TrainConfig(model="vad_huge"))
    with pytest.raises(UserError, match="--dataroot"):
        resolve_config(build_parser().parse_args(["--out", str(tmp_path)]))


def test_carla_inputs_are_dropped_only_when_asked():
    mcfg, notes = resolve_model_config(TrainConfig(model="vad_nano"))
    assert not mcfg.use_goal_point and not mcfg.use_traffic_light and notes
    mcfg, notes = resolve_model_config(TrainConfig(model="vad_nano", carla_inputs="keep"))
    assert mcfg.use_goal_point and mcfg.use_traffic_light and not notes
    assert not resolve_model_config(TrainConfig(model="vad_tiny"))[1]  # nothing to drop, nothing said


def test_carla_inputs_auto_follows_the_records():
    """Route-recorded data (goal point + traffic-light state in every record) keeps the CARLA variant;
    one record without them (nuScenes has neither) drops it; "drop" and "keep" force it."""
    route = [{"goal_point": np.array([12.0, -1.0]), "privileged": {"traffic_light": s}}
             for s in ("red", "green", None)]
    mcfg, notes = resolve_model_config(TrainConfig(model="vad_nano"), route)
    assert mcfg.use_goal_point and mcfg.use_traffic_light and "kept" in notes[0]
    no_goal = {"privileged": {"traffic_light": "red"}}
    no_light = {"goal_point": np.zeros(2), "privileged": None}
    for missing in (no_goal, no_light):
        mcfg, notes = resolve_model_config(TrainConfig(model="vad_nano"), [*route, missing])
        assert not mcfg.use_goal_point and not mcfg.use_traffic_light and "auto" in notes[0]
    mcfg, _ = resolve_model_config(TrainConfig(model="vad_nano", carla_inputs="drop"), route)
    assert not mcfg.use_goal_point
    with pytest.raises(UserError, match="carla_inputs"):
        TrainConfig(carla_inputs="maybe")


# ---- split, data size, schedule ----------------------------------------------------------------------
def test_scene_splits():
    from nuscenes.utils.splits import create_splits_scenes

    mini = create_splits_scenes()["mini_train"] + create_splits_scenes()["mini_val"]
    tr, va, how = split_scenes(mini, "v1.0-mini")
    assert sorted(va) == sorted(create_splits_scenes()["mini_val"]) and len(tr) == 8 and "official" in how
    names = [f"scene-{i:04d}" for i in range(1, 11)]  # not the mini scenes: deterministic split
    tr, va, how = split_scenes(names[::-1], "v1.0-mini", "auto", 0.2)
    assert va == ["scene-0005", "scene-0010"] and len(tr) == 8 and "deterministic" in how
    assert split_scenes(names[:2], "v1.0-mini")[1] == ["scene-0002"]  # at least one held-out scene
    assert split_scenes(names, "v1.0-mini", "all")[1] == []
    with pytest.raises(UserError, match="official"):
        split_scenes(names, "v1.0-mini", "official")


def test_dataset_config_gives_the_model_its_input_size(root):
    infos = build_or_load_infos(root, "v1.0-mini", progress=False)
    mcfg = resolve_model_config(TrainConfig(model="vad_nano"))[0]
    dcfg = dataset_config(mcfg, infos)
    # 160-pixel-wide synthetic cameras are not rescaled for vad_nano (1600 x 0.1 = 160)
    assert dcfg.img_scale == pytest.approx(1.0) and dcfg.queue_length == mcfg.queue_length
    assert dcfg.normalisation == mcfg.img_norm


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(warmup_iters=500, warmup_max_fraction=0.1)
    f = [lr_factor(s, 100, cfg) for s in range(101)]  # short run: warm-up shrinks to 10 steps
    assert f[0] == pytest.approx(cfg.warmup_ratio)  # warm-up starts at lr / 3 (cosine is still 1 there)
    assert f[0] < f[5] < f[9] and f[10] == pytest.approx(lr_factor(10, 100, TrainConfig(warmup_iters=0)))
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[100] == pytest.approx(cfg.min_lr_ratio)
    long = TrainConfig()
    assert lr_factor(499, 100_000, long) < lr_factor(500, 100_000, long)  # VAD's 500 iterations
    assert math.isclose(lr_factor(500, 100_000, long), 1.0, rel_tol=1e-3)


def test_too_little_data_for_one_global_batch(tmp_path, root):
    with pytest.raises(UserError, match="fewer than one global batch"):
        train(resolve_config(args(root, tmp_path / "r", "--batch-size", "3", "--grad-accum", "2")))


# ---- VLM-AD inputs -----------------------------------------------------------------------------------
def test_vlm_ad_without_or_with_a_missing_feature_store(tmp_path, root):
    with pytest.raises(UserError, match="no feature store"):
        train(resolve_config(args(root, tmp_path / "a", "--vlm-ad")))
    with pytest.raises(UserError, match="does not exist"):
        train(resolve_config(args(root, tmp_path / "b", "--vlm-ad", "--features", str(tmp_path / "no.st"))))


def test_feature_store_that_covers_no_training_sample(tmp_path, root):
    f = FeatureStore.save(tmp_path / "other.safetensors", ["x", "y"], np.zeros((2, 3, 8)),
                          np.ones((2, 3), bool), np.zeros((2, 3), int), {"encoder": "test"})
    with pytest.raises(UserError, match="covers 0 of the 4 training samples"):
        train(resolve_config(args(root, tmp_path / "r", "--vlm-ad", "--features", str(f))))


def test_cli_reports_one_line_and_exit_code_2(tmp_path, root):
    cmd = [sys.executable, "-m", "scripts.train", "--dataroot", str(root), "--version", "v1.0-mini", "--out",
           str(tmp_path / "r"), "--vlm-ad", "--features", str(tmp_path / "missing.st"), "--device", "cpu"]
    r = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error: VLM-AD feature store") and "Traceback" not in r.stderr
    help_text = subprocess.run([sys.executable, "-m", "scripts.train", "--help"], cwd=PROJECT,
                               capture_output=True, text=True, timeout=60).stdout
    assert "--resume" in help_text and "torchrun" in help_text


def test_plain_vad_training_run(tmp_path, root):
    """VLM-AD off: no heads, no VLM losses; TensorBoard scalars and the resolved configs beside the run."""
    from safetensors.torch import load_file

    from training import checkpoint as ck

    run = tmp_path / "r"
    summary = train(resolve_config(args(root, run, "--max-steps", "2", "--set", "log_every=1")))
    assert summary["steps"] == 2 and summary["vlm_ad"] is False and summary["samples_per_s"] > 0
    losses = summary["final_losses"]
    assert not any(k.startswith("vlm/") for k in losses) and "plan_reg" in losses
    assert not any(k.startswith("aux.") for k in load_file(ck.find_latest(run) / "model.safetensors"))
    assert list((run / "tb").glob("events.out.tfevents.*"))
    saved = load_train_config(yaml_path=run / "config.yaml")
    assert saved.max_steps == 2 and not saved.vlm_ad.enabled
    assert yaml.safe_load((run / "model.yaml").read_text())["use_goal_point"] is False


def test_missing_image_is_one_line_error_also_from_a_worker(tmp_path, root):
    import shutil

    from nusc.infos import build_or_load_infos as load

    data = tmp_path / "nusc"
    shutil.copytree(root, data)
    rec = next(r for r in load(data, "v1.0-mini", progress=False) if r["scene_name"] == "scene-0001")
    (data / rec["cams"]["CAM_FRONT"]["path"]).unlink()
    for workers in ("0", "1"):
        a = args(data, tmp_path / f"r{workers}", "--max-steps", "4", "--num-workers", workers)
        with pytest.raises(UserError, match=r"^image .*CAM_FRONT.* is missing") as e:
            train(resolve_config(a))
        assert "Traceback" not in str(e.value) and "\n" not in str(e.value)


def test_time_limit_stops_checkpoints_and_exports(tmp_path, root):
    from training import checkpoint as ck

    run = tmp_path / "r"
    summary = train(resolve_config(args(root, run, "--max-steps", "50", "--max-minutes", "0.0001")))
    assert summary["stopped_early"] == "max_minutes"
    assert summary["steps"] == 1 and summary["total_steps"] == 50
    assert ck.find_latest(run).name == "step_00000001" and (run / "driving" / "meta.json").is_file()


def test_checkpoints_record_the_training_rig(tmp_path, root):
    """The synthetic data is rendered through the nominal nuScenes rig: the training checkpoint, the driving
    checkpoint the trainer exports and one exported by scripts.export_agent all record it."""
    import json

    from models.checkpoint_formats import load_driving_checkpoint
    from scripts.export_agent import main as export_agent
    from training import checkpoint as ck
    from vlmad.rig import NUSCENES_RIG, describe_rig, rig_differences

    run = tmp_path / "r"
    train(resolve_config(args(root, run, "--max-steps", "1")))
    rig = json.loads((ck.find_latest(run) / "meta.json").read_text())["training_rig"]
    assert rig["name"] == "nuscenes_nominal" and rig_differences(describe_rig(NUSCENES_RIG), rig) == []
    assert load_driving_checkpoint(run / "driving")[2]["training_rig"] == rig
    export_agent(["--checkpoint", str(ck.find_latest(run)), "--out", str(tmp_path / "agent")])
    assert load_driving_checkpoint(tmp_path / "agent")[2]["training_rig"] == rig


def test_backbone_weights_initialise_the_image_backbone(tmp_path, root):
    """--backbone-weights loads a torchvision-format state dict before step 0 (frozen stem stays equal)."""
    import torch
    from safetensors.torch import load_file

    from models.backbone import ResNet

    mcfg = resolve_model_config(TrainConfig(model="vad_nano"))[0]
    ref = ResNet(mcfg.backbone_width, mcfg.backbone_blocks, out_indices=(3,), frozen_stages=1)
    state = dict(ref.state_dict())
    state["conv1.weight"] = torch.randn_like(state["conv1.weight"]) * 0.05  # recognisable stem values
    pth = tmp_path / "resnet.pth"
    torch.save(state, pth)
    cfg = resolve_config(args(root, tmp_path / "run", "--max-steps", "1", "--backbone-weights", str(pth)))
    train(cfg)
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    weights = load_file(str(ckpt / "model.safetensors"))
    got = weights["driver.img_backbone.conv1.weight"]
    assert torch.equal(got, state["conv1.weight"])  # the stem is frozen: exactly the loaded values
    with pytest.raises(UserError):
        train(resolve_config(args(root, tmp_path / "run2", "--max-steps", "1",
                                  "--backbone-weights", str(tmp_path / "missing.pth"))))
