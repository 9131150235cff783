"""Checkpoint formats: the driving checkpoint (inference only) and the training checkpoint.

Driving checkpoint: a folder that the CARLA agent and the open-loop evaluator load.
    model.safetensors   the VAD driver's state_dict and nothing else (no VLM-AD head, no optimizer)
    config.yaml         the resolved `VADConfig` (vlmad.config.save_resolved), editable by hand
    meta.json           {"format": "vlmad-driving", "format_version": 1, "config_name", "trained_with_vlm_ad",
                         "source_checkpoint", "created", "torch", "num_parameters", "weights_sha256",
                         "training_rig": the camera geometry of the training data (vlmad.rig.describe_rig /
                         describe_calibration; null when unknown, e.g. random init), ...}

Training checkpoint: a folder written by the trainer and read back to resume or to export.
    model.safetensors   the `TrainModel` state_dict: "driver.*" and, when VLM-AD is on, "aux.*"
    config.yaml         {"model": VADConfig, "vlm_ad": VLMADConfig or null, "text_dim": C or null,
                         "train": the training config as a plain dict}
    meta.json           {"format": "vlmad-train", "format_version": 1, "step", "epoch", "created",
                         "training_rig", ...}
    optimizer.pt        optional; torch.save of a dict of plain containers and tensors (optimizer,
                        scheduler, scaler state); read with torch.load(weights_only=True)

Both are written into a staging folder beside the target and swapped in with renames, so an interrupted
save leaves either the old complete checkpoint or the new one, never a mix. An existing target folder is
only replaced when it is empty or itself a checkpoint (has meta.json or model.safetensors).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.train_model import TrainModel
from models.vad import VAD, VADConfig
from models.vlm_ad import VLMADConfig
from vlmad.config import from_dict, save_resolved, to_dict
from vlmad.errors import UserError
from vlmad.io import atomic_write_bytes, sha256_bytes, sha256_file

WEIGHTS, CONFIG, META, OPTIM = "model.safetensors", "config.yaml", "meta.json", "optimizer.pt"
DRIVING_FORMAT, TRAIN_FORMAT, FORMAT_VERSION = "vlmad-driving", "vlmad-train", 1
EXPORT_HINT = "python -m scripts.export_agent --checkpoint TRAIN_CKPT --out DIR"


# ----------------------------------------------------------------------------------------------------
# Shared helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _state_bytes(state: dict[str, torch.Tensor], fmt: str) -> bytes:
    """safetensors bytes of a state_dict (copied to CPU; shared storage is fine because of the copy)."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    return st_save(tensors, metadata={"format": fmt, "format_version": str(FORMAT_VERSION)})


def _read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{what}: weights file {path} is missing; re-export the checkpoint ({EXPORT_HINT})")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise UserError(f"{what}: weights file {path} is corrupt or truncated ({e}); re-export it") from None


def _read_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"{what}: {path.name} is missing in {path.parent}; a checkpoint folder needs "
                        f"{WEIGHTS} and {CONFIG}")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{what}: {path} is not valid YAML ({e})") from None


def _read_meta(folder: Path, what: str) -> dict[str, Any]:
    path = folder / META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what}: {path} is corrupt ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{what}: {path} must hold a JSON object")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{what}: format_version {version!r} in {path} is newer than this code reads "
                        f"({FORMAT_VERSION}); update the project")
    return meta


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load with a readable account of missing / unexpected / mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        hint = ""
        if any(k.startswith("driver.") for k in unexpected):
            hint = f" (these are training-checkpoint weights; export them with `{EXPORT_HINT}`)"
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(shapes)} with another shape (e.g. {shapes[:2]})" if shapes else ""]
        raise UserError(f"{what}: weights do not match the config: " + "; ".join(p for p in parts if p)
                        + hint)
    model.load_state_dict(state, strict=True)


def _write_folder(out_dir: Path, files: dict[str, bytes], config: Any = None) -> Path:
    """Write `files` (and `config` as config.yaml via save_resolved) into a staging folder, then swap it
    in for `out_dir` (see module docstring)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"{out_dir} exists and is not a folder; choose another --out")
        entries = {p.name for p in out_dir.iterdir()}
        if entries and not entries & {META, WEIGHTS}:
            raise UserError(f"{out_dir} is a non-empty folder that is not a checkpoint; refusing to replace "
                            "it, choose another output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        for name, data in files.items():
            atomic_write_bytes(stage / name, data)
        if config is not None:
            save_resolved(config, stage, CONFIG)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(stage, out_dir)
    except BaseException:
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _plain(obj: Any) -> Any:
    """to_dict, then paths as strings, so a training config with Path fields stays YAML-safe."""
    obj = to_dict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def _yaml_bytes(obj: Any) -> bytes:
    return yaml.safe_dump(obj, sort_keys=False).encode("utf-8")


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------------------------------
# Driving checkpoint


def export_driving_checkpoint(driver: VAD, cfg: VADConfig, out_dir: str | Path,
                              meta: dict[str, Any] | None = None) -> Path:
    """Write the driver's weights (only), its resolved config and meta.json into `out_dir`; returns it.

    `driver` must be the bare `VAD` (pass `train_model.driver`, never the `TrainModel`): the exported file
    then cannot contain any VLM-AD head parameter. `meta` adds or overrides descriptive fields
    (config_name, trained_with_vlm_ad, source_checkpoint, step, training_rig, ...); the agent warns when
    `training_rig` differs from the rig it drives with.
    """
    if isinstance(driver, TrainModel) or not isinstance(driver, VAD):
        raise TypeError(f"export_driving_checkpoint needs the VAD driver, got {type(driver).__name__}; "
                        "pass train_model.driver")
    weights = _state_bytes(driver.state_dict(), DRIVING_FORMAT)
    info: dict[str, Any] = {"config_name": getattr(cfg, "name", None), "trained_with_vlm_ad": False,
                            "source_checkpoint": None, "training_rig": None}
    info.update(meta or {})
    info.update(format=DRIVING_FORMAT, format_version=FORMAT_VERSION, created=_now(), torch=torch.__version__,
                num_parameters=sum(p.numel() for p in driver.parameters()),
                weights_sha256=sha256_bytes(weights))
    return _write_folder(Path(out_dir), {WEIGHTS: weights, META: _json_bytes(info)}, config=cfg)


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder that `path` names.

    Accepts the folder itself, its config.yaml or model.safetensors, or any YAML file with a
    `checkpoint:` entry naming the folder (relative paths are taken from that YAML file's folder; this is
    how an agent config points at its weights).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist; export a driving checkpoint with "
                        f"`python -m scripts.export_agent --random-init --config vad_tiny --out {p}` or "
                        f"`{EXPORT_HINT}`")
    if p.is_dir():
        return p
    if p.name in (WEIGHTS, META) or (p.name == CONFIG and (p.parent / WEIGHTS).exists()):
        return p.parent
    if p.suffix in (".yaml", ".yml"):
        data = _read_yaml(p, f"checkpoint reference {p}")
        if isinstance(data, dict) and isinstance(data.get("checkpoint"), str):
            target = Path(data["checkpoint"]).expanduser()
            target = target if target.is_absolute() else p.parent / target
            if not target.is_dir():
                raise UserError(f"{p} names checkpoint {target}, which is not a folder")
            return target
        raise UserError(f"{p} is a YAML file without a `checkpoint:` entry naming a checkpoint folder")
    raise UserError(f"{p} is neither a checkpoint folder nor a YAML file naming one")


def load_driving_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                            ) -> tuple[VAD, VADConfig, dict[str, Any]]:
    """Load a driving checkpoint folder (or a YAML naming one) -> (VAD in eval mode, its config, meta)."""
    folder = resolve_checkpoint_dir(path)
    what = f"driving checkpoint {folder}"
    meta = _read_meta(folder, what)
    if meta.get("format") == TRAIN_FORMAT:
        raise UserError(f"{folder} is a training checkpoint; export the driving model with `{EXPORT_HINT}`")
    if meta.get("format", DRIVING_FORMAT) != DRIVING_FORMAT:
        raise UserError(f"{what}: unknown format {meta.get('format')!r} in {META}")
    data = _read_yaml(folder / CONFIG, what)
    cfg = from_dict(VADConfig, data if data is not None else {}, where=str(folder / CONFIG))
    recorded = meta.get("weights_sha256")
    if recorded and (folder / WEIGHTS).is_file() and sha256_file(folder / WEIGHTS) != recorded:
        raise UserError(f"{what}: {WEIGHTS} does not match the sha256 recorded in {META} (corrupt or "
                        "replaced); re-export the checkpoint")
    state = _read_weights(folder / WEIGHTS, what)
    driver = VAD(cfg)
    _load_into(driver, state, what)
    return driver.to(device).eval(), cfg, meta


# ----------------------------------------------------------------------------------------------------
# Training checkpoint


@dataclass
class TrainCheckpoint:
    """What `load_train_checkpoint` returns."""

    model: TrainModel  # driver + aux heads, weights loaded, on the requested device, in train mode
    model_cfg: VADConfig  # the driver's config
    vlm_cfg: VLMADConfig | None  # None when trained without VLM-AD
    text_dim: int | None  # C of the heads (from the feature store used for training)
    train: dict[str, Any] = field(default_factory=dict)  # the training config, plain dict
    optimizer_state: dict[str, Any] | None = None  # the dict given to save_train_checkpoint, if any
    meta: dict[str, Any] = field(default_factory=dict)  # step, epoch, created, ...
    path: Path | None = None  # the folder it came from


def save_train_checkpoint(out_dir: str | Path, model: TrainModel, model_cfg: VADConfig,
                          vlm_cfg: VLMADConfig | None = None, train_cfg: Any = None,
                          optimizer_state: dict[str, Any] | None = None,
                          meta: dict[str, Any] | None = None) -> Path:
    """Write a training checkpoint folder (see module docstring); returns it.

    `train_cfg`: a dataclass or a dict, stored as a plain dict under "train". `optimizer_state`: e.g.
    {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}; it must load with
    torch.load(weights_only=True) (checked here, so a bad state fails at save time, not at resume).
    `meta`: step, epoch and anything JSON-serialisable. Pass the bare TrainModel (`ddp.module`, not the
    DDP or torch.compile wrapper) so the parameter names stay "driver.*" / "aux.*".
    """
    if not isinstance(model, TrainModel):
        raise TypeError(f"save_train_checkpoint needs a TrainModel, got {type(model).__name__}")
    vlm = model.aux_cfg if model.aux is not None else None
    if vlm_cfg is not None and model.aux is not None and to_dict(vlm_cfg) != to_dict(vlm):
        raise ValueError("vlm_cfg differs from the config the TrainModel's heads were built with")
    config = {"model": to_dict(model_cfg), "vlm_ad": to_dict(vlm) if vlm is not None else None,
              "text_dim": model.aux.text_dim if model.aux is not None else None,
              "train": _plain(train_cfg) if train_cfg is not None else {}}
    files = {WEIGHTS: _state_bytes(model.state_dict(), TRAIN_FORMAT), CONFIG: _yaml_bytes(config)}
    if optimizer_state is not None:
        buf = io.BytesIO()
        torch.save(optimizer_state, buf)
        try:
            torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing
            raise ValueError(f"optimizer_state does not load with weights_only=True ({e}); keep it to "
                             "tensors, numbers, strings, lists and dicts") from None
        files[OPTIM] = buf.getvalue()
    info = {"step": None, "epoch": None}
    info.update(meta or {})
    info.update(format=TRAIN_FORMAT, format_version=FORMAT_VERSION, created=_now(), torch=torch.__version__,
                config_name=getattr(model_cfg, "name", None), trained_with_vlm_ad=vlm is not None)
    files[META] = _json_bytes(info)
    return _write_folder(Path(out_dir), files)


def load_train_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                          load_optimizer: bool = True) -> TrainCheckpoint:
    """Read a training checkpoint folder -> `TrainCheckpoint` (model in train mode on `device`)."""
    folder = Path(path).expanduser()
    what = f"training checkpoint {folder}"
    if not folder.is_dir():
        raise UserError(f"{what} does not exist (expected a folder written by the trainer)")
    meta = _read_meta(folder, what)
    if meta.get("format") == DRIVING_FORMAT:
        raise UserError(f"{folder} is a driving checkpoint (inference weights only); it cannot be resumed "
                        "or re-exported; load it with models.checkpoint_formats.load_driving_checkpoint")
    data = _read_yaml(folder / CONFIG, what)
    if not isinstance(data, dict) or "model" not in data:
        raise UserError(f"{what}: {CONFIG} must have a `model` section (and vlm_ad, text_dim, train)")
    unknown = sorted(set(data) - {"model", "vlm_ad", "text_dim", "train"})
    if unknown:
        raise UserError(f"{what}: unknown section(s) {unknown} in {CONFIG}")
    model_cfg = from_dict(VADConfig, data["model"], where=f"{folder / CONFIG}:model")
    vlm_cfg = from_dict(VLMADConfig, data["vlm_ad"], where=f"{folder / CONFIG}:vlm_ad") \
        if data.get("vlm_ad") is not None else None
    text_dim = data.get("text_dim")
    model = TrainModel(VAD(model_cfg), vlm_cfg, text_dim)
    _load_into(model, _read_weights(folder / WEIGHTS, what), what)
    opt = None
    if load_optimizer and (folder / OPTIM).is_file():
        try:
            opt = torch.load(folder / OPTIM, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, ...: all mean "corrupt"
            raise UserError(f"{what}: {OPTIM} is corrupt ({type(e).__name__}); delete it to resume "
                            "with a fresh optimizer") from None
    train = data.get("train") or {}
    return TrainCheckpoint(model.to(device), model_cfg, vlm_cfg, text_dim, train, opt, meta, folder)
