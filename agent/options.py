"""Agent options (`AgentConfig`) and what `--agent-config` may name.

`--agent-config` is either an exported driving checkpoint folder (or its config.yaml / model.safetensors),
which drives with the default options, or a small agent YAML:

    checkpoint: ../export/vad_base_vlmad   # folder; relative paths are taken from this file's folder
    device: cuda
    model_every: 2
    controller: {turn_kp: 0.75}
    debug_dir: runs/agent_debug

Every key besides `checkpoint` is an `AgentConfig` field; unknown keys are an error that lists the valid
ones. The model itself (architecture, normalisation, image size, goal point, traffic-light branch) comes
only from the checkpoint's own config.yaml: nothing here can contradict it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.controller import ControllerConfig
from models.checkpoint_formats import CONFIG, WEIGHTS, resolve_checkpoint_dir
from vlmad.config import from_dict
from vlmad.errors import UserError


@dataclass
class AgentConfig:
    """How the agent runs a checkpoint: rates, sensors, control, safety, debug output."""

    device: str = "auto"  # torch device of the model: "auto" (cuda when available, else cpu), "cpu", "cuda:0"
    autocast: bool = False  # bf16 autocast of the model on CUDA (faster on big GPUs); off = float32
    compile: bool = False  # torch.compile the model forward (models.vad.compile_for_inference); the first
    # model call compiles (tens of seconds to minutes), later ones reuse it. Off = eager PyTorch
    backend: str = "torch"  # "torch" (PyTorch, on `device`) or "onnxruntime" (the exported ONNX file `onnx`,
    # on CPU; docs/deploy.md). Both take the model config from the checkpoint; the ONNX file must match it
    onnx: str | None = None  # ONNX file of the onnxruntime backend (scripts.export_onnx); relative paths are
    # taken from the agent YAML's folder; None = model.onnx in the checkpoint folder
    model_every: int = 1  # run the model every N ticks (20 Hz), 1..10; in between, the controller tracks the
    # last plan moved into the current ego frame by odometry. 1 = every tick (the public agents' choice)
    bev_history_ticks: int = 10  # age (ticks) of the previous BEV handed to the model: the newest stored
    # state at least this old is used. 10 ticks = 0.5 s = the keyframe spacing VAD's temporal queue trained
    # with; a younger BEV would feed motions 10x smaller than training ever saw. 0 = previous model call.
    # Keeps about bev_history_ticks / model_every BEV states (VAD-Base: 41 MB each on the model's device)
    rig: str = "carla_vad"  # camera rig name in vlmad.rig.RIGS (sensors() and projections come from it)
    camera_size: tuple[int, int] | None = None  # (W, H) the simulator renders; None = the checkpoint's
    # img_size_raw. Same FOVs at any size; a smaller one only saves simulator time (images are resized anyway)
    max_sensor_lag_frames: int = 2  # a sensor whose frame is this much older than the newest one is stale
    gnss: str = "auto"  # GNSS convention of the server: "classic" (CARLA <= 0.9.15, offline world),
    # "carla_map" (CARLA >= 0.9.16: the live map's geolocation_to_transform), "auto" (carla_map when the
    # leaderboard's live map has geolocation_to_transform, else classic; checked at the first fix)
    route_min_distance: float = 4.0  # metres; route points nearer than this are popped (reached)
    route_max_distance: float = 50.0  # metres of route searched ahead for reached points
    controller: ControllerConfig = field(default_factory=ControllerConfig)  # PID gains and thresholds
    creep: bool = False  # OFF by default. When stopped for creep_after_s with no detected agent in the
    # corridor ahead and no red light predicted, drive gently for creep_duration_s (unblocks false stops)
    creep_after_s: float = 30.0  # seconds stopped (speed < 0.1 m/s) before a creep is considered
    creep_duration_s: float = 1.5  # seconds of creeping
    creep_throttle: float = 0.4  # throttle while creeping (steering still follows the plan)
    creep_clear_m: float = 8.0  # metres ahead that must be free of detections (score >= creep_det_score)
    creep_half_width_m: float = 2.0  # half-width of that corridor, metres
    creep_det_score: float = 0.3  # detection score that counts as "something ahead"
    debug_dir: str | None = None  # OFF by default; a folder -> one MP4 per route (front image + plan + BEV)
    debug_every: int = 2  # video frame every N ticks (2 -> 10 fps)


def load_agent_options(path: str | Path) -> tuple[AgentConfig, Path]:
    """`--agent-config` -> (AgentConfig, checkpoint folder). Raises UserError with what to fix."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise UserError("the agent needs --agent-config: an exported driving checkpoint folder or an agent "
                        "YAML with a `checkpoint:` entry (see docs/agent.md)")
    is_ckpt_file = p.name in (WEIGHTS, "meta.json") or (p.name == CONFIG and (p.parent / WEIGHTS).exists())
    if p.is_file() and p.suffix in (".yaml", ".yml") and not is_ckpt_file:
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"agent config {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("checkpoint"), str):
            raise UserError(f"agent config {p} needs a `checkpoint:` entry naming an exported driving "
                            "checkpoint folder (relative paths from the YAML's folder)")
        opts = {k: v for k, v in data.items() if k != "checkpoint"}
        cfg = from_dict(AgentConfig, opts, where=f"agent config {p}")
        if cfg.onnx is not None and not Path(cfg.onnx).expanduser().is_absolute():
            cfg.onnx = str(p.parent / cfg.onnx)
    else:
        cfg = AgentConfig()
    _check(cfg, str(p))
    return cfg, resolve_checkpoint_dir(p)


def _check(cfg: AgentConfig, where: str) -> None:
    if not 1 <= cfg.model_every <= 10 or cfg.debug_every < 1:
        raise UserError(f"{where}: model_every must be in 1..10 (the plan's first point is 10 ticks ahead) "
                        "and debug_every >= 1")
    if cfg.bev_history_ticks < 0 or cfg.max_sensor_lag_frames < 0:
        raise UserError(f"{where}: bev_history_ticks and max_sensor_lag_frames must be >= 0")
    if cfg.camera_size is not None and (len(cfg.camera_size) != 2 or min(cfg.camera_size) < 8):
        raise UserError(f"{where}: camera_size must be [W, H] (pixels), got {cfg.camera_size}")
    if cfg.backend not in ("torch", "onnxruntime"):
        raise UserError(f"{where}: backend must be torch or onnxruntime, got {cfg.backend!r}")
    if cfg.backend == "onnxruntime" and cfg.compile:
        raise UserError(f"{where}: compile applies to the torch backend only; drop it for onnxruntime")
    if cfg.gnss not in ("auto", "classic", "carla_map"):
        raise UserError(f"{where}: gnss must be auto, classic or carla_map, got {cfg.gnss!r}")
    if not 0.0 < cfg.controller.max_throttle <= 1.0:
        raise UserError(f"{where}: controller.max_throttle must be in (0, 1]")
