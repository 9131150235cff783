"""ResNet-50 with torchvision-compatible parameter names, frozen stem + stage 1 and frozen BatchNorm.

torchvision cannot be imported on this project's machines (docs/facts.md section 3), so the network is written
here with exactly torchvision's `resnet50` state-dict names (conv1, bn1, layer1..layer4 with
`downsample.0/1`): `load_backbone_weights(model, "resnet50.pth")` loads an ImageNet checkpoint the user
has. VAD's mmdet config: depth 50, frozen_stages=1, BatchNorm frozen (norm_eval), style "pytorch"
(stride on the 3x3 conv).

`width` and `blocks` exist only for the test size (`vad_nano`): the same code with a narrower, shallower
network so CPU tests stay fast. Real configs use width 64 and blocks (3, 4, 6, 3) = ResNet-50.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlmad.errors import UserError


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers named as torchvision's BN).

    Standalone its forward is `F.batch_norm(training=False)` (one fused kernel); inside the ResNet it is
    folded into the preceding convolution (`conv_bn`), which removes the BatchNorm passes entirely."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mixed precision (bf16 / fp16 activations, fp32 statistics) is supported by F.batch_norm
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) (C,) with bn(x) = x * scale + shift."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale


def conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """bn(conv(x)) as one convolution: the frozen BatchNorm folded into the conv weight and a bias.

    The same function (and gradient for the conv weight) as conv then BN, one pass over the activations
    fewer; the fold costs a multiply over the weights only."""
    scale, shift = bn.scale_shift()
    w = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
    return F.conv2d(x, w, shift.to(w.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


class _ConvBN(nn.Sequential):
    """`downsample` = Sequential(conv, bn) (torchvision names `.0` / `.1`), run folded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return conv_bn(self[0], self[1], x)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (stride on conv2), expansion 4."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(conv_bn(self.conv1, self.bn1, x))
        out = self.relu(conv_bn(self.conv2, self.bn2, out))
        out = conv_bn(self.conv3, self.bn3, out)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet returning the outputs of stages `out_indices` (0 = layer1 ... 3 = layer4).

    Input (N, 3, H, W) -> list of (N, C_i, H / s_i, W / s_i) with s = 4, 8, 16, 32 and
    C = 4 * width * (1, 2, 4, 8) (256, 512, 1024, 2048 for ResNet-50).
    """

    def __init__(
        self,
        width: int = 64,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        out_indices: tuple[int, ...] = (1, 2, 3),
        frozen_stages: int = 1,
    ) -> None:
        super().__init__()
        self.out_indices, self.frozen_stages = tuple(out_indices), frozen_stages
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            down = _ConvBN(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), FrozenBatchNorm2d(planes * 4)
            )
            layers = [Bottleneck(inplanes, planes, stride, down)]
            inplanes = planes * 4
            layers += [Bottleneck(inplanes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.out_channels = [width * 4 * 2**i for i in self.out_indices]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._freeze()

    def _freeze(self) -> None:
        """Freeze the stem and the first `frozen_stages` stages (mmdet frozen_stages semantics)."""
        if self.frozen_stages >= 0:
            for p in self.conv1.parameters():
                p.requires_grad_(False)
        for i in range(1, self.frozen_stages + 1):
            for p in getattr(self, f"layer{i}").parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x)))
        outs = []
        last = max(self.out_indices)
        for i in range(last + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def load_backbone_weights(module: ResNet, path: str | Path) -> dict[str, list[str]]:
    """Load a torchvision-format ResNet-50 state dict (`.pth`) into `module`.

    Uses `torch.load(weights_only=True)` (no pickled code). `fc.*` and `num_batches_tracked` are
    expected extras of torchvision checkpoints and ignored. Returns {"missing": [...], "unexpected": [...]}
    (anything else that did not match) so the caller can report it. Raises UserError when the file is
    missing, unreadable, or clearly not a ResNet-50 state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"backbone weights {path} do not exist; pass a torchvision-format resnet50 .pth "
            "(e.g. resnet50-0676ba61.pth from torchvision's model zoo, downloaded by you)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a user-side file problem
        raise UserError(
            f"backbone weights {path} could not be read with torch.load(weights_only=True): {e}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state or "layer4.0.conv1.weight" not in state:
        raise UserError(
            f"backbone weights {path} are not a torchvision resnet50 state dict "
            "(no conv1.weight / layer4.0.conv1.weight keys)"
        )
    state = {
        k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    own = module.state_dict()
    shape_bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if shape_bad:
        raise UserError(
            f"backbone weights {path} do not fit this ResNet (shape mismatch at {shape_bad[:3]}...); "
            "they must be a ResNet-50 (width 64, blocks 3-4-6-3)"
        )
    result = module.load_state_dict(state, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
