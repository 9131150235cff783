"""scripts.train --init-from DIR: a driving checkpoint (e.g. a converted official VAD) starts the run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint_formats import export_driving_checkpoint
from models.vad import VAD
from nusc.infos import build_or_load_infos
from scripts.train import build_parser, resolve_config
from synthetic.nuscenes import make_synthetic_dataset
from training.config import TrainConfig
from training.loop import resolve_model_config, train
from vlmad.errors import UserError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("nusc"), num_scenes=2, keyframes_per_scene=4,
                                  image_size=(160, 90), seed=3)
    build_or_load_infos(root, "v1.0-mini", progress=False)
    return root


def args(root, out, *extra):
    return build_parser().parse_args(["--dataroot", str(root), "--version", "v1.0-mini", "--out", str(out),
                                      "--num-workers", "0", "--device", "cpu", "--quiet", "--max-steps", "1",
                                      *extra])


def test_init_from_loads_the_driver_and_takes_its_config(tmp_path, root):
    mcfg = dataclasses.replace(resolve_model_config(TrainConfig(model="vad_nano"))[0], bev_align="exact")
    torch.manual_seed(7)
    src = VAD(mcfg)
    with torch.no_grad():
        src.img_backbone.conv1.weight.normal_(0.0, 0.05)  # recognisable values in the frozen stem
    export_driving_checkpoint(src, mcfg, tmp_path / "init")
    cfg = resolve_config(args(root, tmp_path / "run", "--init-from", str(tmp_path / "init")))
    assert cfg.model.endswith("config.yaml")  # no --config: the checkpoint's model config
    train(cfg)
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    got = load_file(str(ckpt / "model.safetensors"))["driver.img_backbone.conv1.weight"]
    assert torch.equal(got, src.img_backbone.conv1.weight)  # frozen stem: exactly the loaded weights


def test_init_from_a_checkpoint_of_another_shape_is_refused(tmp_path, root):
    mcfg = dataclasses.replace(resolve_model_config(TrainConfig(model="vad_nano"))[0], embed_dims=32,
                               ffn_dims=64)
    export_driving_checkpoint(VAD(mcfg), mcfg, tmp_path / "init")
    cfg = resolve_config(args(root, tmp_path / "run", "--config", "vad_nano", "--init-from",
                              str(tmp_path / "init")))
    with pytest.raises(UserError, match="--init-from .* do not fit this run's model config"):
        train(cfg)
