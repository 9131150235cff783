"""Feature pyramid (mmdet FPN as configured by VAD): 256 channels, extra levels by strided 3x3 convs.

VAD-Base: ResNet C3-C5 -> 4 levels (`add_extra_convs="on_output"`, `relu_before_extra_convs=True`: as in
mmdet, the first extra conv reads the last output directly and only later extra convs get a ReLU first).
VAD-Tiny: C5 only -> 1 level. Parameter names follow mmdet (`lateral_convs.i.conv`, `fpn_convs.i.conv`)
so the official checkpoints map one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ConvModule(nn.Module):
    """Just a conv, wrapped so the state-dict key is `<name>.conv.weight` like mmcv's ConvModule."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """in_channels: channels of the backbone outputs (fine to coarse); num_outs >= len(in_channels).

    forward(list of (N, C_i, H_i, W_i)) -> list of `num_outs` maps (N, out_channels, H_l, W_l).
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_outs: int = 4) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError("num_outs must be >= the number of input levels")
        self.lateral_convs = nn.ModuleList(_ConvModule(c, out_channels, 1) for c in in_channels)
        convs = [_ConvModule(out_channels, out_channels, 3) for _ in in_channels]
        convs += [
            _ConvModule(out_channels, out_channels, 3, stride=2) for _ in range(num_outs - len(in_channels))
        ]
        self.fpn_convs = nn.ModuleList(convs)
        self.num_ins = len(in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):  # top-down pathway
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        outs = [self.fpn_convs[i](lat[i]) for i in range(self.num_ins)]
        for i, conv in enumerate(self.fpn_convs[self.num_ins :]):  # extra levels on the last output
            # mmdet FPN: no ReLU before the first extra conv, a ReLU before each later one
            outs.append(conv(outs[-1] if i == 0 else F.relu(outs[-1])))
        return outs
