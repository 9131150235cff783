"""hustvl/VAD checkpoints (`VAD_tiny.pth`, `VAD_base.pth`) -> this project's `VAD` state dict.

The project's VAD runs in the official grid layout and BEV frame (LIDAR_TOP), so the conversion is a key
rename, no tensor is transformed (docs/models.md, "Official checkpoints"):

- `img_backbone.*`, `img_neck.*`: same;
- `pts_bbox_head.transformer.*` -> `transformer.*` (`level_embeds` cut to the config's FPN levels);
- `pts_bbox_head.{motion_mode_query, motion_decoder, motion_map_decoder, pos_mlp_sa, pos_mlp,
  traj_branches, traj_cls_branches}.*` -> `motion.*`;
- `pts_bbox_head.{ego_query, ego_agent_decoder, ego_map_decoder, ego_agent_pos_mlp, ego_map_pos_mlp,
  agent_fus_mlp, ego_fut_decoder}.*` -> `planning.*`;
- `pts_bbox_head.lane_encoder.layer_seq.lmlp_i.mlp.{0,1}.*` -> `lane_encoder...lmlp_i.{linear,norm}.*`;
- every other `pts_bbox_head.*` -> top level.

Bookkeeping entries that the forward does not use are dropped and listed: `pts_bbox_head.code_weights`,
`pts_bbox_head.map_code_weights` (loss constants), the BatchNorm `num_batches_tracked` counters, and rows of
`level_embeds` beyond the FPN levels (VAD-Tiny stores 4, uses 1). Anything else that does not fit (a
missing or unexpected key, another shape) is a `UserError` naming the keys.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import torch

from models.configs import build_config
from models.vad import VAD, VADConfig
from vlmad.errors import UserError

BOOKKEEPING = ("pts_bbox_head.code_weights", "pts_bbox_head.map_code_weights")
_MOTION = ("motion_mode_query", "motion_decoder", "motion_map_decoder", "pos_mlp_sa", "pos_mlp.",
           "traj_branches", "traj_cls_branches")
_PLANNING = ("ego_query", "ego_agent_decoder", "ego_map_decoder", "ego_agent_pos_mlp", "ego_map_pos_mlp",
             "agent_fus_mlp", "ego_fut_decoder")
_LANE = re.compile(r"^lane_encoder\.layer_seq\.(lmlp_\d+)\.mlp\.([01])\.")
HEAD = "pts_bbox_head."


def project_key(key: str) -> str | None:
    """Our name for an official state-dict key, or None for a bookkeeping entry."""
    if key in BOOKKEEPING or key.endswith(".num_batches_tracked"):
        return None
    if not key.startswith(HEAD):
        return key  # img_backbone.*, img_neck.*
    rest = key[len(HEAD):]
    if rest.startswith("transformer."):
        return rest
    if rest.startswith(_MOTION):
        return "motion." + rest
    if rest.startswith(_PLANNING):
        return "planning." + rest
    m = _LANE.match(rest)
    if m:
        return f"lane_encoder.layer_seq.{m.group(1)}.{('linear', 'norm')[int(m.group(2))]}." + rest[m.end():]
    return rest


def _layers(keys: list[str], prefix: str) -> int:
    """Number of layers `prefix.<i>.` present in official keys (0 when none)."""
    idx = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def describe_official(keys: list[str]) -> str:
    """A short account of what an official checkpoint holds (for mismatch messages)."""
    enc = _layers(keys, "pts_bbox_head.transformer.encoder.layers")
    dec = _layers(keys, "pts_bbox_head.transformer.decoder.layers")
    fpn = _layers(keys, "img_neck.fpn_convs")
    return f"{enc} encoder / {dec} decoder layers, {fpn} FPN level(s)"


def convert_state_dict(official: dict[str, torch.Tensor], cfg: VADConfig
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official state dict -> (our state dict for `VAD(cfg)`, ignored official keys).

    Raises UserError naming missing / unexpected / mis-shaped keys (one line)."""
    own = VAD(cfg).state_dict()
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for k, v in official.items():
        if not torch.is_tensor(v):
            raise UserError(f"official checkpoint entry {k!r} is a {type(v).__name__}, not a tensor")
        name = project_key(k)
        if name is None:
            ignored.append(k)
            continue
        if name not in own:
            unexpected.append(k)
            continue
        if name == "transformer.level_embeds" and v.dim() == 2 and v.shape[0] > own[name].shape[0]:
            ignored.append(f"{k}[{own[name].shape[0]}:]")  # VAD-Tiny: 4 rows stored, 1 FPN level used
            v = v[: own[name].shape[0]]
        out[name] = v
    missing = sorted(set(own) - set(out))
    shapes = [f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(out)
              if tuple(out[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the checkpoint (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {shapes[:2]})")
        raise UserError(
            f"official checkpoint does not fit config {cfg.name!r} ({cfg.encoder_layers} encoder / "
            f"{cfg.det_layers} decoder layers, {cfg.fpn_levels} FPN level(s); the checkpoint has "
            f"{describe_official(list(official))}): " + "; ".join(parts)
        )
    out = {k: v.to(own[k].dtype).contiguous() for k, v in out.items()}
    return out, ignored


def converted_config(name: str, img_norm: str = "caffe", overrides: list[str] | tuple[str, ...] = ()
                     ) -> VADConfig:
    """The config a converted official checkpoint runs with: preset `name`, VAD's temporal alignment,
    the CAN bus exactly as the dataset gives it (VAD's deltas), the given image normalisation."""
    cfg = build_config(name, None, list(overrides))
    return dataclasses.replace(cfg, bev_align="official", can_bus_from_motion=False, img_norm=img_norm)


def _numpy_globals() -> list:
    """numpy types that mmcv's `meta` may pickle (scalars, dtypes): data, never code."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    out: list = [np.dtype, np.ndarray]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            out.append(__import__(mod, fromlist=["scalar"]).scalar)
        except (ImportError, AttributeError):
            pass
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


def load_official_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read an official `.pth` -> (its state dict, top-level entries ignored, e.g. meta / optimizer).

    Always `torch.load(weights_only=True)`: mmcv's `meta` entry (config text, class names, versions) may
    hold numpy scalars, which are allowed as data; anything else that would need code is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"official checkpoint {path} does not exist (download VAD_tiny.pth / VAD_base.pth "
                        "from the hustvl/VAD README yourself)")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"official checkpoint {path} needs more than plain data to unpickle ({first}); "
                        "refusing to run its code (weights_only=True)") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad magic, ...: all mean "not a checkpoint"
        raise UserError(f"official checkpoint {path} is corrupt or not a torch checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    ignored: list[str] = []
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        ignored = [k for k in data if k != "state_dict"]
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) for k in data):
        raise UserError(f"official checkpoint {path} holds no state dict (expected a dict of tensors or "
                        "mmcv's {'meta', 'state_dict', ...})")
    if not any(k.startswith(HEAD) for k in data):
        raise UserError(f"{path} is not a VAD checkpoint: no '{HEAD}*' keys")
    return data, ignored
