"""Deformable attention against a slow reference, temporal BEV alignment, pillar projection."""

from __future__ import annotations

import math

import numpy as np
import torch

from models.bev_encoder import align_prev_bev, bev_cell_centres, pillar_points, project_pillars
from models.deform_attn import MSDeformAttn, ms_deform_attn_core
from vlmad.frames import relative_motion, se2_pose
from vlmad.rig import CARLA_RIG


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Explicit bilinear sample of img (C, H, W) at normalised (x, y), align_corners=False, zero outside."""
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(c, dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
            if 0 <= xx < w and 0 <= yy < h:
                out += wgt * img[:, yy, xx]
    return out


def _reference(value, shapes, loc, attn):
    b, _, heads, hd = value.shape
    q, points = loc.shape[1], loc.shape[4]
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = torch.zeros(b, q, heads * hd, dtype=value.dtype)
    for bi in range(b):
        for qi in range(q):
            for hi in range(heads):
                acc = torch.zeros(hd, dtype=value.dtype)
                for li, (h, w) in enumerate(shapes):
                    img = value[bi, starts[li] : starts[li + 1], hi].T.reshape(hd, h, w)
                    for pi in range(points):
                        x, y = loc[bi, qi, hi, li, pi].tolist()
                        acc += attn[bi, qi, hi, li, pi] * _bilinear(img, x, y)
                out[bi, qi, hi * hd : (hi + 1) * hd] = acc
    return out


def test_core_matches_explicit_bilinear_reference():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    b, q, heads, hd, points = 2, 3, 2, 4, 3
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, hd, generator=g, dtype=torch.float64)
    # locations partly outside [0, 1] to exercise the zero padding
    loc = torch.rand(b, q, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    attn = torch.rand(b, q, heads, len(shapes), points, generator=g, dtype=torch.float64)
    got = ms_deform_attn_core(value, shapes, loc, attn)
    ref = _reference(value, shapes, loc, attn)
    assert torch.allclose(got, ref, atol=1e-10)


def test_module_with_anchors_and_queue_is_consistent_with_core():
    """The module's offset normalisation and anchor split, recomputed by hand, feed the same core."""
    torch.manual_seed(0)
    m = MSDeformAttn(8, num_heads=2, num_levels=2, num_points=4, num_anchors=2, output_proj=False).double()
    torch.nn.init.normal_(m.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(m.attention_weights.weight, std=0.5)
    shapes = [(4, 6), (2, 3)]
    q = torch.randn(1, 5, 8, dtype=torch.float64)
    v = torch.randn(1, 24 + 6, 8, dtype=torch.float64)
    ref = torch.rand(1, 5, 2, 2, dtype=torch.float64)
    out = m(q, v, ref, shapes)
    off = m.sampling_offsets(q).view(1, 5, 2, 2, 2, 2, 2)  # (B, Q, heads, L, P/anc, anc, 2)
    norm = torch.tensor([[6.0, 4.0], [3.0, 2.0]], dtype=torch.float64)
    loc = ref[:, :, None, None, None] + off / norm[None, None, None, :, None, None]
    attn = m.attention_weights(q).view(1, 5, 2, 8).softmax(-1).view(1, 5, 2, 2, 4)
    val = m.value_proj(v).view(1, 30, 2, 4)
    expected = _reference(val, shapes, loc.reshape(1, 5, 2, 2, 4, 2), attn)
    assert torch.allclose(out, expected, atol=1e-9)


def test_temporal_alignment_moves_content_with_ego_motion():
    """A feature at a world position stays at that world position after the ego drives and turns."""
    bev_h, bev_w = 30, 60  # 1 m cells over x in [-30, 30], y in [-15, 15]
    pc = (-30.0, -15.0, -1.0, 30.0, 15.0, 3.0)
    _, metric = bev_cell_centres(bev_h, bev_w, pc)
    target = torch.tensor([5.5, 2.5])  # a cell centre in the previous ego frame
    prev = torch.zeros(1, bev_h * bev_w, 2)
    prev[0, (metric - target).norm(dim=-1).argmin(), 0] = 1.0
    prev[..., 1] = 1.0  # constant channel: shows where the previous grid covers the new one
    for dx, dy, yaw in [(4.0, 0.0, 0.0), (3.0, -2.0, 0.0), (2.0, 1.0, math.pi / 2), (0.0, 0.0, -math.pi / 2)]:
        world_prev, world_cur = se2_pose(0, 0, 0), se2_pose(dx, dy, yaw)
        cur_from_prev = torch.as_tensor(relative_motion(world_prev, world_cur), dtype=torch.float32)[None]
        out = align_prev_bev(prev, cur_from_prev, bev_h, bev_w, pc)
        expected = cur_from_prev[0, :2, :2] @ target + cur_from_prev[0, :2, 3]
        peak = metric[out[0, :, 0].argmax()]
        assert torch.allclose(peak, expected, atol=1e-4), (dx, dy, yaw, peak, expected)
        assert abs(float(out[0, :, 0].max()) - 1.0) < 1e-5
        # cells that the previous grid did not cover are zero
        p = metric @ torch.linalg.inv(cur_from_prev[0])[:2, :2].T + torch.linalg.inv(cur_from_prev[0])[:2, 3]
        outside = (p[:, 0].abs() > 30.5) | (p[:, 1].abs() > 15.5)
        assert torch.all(out[0, outside, 1] == 0)
    identity = align_prev_bev(prev, torch.eye(4)[None], bev_h, bev_w, pc)
    assert torch.allclose(identity, prev, atol=1e-6)


def test_pillars_project_into_the_right_cameras():
    """A pillar 10 m ahead lands in the front camera's centre column; one 10 m behind only in the back."""
    pc = (-30.0, -15.0, -0.2, 30.0, 15.0, 3.8)
    pts = pillar_points(3, 61, pc, 4)  # cells 1 m wide along x, centre row at y = 0
    m = torch.as_tensor(CARLA_RIG.img_from_ego(0.1), dtype=torch.float32)[None]
    uv, mask = project_pillars(pts, m, (96, 160))
    _, metric = bev_cell_centres(3, 61, pc)
    ahead = int(((metric - torch.tensor([10.0, 0.0])).norm(dim=-1)).argmin())
    behind = int(((metric - torch.tensor([-10.0, 0.0])).norm(dim=-1)).argmin())
    front, back = 0, 3  # CAMERA_NAMES order
    assert mask[0, front, ahead].all() and not mask[0, back, ahead].any()
    assert abs(float(uv[0, front, ahead, :, 0].mean()) * 160 - 80.0) < 1.0  # centre column
    assert mask[0, back, behind].any() and not mask[0, front, behind].any()
    # higher pillar points appear higher in the image (smaller v)
    v = uv[0, front, ahead, :, 1]
    assert torch.all(v[1:] < v[:-1])


def test_packed_spatial_cross_attention_matches_a_per_camera_loop():
    """All cameras packed and stacked in one grid_sample == each camera on its own with zero padding.
    The queries enter without a positional encoding (VAD's SCA gets query_pos=None)."""
    from models.bev_encoder import SpatialCrossAttention, pack_visible

    torch.manual_seed(0)
    b, ncam, hw, d, c = 2, 3, 40, 2, 16
    shapes = [(6, 9), (3, 5)]
    sca = SpatialCrossAttention(
        c, num_heads=2, num_levels=2, num_points=4, num_heights=d, dropout=0.0
    ).double()
    torch.nn.init.normal_(sca.deformable_attention.sampling_offsets.weight, std=2.0)  # many samples off-image
    torch.nn.init.normal_(sca.deformable_attention.attention_weights.weight, std=0.5)
    query = torch.randn(b, hw, c, dtype=torch.float64)
    value = torch.randn(b * ncam, sum(h * w for h, w in shapes), c, dtype=torch.float64)
    ref = torch.rand(b, ncam, hw, d, 2, dtype=torch.float64) * 1.2 - 0.1
    mask = torch.rand(b, ncam, hw, d) < 0.35
    mask[1] &= torch.rand(ncam, hw, d) < 0.5  # the two samples see different numbers of pairs
    got = sca(query, value, shapes, pack_visible(ref, mask))

    slots = torch.zeros_like(query)
    count = torch.zeros(b, hw, dtype=torch.float64)
    da = sca.deformable_attention
    for bi in range(b):
        for k in range(ncam):
            idx = mask[bi, k].any(-1).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            q = query[bi, idx][None]
            out = da(q, value[bi * ncam + k][None], ref[bi, k, idx][None], shapes)
            slots[bi, idx] += out[0]
            count[bi, idx] += 1
    expected = query + sca.output_proj(slots / count.clamp(min=1)[..., None])
    # the sampling core runs in fp32 whatever the dtype: both paths agree to fp32 rounding
    assert (got - expected).abs().max() < 1e-5, (got - expected).abs().max()


def test_official_history_rotation_is_torchvision_rotate():
    """VAD's `rotate(prev_bev, angle, center)`: 0 deg is the identity; about the image centre, +90 deg is
    a counter-clockwise quarter turn of the (row, column) image (torch.rot90 from rows towards columns);
    about VAD's default pixel (100, 100) a 100 x 100 grid turns about its far corner."""
    from models.bev_encoder import rotate_prev_bev_official

    h = w = 8
    prev = torch.randn(1, h * w, 3)
    same = rotate_prev_bev_official(prev, torch.tensor([0.0]), h, w, center=(4.0, 4.0))
    assert torch.equal(same, prev)
    got = rotate_prev_bev_official(prev, torch.tensor([90.0]), h, w, center=(4.0, 4.0))
    img = prev[0].T.reshape(3, h, w)
    want = torch.rot90(img, 1, dims=(-2, -1)).reshape(3, -1).T[None]
    assert torch.allclose(got, want)
    big = torch.zeros(1, 100 * 100, 1)
    big[0, 99 * 100 + 99] = 1.0  # the cell next to pixel (100, 100) stays put under a small turn
    turned = rotate_prev_bev_official(big, torch.tensor([2.0]), 100, 100)
    assert turned[0, 99 * 100 + 99, 0] == 1.0 and turned[0, 0, 0] == 0.0


def test_bev_align_switch_changes_only_frames_with_history():
    import dataclasses

    from models.configs import get_config
    from models.features import feature_inputs
    from models.vad import VAD
    from synthetic.batch import make_dummy_batch

    outs = {}
    for mode in ("official", "exact"):
        cfg = dataclasses.replace(get_config("vad_nano"), bev_align=mode)
        torch.manual_seed(0)
        model = VAD(cfg).eval()
        inputs = feature_inputs(make_dummy_batch(cfg, batch_size=1, queue_length=2))
        first = {k: (v[:, :1] if k in ("img", "img_from_ego", "can_bus", "cur_from_prev", "prev_valid")
                     else v) for k, v in inputs.items()}
        with torch.no_grad():
            out1, state = model(first)
            out2, _ = model(inputs)
        outs[mode] = (out1["bev"], out2["bev"])
    assert torch.equal(outs["official"][0], outs["exact"][0])  # no history: identical
    assert not torch.allclose(outs["official"][1], outs["exact"][1], atol=1e-4)
