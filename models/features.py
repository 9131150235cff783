"""The model-input contract: what VAD sees, built the same way from a dataset record or a live sensor tick.

In the spirit of navsim's feature builders, one module owns every rule that turns a camera frame and the
ego state into model inputs, and both producers call it: `nusc.dataset` (records on disk -> training and
evaluation batches) and `agent.sensing` (leaderboard `input_data` -> one driving frame). `models.vad`
reads the same CAN-bus layout. Nothing here sees ground truth.

- Keys: `INPUT_KEYS` (what `VAD.forward` reads; `feature_inputs` keeps those of a batch) and
  `RECORD_KEYS` (the record fields a feature may be built from; ego_fut, agents, map, ... are ground truth).
- Image size: `resized_size` (VAD's rule, see there) and `padded_size` (zero padding at the bottom / right
  to a multiple of `pad_divisor`, mmdet's PadMultiViewImage); `resize_image` (bilinear, cv2 as mmcv).
- Normalisation by name (`IMG_NORMS`): "caffe" for the released VAD weights (BGR, mean only), "torchvision"
  (RGB, ImageNet mean / std); `normalize_images` on tensors (the agent, on its device) and
  `normalise_planes_into` on uint8 BGR arrays (the dataset's workers; per-plane, ~25x faster on the CPU).
- CAN bus (18 values, docs/data_contract.md): `can_bus_delta` gives BEVFormer's queue form ([0:3] and [17]
  relative to the previous frame) and `can_bus_from_motion` the model's overwrite of those entries with the
  motion in `cur_from_prev` (`VADConfig.can_bus_from_motion`).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from vlmad.errors import UserError

# What VAD.forward reads (models/vad.py module docstring; docs/data_contract.md "Model batch").
INPUT_KEYS = (
    "img",
    "img_from_ego",
    "can_bus",
    "cur_from_prev",
    "prev_valid",
    "command",
    "ego_his",
    "goal_point",
    "ego_from_bev",
)

# Record fields the feature builder may read (nusc.dataset hands it a copy holding only these).
RECORD_KEYS = (
    "token",
    "scene_token",
    "scene_name",
    "timestamp",
    "prev",
    "frame_idx",
    "world_from_ego",
    "ego_from_lidar",
    "cams",
    "can_bus",
    "can_bus_derived",
    "command",
    "ego_his",
    "ego_his_mask",
    "goal_point",  # the route's target point (data recorded from a route only; an input at drive time)
)


def feature_inputs(batch: dict) -> dict:
    """The feature part of a batch (what `VAD.forward` sees; never ground truth)."""
    return {k: batch[k] for k in INPUT_KEYS if k in batch}


# ----------------------------------------------------------------------------------------------------
# Image size
# ----------------------------------------------------------------------------------------------------
def resized_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(w, h) of a width x height image resized by `scale`, rounded down as VAD does.

    VAD's RandomScaleImageMultiViewImage sizes the image `int(side * scale)` (truncation) before padding to a
    multiple of 32. The 1e-9 only absorbs float noise in a derived scale (training.data computes the
    dataset's scale as a ratio, e.g. 1600 * 0.4 / 800): a product that misses an integer by an ulp is that
    integer, as it would be in exact arithmetic; a real fractional part (>= 1 / image size) is untouched."""
    return int(width * scale + 1e-9), int(height * scale + 1e-9)


def padded_size(width: int, height: int, divisor: int) -> tuple[int, int]:
    """(W, H) of a width x height image zero-padded at the bottom / right to a multiple of `divisor`."""
    return -(-width // divisor) * divisor, -(-height // divisor) * divisor


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H0, W0, C) uint8 -> (height, width, C), bilinear (cv2 INTER_LINEAR, mmcv's default); no copy when
    the image already has that size."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------
# The released VAD checkpoints were trained with mmdet's caffe-style setting: BGR channel order, mean
# [103.53, 116.28, 123.675], std 1 (VAD issue #9). Feeding them torchvision-normalised RGB silently ruins
# every number, so the model config names its normalisation (`VADConfig.img_norm`) and both producers
# apply it from this table.
# name -> (mean, std, to_bgr): mean / std in the *output* channel order, on 0..255 pixel values
IMG_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], bool]] = {
    "caffe": ((103.530, 116.280, 123.675), (1.0, 1.0, 1.0), True),
    "torchvision": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False),
}


def check_norm(norm: str) -> None:
    """UserError unless `norm` names an entry of IMG_NORMS."""
    if norm not in IMG_NORMS:
        raise UserError(f"unknown image normalisation {norm!r}; valid: {sorted(IMG_NORMS)}")


def normalize_images(img_rgb: torch.Tensor, norm: str) -> torch.Tensor:
    """(..., 3, H, W) RGB pixels in 0..255 (uint8 or float) -> normalised float32 images for the model."""
    check_norm(norm)
    if img_rgb.shape[-3] != 3:
        raise UserError(f"images must have 3 channels in dim -3, got shape {tuple(img_rgb.shape)}")
    mean, std, to_bgr = IMG_NORMS[norm]
    x = img_rgb.float()
    if to_bgr:
        x = x.flip(-3)
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x - m) / s


def normalise_planes_into(bgr: np.ndarray, out: np.ndarray, norm: str) -> None:
    """Write the normalised planes of a uint8 BGR image (h, w, 3) into `out` (3, h, w) float32.

    The same maths as `normalize_images` from the same table, as per-plane in-place arithmetic: ~25x faster
    than `(img[..., ::-1] - mean) / std` on a strided view. It multiplies by 1 / std where the tensor
    version divides, so torchvision values may differ from it in the last float32 bit."""
    check_norm(norm)
    mean, std, to_bgr = IMG_NORMS[norm]
    planes = cv2.split(bgr)  # contiguous B, G, R planes
    order = (0, 1, 2) if to_bgr else (2, 1, 0)
    for c, src in enumerate(order):
        o = out[c]
        o[...] = planes[src]
        o -= np.float32(mean[c])
        if std[c] != 1.0:
            o *= np.float32(1.0 / std[c])


# ----------------------------------------------------------------------------------------------------
# CAN bus
# ----------------------------------------------------------------------------------------------------
CAN_BUS_POS = slice(0, 3)  # translation (m, world axes)
CAN_BUS_YAW = 17  # heading (degrees)


def can_bus_delta(can_bus: np.ndarray, prev_can_bus: np.ndarray | None) -> np.ndarray:
    """(18,) absolute CAN bus -> BEVFormer's queue form: translation [0:3] and heading [17] relative to the
    previous BEV frame's `prev_can_bus` (both zero without one); the rest stays absolute. float64 copy."""
    out = np.array(can_bus, dtype=np.float64)
    if prev_can_bus is None:
        out[CAN_BUS_POS] = 0.0
        out[CAN_BUS_YAW] = 0.0
    else:
        out[CAN_BUS_POS] -= prev_can_bus[CAN_BUS_POS]
        out[CAN_BUS_YAW] -= prev_can_bus[CAN_BUS_YAW]
    return out


def can_bus_from_motion(can_bus: torch.Tensor, prev_from_cur: torch.Tensor, dyaw_deg: torch.Tensor
                        ) -> torch.Tensor:
    """(B, 18) CAN bus with [0:3] replaced by the ego displacement since the previous frame (prev_from_cur
    (B, 4, 4) translation) and [17] by the heading change dyaw_deg (B,), degrees: the deltas BEVFormer
    feeds, from the same ego motion the temporal alignment uses (`VADConfig.can_bus_from_motion`)."""
    return torch.cat([prev_from_cur[:, :3, 3], can_bus[:, 3:CAN_BUS_YAW], dyaw_deg[:, None]], -1)


# The entries that carry the ego's motion (its "ego status"): the translation and heading change since the
# previous frame, acceleration, rotation rate and velocity. The rest ([3:7] quaternion, [16] yaw) is the
# absolute heading.
CAN_BUS_EGO_STATUS = (*range(0, 3), *range(7, 16), CAN_BUS_YAW)


def drop_ego_status(can_bus: torch.Tensor) -> torch.Tensor:
    """(..., 18) CAN bus with its ego-motion entries (CAN_BUS_EGO_STATUS) zeroed (`VADConfig.bev_ego_status`
    False): the BEV queries no longer see how fast the ego moves (docs/models.md, "Ego status")."""
    keep = torch.ones(can_bus.shape[-1], dtype=can_bus.dtype, device=can_bus.device)
    keep[list(CAN_BUS_EGO_STATUS)] = 0.0
    return can_bus * keep
