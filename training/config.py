"""The training configuration: one dataclass, a comment on every field (vlmad.config loads / saves it).

    cfg = load_train_config(yaml_path="run.yaml", overrides=["lr=1e-4", "vlm_ad.enabled=true"])

Defaults follow VAD's end-to-end recipe (docs/facts.md section 6): AdamW lr 2e-4 with the image backbone at
x0.1, weight decay 0.01, gradient clipping at 35, 500 linear warm-up iterations starting at lr / 3, then
cosine to lr x 1e-3, 60 epochs. Batch size is per process (VAD: 1 per GPU on 8 GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from models.vlm_ad import VLMADConfig
from vlmad.config import load_config
from vlmad.errors import UserError

SPLITS = ("auto", "official", "scenes", "all")
PRECISIONS = ("bf16", "fp32")
CARLA_INPUTS = ("auto", "keep", "drop")


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved resolved as <out>/config.yaml."""

    # ---- model --------------------------------------------------------------------------------------
    model: str = "vad_nano"  # VAD preset (vad_nano, vad_tiny, vad_base, vad_base_carla) or a VADConfig YAML
    model_overrides: list[str] = field(default_factory=list)  # "key=value" overrides of the model config
    # The CARLA-only inputs (use_goal_point, use_traffic_light) of a CARLA-variant preset (vad_nano, which
    # turns them on to exercise every code path, or vad_base_carla): "auto" keeps them when every training
    # record has a goal point and a traffic-light label (data recorded from a route: the offline world,
    # CARLA collection) and drops them otherwise (nuScenes has neither: the preset trains as its nuScenes
    # counterpart); "keep" / "drop" force it. model.yaml in every checkpoint records what was built.
    carla_inputs: str = "auto"
    backbone_weights: str | None = None  # torchvision-format ResNet-50 ImageNet .pth loaded into the image
    # backbone (and the CARLA variant's traffic-light backbone) before step 0; None = random init
    init_from: str | None = None  # driving checkpoint folder (e.g. a converted official VAD) whose weights
    # initialise the driver before step 0 (strict: every tensor must fit the run's model config)
    vlm_ad: VLMADConfig = field(default_factory=lambda: VLMADConfig(enabled=False))  # VLM-AD heads + loss
    features: str | None = None  # feature store (.safetensors, teacher.feature_store) with the VLM targets
    min_feature_coverage: float = 0.0  # fraction of training samples the store must cover (0% always fails)
    # ---- data ---------------------------------------------------------------------------------------
    dataroot: str = ""  # nuScenes-format root (holds <version>/ and samples/)
    version: str = "v1.0-mini"  # dataset version folder, e.g. v1.0-trainval, v1.0-mini
    infos_cache: str | None = None  # record cache path (default <dataroot>/vlmad_infos_<version>.json)
    # train/val split by scene: "official" = nuScenes train/val (mini_train/mini_val for v1.0-mini);
    # "scenes" = deterministic: every k-th scene by sorted name is val (k = 1 / val_fraction); "auto" =
    # official when every scene of the dataset belongs to the version's official splits, else "scenes";
    # "all" = train on every scene (no held-out scenes)
    split: str = "auto"
    val_fraction: float = 0.2  # share of scenes held out by the "scenes" split (at least one scene)
    # Share of "standing" training keyframes kept (ego below 0.5 m/s and its whole 3 s future within 1 m;
    # training.data.standing_samples). 1.0 = all of them (VAD). Data where waiting dominates (the offline
    # world's red lights: about half its keyframes) teaches "standing stays standing"; a lower share
    # rebalances it. The kept ones are drawn with the run's seed (docs/experiments.md).
    standing_keep: float = 1.0
    # Visits per pass of each "restart" keyframe (ego below 0.5 m/s now, 1 m or more away within its 3 s
    # future: pulling away; training.data.restart_samples). 1 = once, as VAD. Where the expert pulls away
    # on the tick its light turns green, a 2 Hz keyframe rarely catches the moment (1-3 % of the offline
    # world's samples), so a planner learns to stop but not to go again (docs/experiments.md).
    restart_repeat: int = 1
    num_workers: int = 4  # DataLoader worker processes per training process (0 = load in the main process)
    # ---- optimisation -------------------------------------------------------------------------------
    batch_size: int = 1  # samples per process and micro-step (VAD: 1 per GPU)
    grad_accum: int = 1  # micro-steps per optimiser step; global batch = batch_size x world size x grad_accum
    epochs: int = 60  # passes over the training split (VAD: 60); ignored when max_steps > 0
    max_steps: int = 0  # optimiser steps of the whole run; > 0 overrides epochs (the schedule spans them)
    max_minutes: float = 0.0  # stop (checkpoint, export) once this wall time is exceeded; 0 = no limit
    lr: float = 2e-4  # AdamW learning rate of the non-backbone parameters (VAD 2e-4)
    backbone_lr_mult: float = 0.1  # image backbone lr factor (VAD 0.1)
    weight_decay: float = 0.01  # AdamW weight decay (VAD 0.01)
    grad_clip: float = 35.0  # max global gradient norm (VAD 35); 0 = no clipping
    warmup_iters: int = 500  # linear warm-up iterations (VAD 500) ...
    warmup_ratio: float = 1.0 / 3.0  # ... starting at lr x this (mmcv warmup_ratio, VAD 1/3)
    warmup_max_fraction: float = 0.1  # short runs: warm-up is at most this share of all steps
    min_lr_ratio: float = 1e-3  # cosine ends at lr x this (VAD 1e-3)
    precision: str = "bf16"  # "bf16": bfloat16 autocast on CUDA (CPU always runs fp32); "fp32": no autocast
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda"; torchrun picks cuda:LOCAL_RANK
    find_unused_parameters: bool = False  # DDP flag; only needed for configs with branches that get no loss
    seed: int = 0  # model init, data order (per epoch) and dropout; the same seed reproduces a run exactly
    # ---- outputs ------------------------------------------------------------------------------------
    out: str = "runs/train"  # run folder: config, checkpoints/, log.jsonl, tb/, driving/, summary.json
    ckpt_every: int = 1000  # checkpoint every N optimiser steps (also at every epoch end and at the end)
    keep_last: int = 3  # step checkpoints kept (older ones are deleted after a successful save); 0 = all
    log_every: int = 10  # log losses (log.jsonl, TensorBoard, progress bar) every N steps
    tensorboard: bool = True  # TensorBoard scalars per loss term in <out>/tb (rank 0)
    progress: bool = True  # tqdm progress bar (rank 0)

    def __post_init__(self) -> None:
        problems = []
        # YAML 1.1 reads "1e-4" (no dot) as a string: numbers given as text are converted here
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", "int") and isinstance(value, str):
                try:
                    setattr(self, f.name, float(value) if f.type == "float" else int(value))
                except ValueError:
                    problems.append(f"{f.name} must be a number, got {value!r}")
        if problems:
            raise UserError("training config: " + "; ".join(problems))
        if not 0.0 <= self.standing_keep <= 1.0:
            problems.append(f"standing_keep must be in [0, 1], got {self.standing_keep}")
        if self.restart_repeat < 1:
            problems.append(f"restart_repeat must be >= 1, got {self.restart_repeat}")
        if self.carla_inputs not in CARLA_INPUTS:
            problems.append(f"carla_inputs {self.carla_inputs!r} not in {CARLA_INPUTS}")
        if self.split not in SPLITS:
            problems.append(f"split {self.split!r} not in {SPLITS}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} not in {PRECISIONS}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device {self.device!r} must be auto, cpu or cuda")
        for name in ("batch_size", "grad_accum", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("epochs", "max_steps", "num_workers", "keep_last", "warmup_iters"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.epochs == 0 and self.max_steps == 0:
            problems.append("set epochs or max_steps")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append("val_fraction must be in (0, 1)")
        if not 0.0 <= self.min_feature_coverage <= 1.0:
            problems.append("min_feature_coverage must be in [0, 1]")
        if self.lr <= 0 or self.grad_clip < 0 or self.max_minutes < 0:
            problems.append("lr must be > 0, grad_clip and max_minutes >= 0")
        if isinstance(self.model_overrides, str) or not all(isinstance(o, str) for o in self.model_overrides):
            problems.append("model_overrides must be a list of 'key=value' strings")
        if problems:
            raise UserError("training config: " + "; ".join(problems))


# Fields that change what a run computes. Resuming with a different value would not continue the same run.
# (dataroot and features are paths: a dataset or feature store moved to another disk may be resumed from.)
TRAJECTORY_FIELDS = ("model", "model_overrides", "carla_inputs", "init_from", "vlm_ad", "version",
                     "split", "val_fraction", "standing_keep", "restart_repeat", "lr", "backbone_lr_mult",
                     "weight_decay",
                     "grad_clip", "warmup_iters", "warmup_ratio", "warmup_max_fraction", "min_lr_ratio",
                     "precision", "seed")


def load_train_config(base: TrainConfig | None = None, yaml_path: str | Path | None = None,
                      overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """`base` (or the defaults), then a YAML file, then `key.sub=value` overrides (vlmad.config rules)."""
    return load_config(TrainConfig, base=base, yaml_path=yaml_path, overrides=overrides)
