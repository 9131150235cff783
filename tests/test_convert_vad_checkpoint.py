"""scripts.convert_vad_checkpoint: official key layout in, driving checkpoint out; bad checkpoints refused.

The official-format checkpoints here are built from this project's own model by the inverse key mapping
(no reference data needed); tests/test_vad_official_parity.py converts the real key list and checks the
forward."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint_formats import load_driving_checkpoint
from models.configs import get_config
from models.convert_official import convert_state_dict, converted_config, project_key
from models.vad import VAD
from scripts.convert_vad_checkpoint import main
from vlmad.errors import UserError

REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "vad_official"


def official_key(ours: str) -> str:
    """Inverse of models.convert_official.project_key."""
    if ours.startswith(("img_backbone.", "img_neck.")):
        return ours
    if ours.startswith(("motion.", "planning.")):
        ours = ours.split(".", 1)[1]
    ours = re.sub(r"^(lane_encoder\.layer_seq\.lmlp_\d+)\.linear\.", r"\1.mlp.0.", ours)
    ours = re.sub(r"^(lane_encoder\.layer_seq\.lmlp_\d+)\.norm\.", r"\1.mlp.1.", ours)
    return "pts_bbox_head." + ours


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = VAD(get_config("vad_tiny"))
    state = {official_key(k): v.clone() for k, v in model.state_dict().items()}
    lvl = "pts_bbox_head.transformer.level_embeds"
    state[lvl] = torch.cat([state[lvl], torch.randn(3, state[lvl].shape[1])])  # Tiny stores 4 rows
    state["pts_bbox_head.code_weights"] = torch.ones(10)
    state["pts_bbox_head.map_code_weights"] = torch.ones(4)
    state["img_backbone.bn1.num_batches_tracked"] = torch.tensor(0)
    return model, state


def save_mmcv(path: Path, state: dict, meta: dict | None = None) -> Path:
    meta = {"mmcv_version": "1.4.0", "CLASSES": ("car",), "epoch": np.int64(60)} if meta is None else meta
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}}}, path)
    return path


def test_key_mapping_is_a_bijection_on_our_keys(tiny):
    model, _ = tiny
    for k in model.state_dict():
        assert project_key(official_key(k)) == k
    assert project_key("pts_bbox_head.code_weights") is None
    assert project_key("img_backbone.layer1.0.bn1.num_batches_tracked") is None


def test_reference_key_lists_map_onto_our_presets():
    """Every official key of both released presets has a home, with the official shape."""
    if not (REF / "keys_vad_tiny.json").is_file():
        pytest.skip(f"official VAD reference data not found at {REF}")
    for preset in ("vad_tiny", "vad_base"):
        keys = json.loads((REF / f"keys_{preset}.json").read_text())
        own = VAD(get_config(preset)).state_dict()
        state = {k: torch.zeros(v["shape"], dtype=torch.int64 if v["dtype"] == "int64" else torch.float32)
                 for k, v in keys.items()}
        out, ignored = convert_state_dict(state, converted_config(preset))
        assert set(out) == set(own)
        assert len([k for k in ignored if k.endswith("num_batches_tracked")]) == 53
        assert ("pts_bbox_head.transformer.level_embeds[1:]" in ignored) == (preset == "vad_tiny")


def test_convert_round_trip_and_readers_accept_it(tiny, tmp_path, capsys):
    model, state = tiny
    src = save_mmcv(tmp_path / "VAD_tiny.pth", state)
    assert main(["--src", str(src), "--config", "vad_tiny", "--out", str(tmp_path / "ck")]) == 0
    printed = capsys.readouterr().out
    assert "pts_bbox_head.code_weights" in printed and "1 BatchNorm num_batches_tracked" in printed
    loaded, cfg, meta = load_driving_checkpoint(tmp_path / "ck")
    assert cfg.img_norm == "caffe" and cfg.bev_align == "official" and cfg.can_bus_from_motion is False
    assert meta["converted_from"] == "hustvl/VAD" and "meta" in meta["ignored_entries"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_tiny_weights_into_base_config_are_refused(tiny, tmp_path):
    _, state = tiny
    src = save_mmcv(tmp_path / "VAD_tiny.pth", state)
    pattern = r"does not fit config 'vad_base'.*has 3 encoder / 3 decoder layers.*missing"
    with pytest.raises(UserError, match=pattern):
        main(["--src", str(src), "--config", "vad_base", "--out", str(tmp_path / "ck")])
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("pts_bbox_head.ego_query.weight"), r"1 key\(s\) missing.*planning.ego_query.weight"),
    (lambda s: s.__setitem__("pts_bbox_head.extra_head.weight", torch.zeros(2)),
     r"1 unexpected key\(s\).*pts_bbox_head.extra_head.weight"),
    (lambda s: s.__setitem__("pts_bbox_head.cls_branches.0.6.weight", torch.zeros(9, 256)),
     r"shape mismatch.*cls_branches.0.6.weight \(9, 256\) vs \(10, 256\)"),
])
def test_mismatched_checkpoints_name_the_keys(tiny, tmp_path, edit, pattern):
    _, state = tiny
    bad = dict(state)
    edit(bad)
    src = save_mmcv(tmp_path / "bad.pth", bad)
    with pytest.raises(UserError, match=pattern):
        main(["--src", str(src), "--config", "vad_tiny", "--out", str(tmp_path / "ck")])


class _Payload:  # pickled by reference: weights_only must refuse to import it
    pass


def test_corrupt_and_unsafe_checkpoints_are_refused(tiny, tmp_path):
    _, state = tiny
    good = save_mmcv(tmp_path / "good.pth", {k: state[k] for k in list(state)[:5]})
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    args = ["--config", "vad_tiny", "--out", str(tmp_path / "ck")]
    with pytest.raises(UserError, match="corrupt or not a torch checkpoint"):
        main(["--src", str(cut), *args])
    unsafe = save_mmcv(tmp_path / "unsafe.pth", {"pts_bbox_head.x": torch.zeros(1)}, meta={"obj": _Payload()})
    with pytest.raises(UserError, match="refusing to run its code"):
        main(["--src", str(unsafe), *args])
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="not a VAD checkpoint"):
        main(["--src", str(other), *args])
    with pytest.raises(UserError, match="does not exist"):
        main(["--src", str(tmp_path / "none.pth"), *args])
    with pytest.raises(UserError, match="released VAD checkpoints"):
        main(["--src", str(good), "--config", "vad_nano", "--out", str(tmp_path / "ck")])
