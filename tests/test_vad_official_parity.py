"""The project's VAD reproduces the official hustvl/VAD forward, stage by stage.

Reference: ../shared/reference/vad_official (its README documents every file): the official model run with
seeded synthetic weights (`make_weights.py`, imported from there, never copied) on stored inputs. Here the
same weights go through this project's converter, the converted model runs on the same inputs, and every
stage is compared: backbone C5, FPN, BEV, detection, map, motion, planning (all 3 commands).

Tolerances (the reference README's run-to-run noise is <= 1e-5 relative): fp32 arrays within 1e-4 of the
array's max magnitude (at least 1e-4 absolute), fp16-stored arrays within fp16 rounding (1e-3 of the max
magnitude) plus that, plan positions within 1e-3 m.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.convert_official import convert_state_dict, converted_config
from models.features import normalize_images
from models.vad import VAD, BEVState
from vlmad.frames import invert_transform, make_transform, rot_z

REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "vad_official"
pytestmark = pytest.mark.skipif(not (REF / "make_weights.py").is_file(),
                                reason=f"official VAD reference data not found at {REF}")


def _make_weights():
    spec = importlib.util.spec_from_file_location("vad_make_weights", REF / "make_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_state(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The seeded official state dict of `preset` (vad_tiny / vad_base) as torch tensors."""
    keys = json.loads((REF / f"keys_{preset}.json").read_text())
    state = _make_weights().make_state(keys, seed)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def case_inputs(case: str) -> tuple[dict, dict, np.lib.npyio.NpzFile]:
    """(model inputs, extras, reference arrays) of a reference case, as the official model consumed it."""
    d = np.load(REF / f"{case}.npz")
    if case == "tiny_c":
        img_u8 = np.load(REF / "tiny_a.npz")["img_u8"]
    elif case == "base_a":
        img_u8 = np.load(REF / "tiny_a.npz")["img_u8"].repeat(2, axis=1).repeat(2, axis=2)
    else:
        img_u8 = d["img_u8"]
    img = normalize_images(torch.from_numpy(img_u8).permute(0, 3, 1, 2), "torchvision")
    h = int(d["img_pad_hw"][0])
    img = torch.nn.functional.pad(img, (0, 0, 0, h - img.shape[-2]))  # zero rows at the bottom
    inputs = {
        "img": img[None, None],
        "img_from_ego": torch.from_numpy(d["img_from_ego"]).float()[None, None],
        "can_bus": torch.from_numpy(d["can_bus"]).float()[None, None],
        "command": torch.tensor([int(d["command"])]),
        "ego_from_bev": torch.from_numpy(d["ego_from_lidar"]).float()[None],
    }
    state = None
    if case == "tiny_b":  # second frame: previous BEV = tiny_a's, ego moved 0.5 m and turned +2 deg
        prev = np.load(REF / "tiny_a.npz")["bev_embed"]
        state = BEVState(torch.from_numpy(prev)[None], torch.ones(1, dtype=torch.bool))
        cur_from_prev = invert_transform(make_transform(rot_z(np.radians(2.0)), [0.5, 0.0, 0.0]))
        inputs["cur_from_prev"] = torch.from_numpy(cur_from_prev).float()[None, None]
        inputs["prev_valid"] = torch.ones(1, 1, dtype=torch.bool)
    return inputs, {"state": state, "img_sum": float(img.double().sum())}, d


def run_case(model: VAD, case: str) -> tuple[dict, dict, dict]:
    """One forward, capturing the backbone and FPN outputs on the way."""
    inputs, extra, ref = case_inputs(case)
    seen: dict = {}
    hooks = [model.img_backbone.register_forward_hook(lambda m, i, o: seen.setdefault("backbone", o)),
             model.img_neck.register_forward_hook(lambda m, i, o: seen.setdefault("fpn", o))]
    try:
        with torch.inference_mode():
            out, _ = model(inputs, extra["state"])
    finally:
        for h in hooks:
            h.remove()
    out.update(seen)
    return out, extra, ref


def close(name: str, got, want, fp16: bool = False) -> None:
    got = np.asarray(got.detach().float() if torch.is_tensor(got) else got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1.0)
    tol = 1e-4 * scale + (1e-3 * float(np.abs(want).max()) if fp16 else 0.0)
    err = float(np.abs(got - want).max())
    assert err <= tol, f"{name}: max abs diff {err:.3g} > {tol:.3g} (max |ref| {np.abs(want).max():.3g})"


def check_heads(out: dict, ref) -> None:
    """Detection, map, motion and planning against the official last decoder layer."""
    close("det logits", out["det_logits"][0], ref["all_cls_scores"][-1])
    close("det box code", out["det_code_bev"][0], ref["all_bbox_preds"][-1])
    close("map logits", out["map_logits"][0], ref["map_all_cls_scores"][-1])
    close("map points", out["map_pts_norm"][0], ref["map_all_pts_preds"][-1])
    a, m = out["motion_offsets_bev"].shape[1:3]
    close("motion offsets", out["motion_offsets_bev"][0].reshape(a, m, -1), ref["all_traj_preds"][-1])
    close("motion mode logits", out["motion_mode_logits"][0], ref["all_traj_cls_scores"][-1])
    close("plan offsets", out["plan_offsets_bev"][0], ref["ego_fut_preds"])
    got = out["plan_offsets_bev"][0].double().cumsum(-2).numpy()
    want = np.cumsum(ref["ego_fut_preds"].astype(np.float64), axis=-2)
    assert np.abs(got - want).max() < 1e-3, "plan positions (all 3 commands) off by >= 1 mm"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Official seed-0 VAD-Tiny weights -> the converter CLI -> the driving checkpoint loader."""
    from models.checkpoint_formats import load_driving_checkpoint
    from scripts.convert_vad_checkpoint import main

    tmp = tmp_path_factory.mktemp("vad_tiny")
    src = tmp / "VAD_tiny.pth"
    torch.save({"meta": {"mmcv_version": "1.4.0", "CLASSES": ("car", "truck")},
                "state_dict": official_state("vad_tiny")}, src)
    assert main(["--src", str(src), "--config", "vad_tiny", "--out", str(tmp / "ckpt"),
                 "--img-norm", "torchvision"]) == 0
    src.unlink()
    model, cfg, meta = load_driving_checkpoint(tmp / "ckpt")
    assert cfg.bev_align == "official" and not cfg.can_bus_from_motion
    return model


@pytest.fixture(scope="module")
def tiny_a(tiny_model):
    return run_case(tiny_model, "tiny_a")


def test_tiny_first_frame_matches_every_stage(tiny_a):
    out, extra, ref = tiny_a
    want = float(ref["normalised_img_sum"])
    assert abs(extra["img_sum"] - want) < 1e-6 * abs(want)  # the input normalisation and padding
    close("backbone C5 (camera 0)", out["backbone"][-1][0], ref["backbone_0_fp16"], fp16=True)
    close("FPN", out["fpn"][0], ref["fpn_0_fp16"], fp16=True)
    close("BEV", out["bev"][0], ref["bev_embed"])
    check_heads(out, ref)


def test_tiny_second_frame_official_temporal_alignment(tiny_model):
    out, _, ref = run_case(tiny_model, "tiny_b")
    close("FPN", out["fpn"][0], ref["fpn_0_fp16"], fp16=True)
    close("BEV (previous BEV rotated + shifted as VAD)", out["bev"][0], ref["bev_embed"])
    check_heads(out, ref)


def test_tiny_without_confident_lanes(tiny_model, tiny_a):
    """Case c: the last map classification bias at -4 -> no lane above map_thresh (pad-only motion path)."""
    ref = np.load(REF / "tiny_c.npz")
    state = official_state("vad_tiny")
    state[str(ref["override_key"])][:] = float(ref["override_value"])
    cfg = converted_config("vad_tiny", img_norm="torchvision")
    sd, _ = convert_state_dict(state, cfg)
    model = tiny_model
    key = "map_cls_branches.2.6.bias"
    saved = model.state_dict()[key].clone()
    try:
        with torch.no_grad():
            model.get_parameter(key).copy_(sd[key])
        with torch.inference_mode():  # case c's BEV equals case a's bit for bit (reference README)
            out = model.decode(tiny_a[0]["bev"], case_inputs("tiny_c")[0])
    finally:
        with torch.no_grad():
            model.get_parameter(key).copy_(saved)
    assert (out["map_logits"].sigmoid().max(-1)[0] <= 0.5).all()  # the path under test really runs
    check_heads(out, ref)


def test_base_first_frame_matches_every_stage():
    cfg = converted_config("vad_base", img_norm="torchvision")
    sd, ignored = convert_state_dict(official_state("vad_base"), cfg)
    assert "pts_bbox_head.code_weights" in ignored and len(ignored) == 2 + 53
    model = VAD(cfg)
    model.load_state_dict(sd)
    out, extra, ref = run_case(model.eval(), "base_a")
    want = float(ref["normalised_img_sum"])
    assert abs(extra["img_sum"] - want) < 1e-6 * abs(want)  # the input normalisation and padding
    fpn = out["fpn"]
    close("FPN level 0", fpn[0][0, :, ::4, ::4], ref["fpn_0_cam0_sub4_fp16"], fp16=True)
    close("FPN level 1", fpn[1][0, :, ::2, ::2], ref["fpn_1_cam0_sub2_fp16"], fp16=True)
    close("FPN level 2", fpn[2][0], ref["fpn_2_cam0_fp16"], fp16=True)
    close("FPN extra level 3 (no ReLU before it)", fpn[3], ref["fpn_3_fp16"], fp16=True)
    bev = out["bev"][0].view(cfg.bev_h, cfg.bev_w, -1)[::2, ::2]
    close("BEV (every 2nd cell)", bev, ref["bev_embed_sub2_fp16"], fp16=True)
    check_heads(out, ref)
