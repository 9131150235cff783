"""scripts.probe_tl: the traffic-light branch trained alone on offline-world front images."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from nusc.dataset import traffic_light_label
from nusc.infos import build_or_load_infos
from scripts import collect as collect_cli
from scripts import probe_tl
from vlmad.errors import UserError


def test_class_entropy_is_the_loss_of_the_class_shares():
    labels = torch.tensor([0, 0, 0, 2])  # shares 3/4, 1/4
    assert probe_tl.class_entropy(labels) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert probe_tl.class_entropy(torch.tensor([3, 3])) == 0.0


@pytest.fixture(scope="module")
def world_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "ds"
    assert collect_cli.main(["--town", "VlmadGrid1x1", "--drives", "2", "--frames", "4", "--seed", "5",
                             "--out", str(out), "--image-size", "160x90", "--set",
                             "traffic.num_vehicles=2", "traffic.num_pedestrians=0"]) == 0
    return out


def test_probe_reports_held_out_scenes_against_the_prior(world_data, tmp_path):
    res_path = tmp_path / "probe.json"
    probe_tl.main(["--dataroot", str(world_data), "--split", "scenes", "--val-fraction", "0.5",
                   "--steps", "3", "--out", str(res_path), "--quiet"])
    res = json.loads(res_path.read_text())
    infos = build_or_load_infos(world_data, "v1.0-mini", progress=False)
    scenes = sorted({r["scene_name"] for r in infos})
    assert res["train_samples"] + res["heldout_samples"] == len(infos) == 8
    assert res["image_hw"] == [96, 160]  # what vad_nano is fed (160 x 90 padded to a multiple of 32)
    # the prior: always the training split's most frequent class, scored on the held-out scene
    held = [traffic_light_label(r) for r in infos if r["scene_name"] != scenes[0]]
    train = [traffic_light_label(r) for r in infos if r["scene_name"] == scenes[0]]
    if res["heldout_samples"] != len(held):  # the split holds out the other scene
        held, train = train, held
    majority = Counter(train).most_common(1)[0][0]
    assert res["prior_accuracy"] == pytest.approx(sum(h == majority for h in held) / len(held), abs=1e-3)
    assert res["class_share_entropy"] == pytest.approx(probe_tl.class_entropy(torch.tensor(train)), abs=1e-3)
    assert 0.0 <= res["heldout_accuracy"] <= 1.0 and math.isfinite(res["train_loss_last_10pct"])


def test_data_without_light_labels_is_one_clear_error(world_data, monkeypatch):
    infos = build_or_load_infos(world_data, "v1.0-mini", progress=False)
    for r in infos:
        r["privileged"] = None  # what real nuScenes records look like
    monkeypatch.setattr(probe_tl, "build_or_load_infos", lambda *a, **k: infos)
    with pytest.raises(UserError, match="traffic-light label"):
        probe_tl.main(["--dataroot", str(world_data), "--steps", "1", "--quiet"])
