"""DDP on CPU (gloo, launched by torchrun like on a GPU cluster): 2 processes x batch 1 train the same model
as 1 process x batch 1 x 2 accumulation steps (same global batch), within floating-point tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from models.train_model import TrainModel
from models.vad import VAD
from nusc.infos import build_or_load_infos
from scripts.train import build_parser, resolve_config
from synthetic.nuscenes import make_synthetic_dataset
from teacher.feature_store import FeatureStore
from training import checkpoint as ck
from training.data import rank_batches
from training.loop import _seed_all, resolve_model_config, train

PROJECT = Path(__file__).resolve().parents[1]
STEPS = 3


def common_args(root: Path, feats: Path, out: Path) -> list[str]:
    return ["--config", "vad_nano", "--dataroot", str(root), "--version", "v1.0-mini", "--out", str(out),
            "--vlm-ad", "--features", str(feats), "--max-steps", str(STEPS), "--batch-size", "1",
            "--num-workers", "0", "--device", "cpu", "--quiet", "--model-set", "dropout=0.0",
            "--set", "vlm_ad.dropout=0.0", "--set", "vlm_ad.num_layers=1", "--set", "vlm_ad.attn_dim=32",
            "--set", "vlm_ad.ffn_dim=64", "--set", "vlm_ad.mlp_hidden=64", "--set", "log_every=1",
            "--set", "tensorboard=false", "--set", "warmup_iters=1", "--set", "lr=1e-3"]


def test_rank_shards_of_two_processes_are_the_accumulation_chunks_of_one():
    one = list(rank_batches(11, 3, 1, 0, 2, 2, 1, 0, 2))  # 1 process, accum 2: [s0a0, s0a1, s1a0, s1a1]
    r0 = list(rank_batches(11, 3, 1, 0, 2, 2, 2, 0, 1))
    r1 = list(rank_batches(11, 3, 1, 0, 2, 2, 2, 1, 1))
    assert one == [r0[0], r1[0], r0[1], r1[1]]
    assert len({i for b in one for i in b}) == 8  # no sample twice within an epoch


def test_two_process_ddp_matches_one_process_with_accumulation(tmp_path):
    root = make_synthetic_dataset(tmp_path / "nusc", num_scenes=2, keyframes_per_scene=8,
                                  image_size=(160, 90), seed=2)
    infos = build_or_load_infos(root, "v1.0-mini", progress=False)
    tokens = [r["token"] for r in infos]
    feats = FeatureStore.random(root / "f.safetensors", tokens, dim=16)

    single = tmp_path / "single"
    cfg = resolve_config(build_parser().parse_args(common_args(root, feats, single) + ["--grad-accum", "2"]))
    train(cfg)

    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "scripts.train", *common_args(root, feats, ddp), "--grad-accum", "1"],
                       cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 2 and summary["steps"] == STEPS

    log = [json.loads(x) for x in (single / "log.jsonl").read_text().splitlines()]
    log_ddp = [json.loads(x) for x in (ddp / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [x["step"] for x in log_ddp] == list(range(1, STEPS + 1))
    for a, b in zip(log, log_ddp):
        assert a["losses"].keys() == b["losses"].keys()
        for k in a["losses"]:
            assert np.isclose(a["losses"][k], b["losses"][k], rtol=1e-4, atol=1e-5), (a["step"], k)
    wa = load_file(ck.find_latest(single) / "model.safetensors")
    wb = load_file(ck.find_latest(ddp) / "model.safetensors")
    _seed_all(cfg.seed)  # the initial weights, built exactly as the trainer builds them
    init = TrainModel(VAD(resolve_model_config(cfg)[0]), cfg.vlm_ad, 16).state_dict()
    assert wa.keys() == wb.keys() == init.keys()
    moved, apart = 0.0, 0.0
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), k
        moved = max(moved, float((wa[k] - init[k]).abs().max()))
        apart = max(apart, float((wa[k] - wb[k]).abs().max()))
    assert moved > 1e-3 and apart < 1e-3 * moved  # the runs trained, and identically
