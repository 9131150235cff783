"""Running a trained model over a dataset (training/predict.py) and `scripts.eval_openloop --checkpoint`:
contract-format predictions, action predictions from the VLM-AD head, temporal state vs queue, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint_formats import export_driving_checkpoint, save_train_checkpoint
from models.train_model import TrainModel
from models.vad import VAD
from models.vlm_ad import VLMADConfig
from nusc.infos import build_or_load_infos
from openloop.evaluate import load_predictions
from scripts.eval_openloop import main as eval_main
from synthetic.nuscenes import make_synthetic_dataset
from teacher.prompts import ACTION_LABELS
from training import checkpoint as ck
from training.config import TrainConfig
from training.loop import resolve_model_config
from training.predict import predict
from vlmad.errors import UserError

KEYFRAMES = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(dataroot, infos, run folder, TrainModel): a run folder laid out as scripts.train leaves it, holding
    an untrained vad_nano with VLM-AD heads (the weights do not matter here, only that they are used)."""
    tmp = tmp_path_factory.mktemp("predict")
    root = make_synthetic_dataset(tmp / "nusc", num_scenes=2, keyframes_per_scene=KEYFRAMES,
                                  image_size=(160, 90), seed=4)
    infos = build_or_load_infos(root, "v1.0-mini", progress=False)
    torch.manual_seed(0)
    mcfg = resolve_model_config(TrainConfig(model="vad_nano"))[0]
    heads = VLMADConfig(num_layers=1, attn_dim=32, ffn_dim=64, mlp_hidden=64)
    model = TrainModel(VAD(mcfg), heads, 16).eval()
    run = tmp / "run"
    meta = {"step": 1, "val_scenes": ["scene-0002"]}
    save_train_checkpoint(ck.step_dir(run, 1), model, mcfg, meta=meta)
    ck.mark_latest(run, 1)
    export_driving_checkpoint(model.driver, mcfg, run / "driving", meta)
    return root, infos, run, model


def test_eval_from_checkpoint_writes_contract_predictions_and_actions(setup, tmp_path):
    root, infos, run, _ = setup
    out = tmp_path / "m.json"
    eval_main(["--dataroot", str(root), "--version", "v1.0-mini", "--checkpoint", str(run), "--split",
               "heldout", "--out", str(out), "--device", "cpu", "--quiet"])
    preds = load_predictions(tmp_path / "m.predictions.json")  # the --predictions contract's own parser
    val = [r["token"] for r in infos if r["scene_name"] == "scene-0002"]
    assert sorted(preds) == sorted(val) and all(p.shape == (6, 2) for p in preds.values())
    metrics = json.loads(out.read_text())
    assert metrics["num_samples"] == KEYFRAMES - 6 and metrics["name"] == "run"
    assert metrics["predictions"] == str(tmp_path / "m.predictions.json")
    actions = json.loads((tmp_path / "m.actions.json").read_text())
    assert sorted(actions) == sorted(val)
    for a in actions.values():
        assert all(a[k] in ACTION_LABELS[k] for k in ("control", "turn", "lane"))
    # the written file scores exactly like the in-memory plans
    out2 = tmp_path / "m2.json"
    eval_main(["--dataroot", str(root), "--version", "v1.0-mini", "--predictions",
               str(tmp_path / "m.predictions.json"), "--split", "all", "--out", str(out2), "--quiet"])
    again = json.loads(out2.read_text())
    assert again["vad"] == metrics["vad"] and again["uniad"] == metrics["uniad"]


def test_training_checkpoint_driving_export_and_module_predict_the_same(setup):
    root, infos, run, model = setup
    kw = dict(scenes=["scene-0001"], device="cpu", num_workers=0, infos=infos, progress=False)
    a = predict(run, root, "v1.0-mini", **kw)
    b = predict(run / "driving", root, "v1.0-mini", **kw)
    c = predict(model, root, "v1.0-mini", **kw)
    assert a.actions is not None and b.actions is None and c.actions == a.actions
    assert len(a.plans) == KEYFRAMES and a.plans.keys() == b.plans.keys() == c.plans.keys()
    assert all(np.array_equal(a.plans[t], b.plans[t]) and np.array_equal(a.plans[t], c.plans[t])
               for t in a.plans)


def test_state_mode_matches_the_training_queue_where_both_see_the_same_history(setup):
    """vad_nano's queue has 2 frames: for a scene's first two frames the carried state and the queue
    build the same previous BEV; later the state carries longer history, so plans differ."""
    root, infos, run, _ = setup
    kw = dict(scenes=["scene-0001"], device="cpu", num_workers=0, infos=infos, progress=False)
    state = predict(run, root, "v1.0-mini", mode="state", **kw).plans
    queue = predict(run, root, "v1.0-mini", mode="queue", batch_size=3, **kw).plans
    frames = sorted((r["frame_idx"], r["token"]) for r in infos if r["scene_name"] == "scene-0001")
    for idx, tok in frames[:2]:
        assert np.allclose(state[tok], queue[tok], atol=1e-5), idx
    assert not np.allclose(state[frames[5][1]], queue[frames[5][1]], atol=1e-5)


def test_lidar_frame_plans_are_the_bev_frame_plans(setup):
    """frame="lidar" (eval_openloop --checkpoint --frame lidar) returns the model's BEV-frame (LIDAR_TOP)
    plan; rotated by each record's ego_from_lidar it is the ego-axes plan."""
    root, infos, run, model = setup
    tokens = [r["token"] for r in infos[:3]]
    kw = dict(tokens=tokens, infos=infos, progress=False, device="cpu")
    ego = predict(model, root, "v1.0-mini", **kw).plans
    lidar = predict(model, root, "v1.0-mini", frame="lidar", **kw).plans
    rot = {r["token"]: np.asarray(r["ego_from_lidar"])[:2, :2] for r in infos}
    for t in tokens:
        assert np.allclose(lidar[t] @ rot[t].T, ego[t], atol=1e-4)
        assert not np.allclose(lidar[t], ego[t], atol=1e-3)


def test_errors(setup, tmp_path):
    root, infos, run, model = setup
    with pytest.raises(UserError, match="plan frame"):
        predict(model, root, "v1.0-mini", infos=infos, progress=False, device="cpu", frame="global")
    bare = tmp_path / "bare"
    export_driving_checkpoint(model.driver, model.driver.cfg, bare)  # no val_scenes recorded
    with pytest.raises(UserError, match="held-out scenes"):
        eval_main(["--dataroot", str(root), "--version", "v1.0-mini", "--checkpoint", str(bare), "--split",
                   "heldout", "--out", str(tmp_path / "m.json"), "--quiet", "--device", "cpu"])
    carla = resolve_model_config(TrainConfig(model="vad_nano", carla_inputs="keep"))[0]
    with pytest.raises(UserError, match="CARLA variant"):
        predict(VAD(carla), root, "v1.0-mini", infos=infos, progress=False, device="cpu")
    with pytest.raises(UserError, match="not keyframes"):
        predict(model, root, "v1.0-mini", tokens=["nope"], infos=infos, progress=False, device="cpu")
