"""VAD presets: `vad_tiny` and `vad_base` as docs/facts.md section 6, the CARLA variant, and a test size.

cfg = get_config("vad_base")                       # a fresh VADConfig
cfg = build_config("vad_tiny", "my.yaml", ["dropout=0.0"])   # + YAML file + key=value overrides
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from models.vad import VADConfig
from vlmad.config import load_config
from vlmad.errors import UserError


def _vad_base() -> VADConfig:
    # 1600x900 x0.8 -> 1280x720 padded to 1280x736; ResNet-50 C3-C5 -> FPN 4 levels; BEV 200x200;
    # queue 4; 6 encoder / 6 detection / 6 map layers.
    return VADConfig(name="vad_base")


def _vad_tiny() -> VADConfig:
    # 1600x900 x0.4 -> 640x360 padded to 640x384; ResNet-50 C5 only -> FPN 1 level; BEV 100x100;
    # queue 3; 3 / 3 / 3 layers.
    return VADConfig(
        name="vad_tiny",
        img_scale=0.4,
        backbone_out_indices=(3,),
        fpn_levels=1,
        bev_h=100,
        bev_w=100,
        queue_length=3,
        encoder_layers=3,
        det_layers=3,
        map_layers=3,
    )


def _vad_base_carla() -> VADConfig:
    # VAD-Base plus the CARLA variant of the paper: sparse goal point + command one-hot through an MLP
    # into the ego query, and a traffic-light branch (ResNet-50 on the front image's upper-middle crop).
    return dataclasses.replace(
        _vad_base(), name="vad_base_carla", use_goal_point=True, use_traffic_light=True
    )


def _vad_nano() -> VADConfig:
    # TEST SIZE ONLY (CPU tests and CI): NOT a published model. Tiny images (160x90 -> 160x96), a narrow
    # shallow ResNet (same code, width 8, one bottleneck per stage), 25x25 BEV, 1 layer each, embed 64,
    # few queries; the CARLA switches and the ego-history embedding on so every code path is exercised.
    # Map points (20), motion / planning modes and steps keep their real sizes (the data format).
    return VADConfig(
        name="vad_nano",
        img_scale=0.1,
        backbone_width=8,
        backbone_blocks=(1, 1, 1, 1),
        backbone_out_indices=(2, 3),
        fpn_levels=3,
        bev_h=25,
        bev_w=25,
        queue_length=2,
        embed_dims=64,
        ffn_dims=128,
        num_heads=4,
        encoder_layers=1,
        det_layers=2,
        map_layers=1,
        num_agent_queries=12,
        map_num_vec=8,
        use_ego_his=True,
        use_goal_point=True,
        use_traffic_light=True,
        tl_crop=(0.0, 0.5, 0.25, 0.75),
    )


PRESETS = {
    "vad_nano": _vad_nano,
    "vad_tiny": _vad_tiny,
    "vad_base": _vad_base,
    "vad_base_carla": _vad_base_carla,
}


def get_config(name: str) -> VADConfig:
    """A fresh preset config by name; unknown names raise UserError listing the valid ones."""
    if name not in PRESETS:
        raise UserError(f"unknown model config {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()


def build_config(
    name: str, yaml_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> VADConfig:
    """Preset `name`, then a YAML file, then `key=value` overrides (vlmad.config rules)."""
    return load_config(VADConfig, base=get_config(name), yaml_path=yaml_path, overrides=overrides)
