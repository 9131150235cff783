"""Image normalisation named by the model config ("caffe" for the released VAD weights, "torchvision").

The released VAD checkpoints were trained with mmdet's caffe-style setting: BGR channel order, mean
[103.53, 116.28, 123.675], std 1 (VAD issue #9). Feeding them torchvision-normalised RGB silently ruins
every number. The data pipeline and the CARLA agent call `normalize_images` with `VADConfig.img_norm`.
"""

from __future__ import annotations

import torch

from vlmad.errors import UserError

# name -> (mean, std, to_bgr), mean/std in the *output* channel order, on 0..255 pixel values
IMG_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], bool]] = {
    "caffe": ((103.530, 116.280, 123.675), (1.0, 1.0, 1.0), True),
    "torchvision": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False),
}


def normalize_images(img_rgb: torch.Tensor, norm: str) -> torch.Tensor:
    """(..., 3, H, W) RGB pixels in 0..255 (uint8 or float) -> normalised float32 images for the model."""
    if norm not in IMG_NORMS:
        raise UserError(f"unknown image normalisation {norm!r}; valid: {sorted(IMG_NORMS)}")
    if img_rgb.shape[-3] != 3:
        raise UserError(f"images must have 3 channels in dim -3, got shape {tuple(img_rgb.shape)}")
    mean, std, to_bgr = IMG_NORMS[norm]
    x = img_rgb.float()
    if to_bgr:
        x = x.flip(-3)
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x - m) / s
