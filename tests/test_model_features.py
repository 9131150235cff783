"""The model-input contract (models.features): one resize rule, one normalisation table, one CAN-bus form,
and the dataset, the agent and the model config all follow it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agent.sensing import ImageInput
from models.configs import get_config
from models.features import (
    INPUT_KEYS,
    can_bus_delta,
    can_bus_from_motion,
    feature_inputs,
    normalise_planes_into,
    normalize_images,
    padded_size,
    resized_size,
)
from nusc.dataset import DatasetConfig, image_sizes
from synthetic.batch import make_dummy_batch
from vlmad.errors import UserError
from vlmad.rig import CARLA_RIG


@pytest.mark.parametrize(("raw", "scale", "resized", "padded_hw"), [
    ((1600, 900), 0.8, (1280, 720), (736, 1280)),  # VAD-Base
    ((1600, 900), 0.4, (640, 360), (384, 640)),  # VAD-Tiny
    ((1600, 705), 0.5, (800, 352), (352, 800)),  # 352.5 rounds down, as VAD's int(): 352 is a multiple of 32
    ((1001, 601), 0.5, (500, 300), (320, 512)),
])
def test_one_resize_rule_for_model_dataset_and_agent(raw, scale, resized, padded_hw):
    """VAD sizes int(side x scale), then pads to 32: the model config's img_hw, the dataset's image sizes
    and the agent's resize all give that (they used round / int(x + 0.5) before: 352 vs 353 -> 384)."""
    assert resized_size(*raw, scale) == resized
    assert padded_size(*resized, 32) == padded_hw[::-1]
    cfg = dataclasses.replace(get_config("vad_nano"), img_size_raw=raw, img_scale=scale)
    assert cfg.img_hw == padded_hw
    assert image_sizes(*raw, DatasetConfig(img_scale=scale)) == (*resized, *padded_hw[::-1])
    images = ImageInput(cfg, CARLA_RIG.with_image_size(*raw))
    assert images.size == resized and images.padded_hw == padded_hw


def test_resize_rule_absorbs_float_noise_of_a_derived_scale():
    # training.data derives the dataset's scale as img_size_raw x img_scale / width: 154 x (160 / 154) is
    # 159.99999999999997 in floats; plain int() would lose a pixel against the agent's 1600 x 0.1 = 160
    scale = 1600 * 0.1 / 154
    assert int(154 * scale) == 159  # the noise this guards against
    assert resized_size(154, 87, scale) == (160, 90) == resized_size(1600, 900, 0.1)


def _bgr(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("norm", ["caffe", "torchvision"])
def test_both_normalisations_match_the_published_conventions(norm):
    """Expected values as literals (docs/models.md), so a reversed mean or a swapped std fails; the
    dataset's per-plane path and the agent's tensor path agree to float32 rounding."""
    bgr = _bgr()
    x = bgr.astype(np.float64)
    if norm == "caffe":  # released VAD weights: BGR order, mean only
        exp = x - np.array([103.53, 116.28, 123.675])
    else:  # RGB order, ImageNet mean / std x 255
        exp = (x[..., ::-1] - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    planes = np.zeros((3, 5, 7), np.float32)
    normalise_planes_into(bgr, planes, norm)
    np.testing.assert_allclose(planes.transpose(1, 2, 0), exp, atol=1e-4)
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1)
    np.testing.assert_allclose(normalize_images(rgb, norm).numpy(), planes, atol=1e-5)


def test_unknown_normalisation_is_a_user_error():
    with pytest.raises(UserError, match="imagenet"):
        normalise_planes_into(_bgr(), np.zeros((3, 5, 7), np.float32), "imagenet")
    with pytest.raises(UserError, match="valid"):
        normalize_images(torch.zeros(3, 2, 2), "imagenet")


def test_can_bus_queue_form():
    bus = np.arange(18, dtype=np.float64) + 10.0
    prev = np.arange(18, dtype=np.float64)
    d = can_bus_delta(bus, prev)
    assert d[:3].tolist() == [10.0, 10.0, 10.0] and d[17] == 10.0  # relative to the previous frame
    assert d[3:17].tolist() == bus[3:17].tolist()  # the rest absolute
    first = can_bus_delta(bus, None)
    assert first[:3].tolist() == [0.0, 0.0, 0.0] and first[17] == 0.0 and first[5] == 15.0
    assert bus[0] == 10.0  # the input is not modified


def test_can_bus_from_motion_replaces_translation_and_heading():
    bus = torch.arange(36, dtype=torch.float32).view(2, 18)
    prev_from_cur = torch.eye(4).repeat(2, 1, 1)
    prev_from_cur[:, :3, 3] = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = can_bus_from_motion(bus, prev_from_cur, torch.tensor([7.0, 8.0]))
    assert out[:, :3].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and out[:, 17].tolist() == [7.0, 8.0]
    assert torch.equal(out[:, 3:17], bus[:, 3:17])


def test_feature_inputs_hold_model_inputs_only():
    batch = make_dummy_batch(get_config("vad_nano"))
    inputs = feature_inputs(batch)
    assert set(inputs) == set(INPUT_KEYS) & set(batch) and "img" in inputs and "goal_point" in inputs
    assert not {"ego_fut", "ego_fut_mask", "agents", "map", "tl_label", "token"} & set(inputs)
