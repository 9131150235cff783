"""The torch dataset: shapes, normalisation, projection matrices, temporal queue, feature/target split."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from models.features import RECORD_KEYS
from nusc.dataset import (
    DatasetConfig,
    NuScenesVADDataset,
    collate,
    image_sizes,
)
from nusc.infos import build_or_load_infos
from synthetic.nuscenes import make_synthetic_dataset
from vlmad.frames import project_points, relative_motion
from vlmad.rig import CAMERA_NAMES, NUSCENES_RIG

SIZE = (400, 225)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("d") / "ds", keyframes_per_scene=8, image_size=SIZE)
    return root, build_or_load_infos(root, "v1.0-mini", progress=False)


def test_shapes_and_collate(data):
    root, recs = data
    ds = NuScenesVADDataset(recs, root, DatasetConfig(queue_length=3, img_scale=0.4))
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert image_sizes(1600, 900, DatasetConfig(img_scale=0.4)) == (640, 360, 640, 384)  # VAD-Tiny
    assert image_sizes(1600, 900, DatasetConfig(img_scale=0.8)) == (1280, 720, 1280, 736)  # VAD-Base
    # VAD rounds the resized size down (int(side x scale)) before padding: 705 x 0.5 = 352.5 -> 352 -> 352
    assert image_sizes(1600, 705, DatasetConfig(img_scale=0.5)) == (800, 352, 800, 352)
    assert batch["img"].shape == (2, 3, 6, 3, 96, 160) and batch["img"].dtype == torch.float32
    assert batch["img_from_ego"].shape == (2, 3, 6, 4, 4)
    assert batch["can_bus"].shape == (2, 3, 18) and batch["cur_from_prev"].shape == (2, 3, 4, 4)
    assert batch["prev_valid"].shape == (2, 3) and batch["prev_valid"].dtype == torch.bool
    assert batch["command"].shape == (2,) and batch["command"].dtype == torch.long
    assert batch["ego_his"].shape == (2, 2, 2) and batch["ego_fut"].shape == (2, 6, 2)
    assert batch["ego_fut_mask"].shape == (2, 6) and len(batch["agents"]) == len(batch["map"]) == 2
    assert batch["token"] == [recs[0]["token"], recs[1]["token"]]
    ag = batch["agents"][1]
    n = len(ag["labels"])
    assert ag["boxes"].shape == (n, 7) and ag["fut"].shape == (n, 6, 2) and ag["fut_mask"].shape == (n, 6)
    assert batch["map"][1]["pts"].shape[1:] == (20, 2)
    assert torch.all(ag["boxes"][:, 0].abs() <= 30) and torch.all(ag["boxes"][:, 1].abs() <= 15)


@pytest.mark.parametrize("mode", ["torchvision", "caffe"])
def test_normalisation_and_padding(data, mode):
    root, recs = data
    cfg = DatasetConfig(queue_length=1, img_scale=0.4, normalisation=mode)
    item = NuScenesVADDataset(recs, root, cfg, with_targets=False)[2]
    cam = recs[2]["cams"]["CAM_FRONT_LEFT"]
    bgr = cv2.resize(cv2.imread(str(root / cam["path"])), (160, 90), interpolation=cv2.INTER_LINEAR).astype(
        np.float32
    )
    got = item["img"][0, CAMERA_NAMES.index("CAM_FRONT_LEFT")].numpy()
    # The conventions as literals (docs/models.md, docs/data_contract.md), not the module's constants, so a
    # reversed mean or a swapped std in the code fails here.
    if mode == "torchvision":  # RGB, (x - ImageNet mean x 255) / (ImageNet std x 255)
        exp = (bgr[..., ::-1] - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    else:  # caffe (released VAD weights): BGR, x - mean, std 1
        exp = bgr - np.array([103.53, 116.28, 123.675])
    assert np.allclose(got[:, :90, :160].transpose(1, 2, 0), exp, atol=1e-4)
    assert np.all(got[:, 90:, :] == 0)  # bottom padding to 96


def test_img_from_ego_follows_the_rig_and_hits_the_lead_car(data):
    """Projection = rig calibration scaled by the resize; the lead car's centre lands on red pixels."""
    root, recs = data
    cfg = DatasetConfig(queue_length=1, img_scale=0.4, normalisation="torchvision")
    ds = NuScenesVADDataset(recs, root, cfg)
    rig = NUSCENES_RIG.with_image_size(*SIZE)
    hits = 0
    for i in (1, 4, 9):
        item = ds[i]
        for c, name in enumerate(CAMERA_NAMES):
            assert np.allclose(
                item["img_from_ego"][0, c].numpy(), rig.camera(name).img_from_ego(0.4), rtol=1e-4, atol=1e-3
            )
        car = [
            b
            for b, lab in zip(item["agents"]["boxes"].numpy(), item["agents"]["labels"].numpy())
            if lab == 0 and 5 < b[0] < 30 and abs(b[1]) < 1.0
        ]
        if not car:
            continue
        uv, _, ok = project_points(item["img_from_ego"][0, 0].double().numpy(), car[0][None, :3])
        assert ok[0]
        u, v = (int(round(x)) for x in uv[0])
        rgb = item["img"][0, 0, :, v, u].numpy() * np.array([58.395, 57.12, 57.375]) + np.array(
            [123.675, 116.28, 103.53]
        )  # undo torchvision normalisation (RGB, ImageNet mean / std x 255)
        assert rgb[0] > 150 and rgb[1] < 100 and rgb[2] < 100, rgb  # the renderer paints cars red
        hits += 1
    assert hits >= 2


def test_temporal_queue(data):
    root, recs = data
    ds = NuScenesVADDataset(recs, root, DatasetConfig(queue_length=3), with_targets=False)
    start = ds[0]  # first keyframe of scene-0001: the frame is repeated, no previous BEV anywhere
    assert not start["prev_valid"].any()
    assert torch.allclose(start["cur_from_prev"], torch.eye(4).expand(3, 4, 4))
    assert torch.all(start["can_bus"][:, :3] == 0) and torch.all(start["can_bus"][:, 17] == 0)
    assert ds.queue_indices(1) == ([0, 0, 1], [False, False, True])
    assert ds.queue_indices(5) == ([3, 4, 5], [False, True, True])
    first_of_scene2 = next(i for i, r in enumerate(recs) if r["scene_name"] == "scene-0002")
    assert ds.queue_indices(first_of_scene2 + 1)[0] == [first_of_scene2] * 2 + [first_of_scene2 + 1]
    item = ds[5]
    exp = relative_motion(recs[4]["world_from_ego"], recs[5]["world_from_ego"])
    assert np.allclose(item["cur_from_prev"][2].numpy(), exp, atol=1e-5)
    # BEVFormer's queue form of the CAN bus: translation and yaw (deg) relative to the previous frame
    assert np.allclose(
        item["can_bus"][2, :3].numpy(), recs[5]["can_bus"][:3] - recs[4]["can_bus"][:3], atol=1e-3
    )
    assert item["can_bus"][2, 17].item() == pytest.approx(
        recs[5]["can_bus"][17] - recs[4]["can_bus"][17], abs=1e-3
    )
    assert np.allclose(item["can_bus"][2, 3:17].numpy(), recs[5]["can_bus"][3:17], atol=1e-4)
    assert torch.all(item["can_bus"][0, :3] == 0)


def test_features_never_see_ground_truth(data):
    root, recs = data
    ds = NuScenesVADDataset(recs, root, DatasetConfig(queue_length=2), with_targets=False)
    assert all(set(v) <= set(RECORD_KEYS) for v in ds.feature_view)
    assert not {"ego_fut", "ego_fut_mask", "agents", "map", "privileged"} & set(RECORD_KEYS)
    item = ds[3]
    assert not {"ego_fut", "agents", "map"} & set(item)
    # changing ground truth leaves the features bit-identical
    poisoned = [{**r, "ego_fut": r["ego_fut"] + 100.0, "agents": {}, "map": []} for r in recs]
    item2 = NuScenesVADDataset(poisoned, root, DatasetConfig(queue_length=2), with_targets=False)[3]
    for k, v in item.items():
        assert torch.equal(v, item2[k]) if isinstance(v, torch.Tensor) else v == item2[k]


def test_fast_decode_is_close_to_full_decode(data):
    root, recs = data
    a = NuScenesVADDataset(recs, root, DatasetConfig(queue_length=1), with_targets=False)[0]["img"]
    b = NuScenesVADDataset(recs, root, DatasetConfig(queue_length=1, fast_decode=True), with_targets=False)[
        0
    ]["img"]
    assert a.shape == b.shape and (a - b).abs().mean() < 0.1
