"""The training loop: single process or torchrun DDP, exact resume, checkpoints, logs, export.

    summary = train(cfg)                 # cfg: training.config.TrainConfig
    summary = train(cfg, resume=True)    # continue from <cfg.out>/checkpoints (bit-exact on CPU)

Distributed runs are started by torchrun, which sets RANK / WORLD_SIZE / LOCAL_RANK for every process (the
standard launcher contract); this code reads them and joins the process group (NCCL on GPU, Gloo on CPU).
Rank 0 writes every file; all ranks take part in checkpoints (their RNG states are gathered).

What makes a resume exact: the weights, the optimizer and scheduler states, every rank's Python / NumPy /
torch / CUDA RNG states and the optimiser step are in the checkpoint; the data order is a pure function of
(seed, epoch, step) (training.data); DataLoaders get their own generator, so creating one does not draw
from the global RNG. Everything else is recomputed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.backbone import load_backbone_weights
from models.checkpoint_formats import export_driving_checkpoint, load_train_checkpoint, save_train_checkpoint
from models.configs import build_config, get_config
from models.train_model import TrainModel
from models.vad import VAD, VADConfig
from nusc.dataset import NuScenesVADDataset, collate, traffic_light_label
from nusc.infos import build_or_load_infos
from training import checkpoint as ck
from training.config import TRAJECTORY_FIELDS, TrainConfig
from training.data import (
    add_vlm_targets,
    dataset_config,
    kept_samples,
    load_feature_store,
    rank_batches,
    restart_samples,
    split_scenes,
    standing_samples,
    to_device,
    unwrap_worker_errors,
)
from vlmad.cli import resolve_device
from vlmad.config import load_config, save_resolved, to_dict
from vlmad.errors import UserError
from vlmad.io import atomic_write_json, atomic_write_text
from vlmad.rig import describe_calibration

LOG = "log.jsonl"
SUMMARY = "summary.json"


# ----------------------------------------------------------------------------------------------------
# Process group
# ----------------------------------------------------------------------------------------------------
@dataclass
class Dist:
    """Where this process sits: rank / world size (1 without torchrun) and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: str = "auto") -> Dist:
    """Join torchrun's process group when its environment variables are set; else a single process."""
    want_cuda = resolve_device(device, "device").type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(0, 1, 0, torch.device("cuda" if want_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Dist(rank, world, local, dev)


# ----------------------------------------------------------------------------------------------------
# Model and schedule
# ----------------------------------------------------------------------------------------------------
def has_carla_inputs(infos: list[dict]) -> bool:
    """True when every record has what the CARLA variant needs: a goal point and a traffic-light label."""
    return bool(infos) and all(r.get("goal_point") is not None and traffic_light_label(r) >= 0 for r in infos)


def resolve_model_config(cfg: TrainConfig, infos: list[dict] | None = None) -> tuple[VADConfig, list[str]]:
    """The VADConfig this run trains (preset or YAML, overrides, CARLA inputs) and notes on what changed.
    infos: the training records, for `carla_inputs: auto` (None: as records without CARLA inputs)."""
    path = Path(cfg.model)
    if path.suffix in (".yaml", ".yml"):
        mcfg = load_config(VADConfig, yaml_path=path, overrides=cfg.model_overrides)
    else:
        get_config(cfg.model)  # a clear error for an unknown preset name
        mcfg = build_config(cfg.model, overrides=cfg.model_overrides)
    notes = []
    wants = mcfg.use_goal_point or mcfg.use_traffic_light
    drop = cfg.carla_inputs == "drop" or (cfg.carla_inputs == "auto" and not has_carla_inputs(infos or []))
    if wants and drop:
        why = "carla_inputs: drop" if cfg.carla_inputs == "drop" else "the records have no goal points / " \
            "traffic-light labels (carla_inputs: auto)"
        notes.append(f"{mcfg.name}: CARLA-only inputs switched off (use_goal_point, use_traffic_light = "
                     f"false): {why}")
        mcfg.use_goal_point, mcfg.use_traffic_light = False, False
    elif wants and cfg.carla_inputs == "auto":
        notes.append(f"{mcfg.name}: CARLA variant kept (goal point, traffic-light branch): every record "
                     "has a route goal point and a traffic-light label")
    return mcfg, notes


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier after `step` optimiser steps: linear warm-up from warmup_ratio (at most
    warmup_max_fraction of the run), times a cosine from 1 to min_lr_ratio over `total` steps."""
    warm = min(cfg.warmup_iters, int(cfg.warmup_max_fraction * total))
    t = min(step, total) / max(total, 1)
    cos = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if step < warm:
        cos *= cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * step / warm
    return cos


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# Train
# ----------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says; returns the summary (also written to <out>/summary.json).

    `stop_after`: return right after that optimiser step, writing nothing more, as a killed process
    would (tests of resume, time-sliced jobs). The run is then continued with `resume=True`.
    """
    d = setup_distributed(cfg.device)
    try:
        return _Trainer(cfg, d, resume).run(stop_after)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class _Trainer:
    def __init__(self, cfg: TrainConfig, d: Dist, resume: bool):
        self.cfg, self.d = cfg, d
        self.run_dir = Path(cfg.out)
        self.t0 = time.perf_counter()
        latest = ck.find_latest(self.run_dir)
        if latest is not None and not resume:
            raise UserError(f"{self.run_dir} already holds checkpoints (latest {latest.name}); pass --resume "
                            "to continue that run, or choose another --out")
        self.resume_from = latest if resume else None
        self.log = (lambda msg: tqdm.write(msg)) if d.main else (lambda msg: None)

        # ---- data -------------------------------------------------------------------------------------
        if not cfg.dataroot:
            raise UserError("no dataset: pass --dataroot (nuScenes-format root) and --version")
        if d.main:  # rank 0 builds the record cache, the others read it
            infos = build_or_load_infos(cfg.dataroot, cfg.version, cache=cfg.infos_cache,
                                        progress=cfg.progress)
        d.barrier()
        if not d.main:
            infos = build_or_load_infos(cfg.dataroot, cfg.version, cache=cfg.infos_cache, progress=False)
        train_sc, self.val_scenes, self.split_how = split_scenes(
            [r["scene_name"] for r in infos], cfg.version, cfg.split, cfg.val_fraction)
        train_set = set(train_sc)
        self.train_infos = [r for r in infos if r["scene_name"] in train_set]
        self.model_cfg, notes = resolve_model_config(cfg, self.train_infos)
        # the camera geometry the model learns from (first training sample), for the agent's rig check
        self.training_rig = describe_calibration(self.train_infos[0]["cams"]) if self.train_infos else None
        for n in notes:
            self.log(f"note: {n}")
        self.dataset = NuScenesVADDataset(self.train_infos, cfg.dataroot,
                                          dataset_config(self.model_cfg, self.train_infos))
        self.sample_ids = kept_samples(self.train_infos, cfg.standing_keep, cfg.seed, cfg.restart_repeat)
        if cfg.standing_keep < 1.0:
            n_stand = int(standing_samples(self.train_infos).sum())
            self.log(f"note: standing_keep {cfg.standing_keep}: {len(set(self.sample_ids))} of "
                     f"{len(self.train_infos)} training samples visited ({n_stand} standing)")
        if cfg.restart_repeat > 1:
            n_restart = int(restart_samples(self.train_infos).sum())
            self.log(f"note: restart_repeat {cfg.restart_repeat}: {n_restart} restart samples, each visited "
                     f"{cfg.restart_repeat} times per pass ({len(self.sample_ids)} visits per pass)")
        self.global_batch = cfg.batch_size * d.world * cfg.grad_accum
        self.steps_per_epoch = len(self.sample_ids) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"the training split has {len(self.sample_ids)} samples, fewer than one global "
                            f"batch (batch_size {cfg.batch_size} x {d.world} processes x grad_accum "
                            f"{cfg.grad_accum} = {self.global_batch}); lower them or use more data")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.log(f"data: {len(self.train_infos)} training samples in {len(train_sc)} scenes, "
                 f"{len(self.val_scenes)} held-out scenes ({self.split_how}); global batch "
                 f"{self.global_batch}, {self.steps_per_epoch} steps/epoch, {self.total_steps} steps")

        # ---- VLM-AD targets ---------------------------------------------------------------------------
        self.store, self.coverage, text_dim = None, None, None
        vlm_cfg = cfg.vlm_ad if cfg.vlm_ad.enabled else None
        if vlm_cfg is not None:
            self.store, self.coverage = load_feature_store(
                cfg.features, [r["token"] for r in self.train_infos], cfg.min_feature_coverage)
            text_dim = self.store.dim
            self.log(f"VLM-AD: feature store {cfg.features} ({self.store.encoder}, C={text_dim}, teacher "
                     f"{self.store.teacher or '?'}) covers {100 * self.coverage:.1f}% of the training "
                     "samples")
        elif cfg.features:
            self.log(f"note: --features {cfg.features} ignored: VLM-AD is off (vlm_ad.enabled false)")

        # ---- model, optimiser, schedule ---------------------------------------------------------------
        _seed_all(cfg.seed)  # identical initial weights on every rank
        driver = VAD(self.model_cfg)
        if cfg.backbone_weights and self.resume_from is None:  # a resume restores the trained weights
            self._load_backbone_weights(driver, cfg.backbone_weights)
        if cfg.init_from and self.resume_from is None:
            self._init_from(driver, cfg.init_from)
        self.model = TrainModel(driver, vlm_cfg, text_dim).to(d.device)
        self.opt = torch.optim.AdamW(self.model.param_groups(cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay),
                                     lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = self.total_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, total, cfg))
        self.step = 0
        _seed_all(cfg.seed + 1 + d.rank)  # per-rank dropout streams
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.ddp = None
        if d.world > 1:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        self.bf16 = cfg.precision == "bf16" and d.device.type == "cuda"

    # ------------------------------------------------------------------------------------------------
    def _load_backbone_weights(self, driver: VAD, path: str) -> None:
        """ImageNet init of every ResNet of the driver from a torchvision-format state dict (VAD's recipe)."""
        targets = {"img_backbone": driver.img_backbone}
        tl = getattr(driver, "tl_branch", None)
        if tl is not None:
            targets["tl_branch.tl_backbone"] = tl.tl_backbone
        for name, module in targets.items():
            report = load_backbone_weights(module, path)
            self.log(f"{name}: loaded {path} ({len(report['missing'])} missing, "
                     f"{len(report['unexpected'])} unexpected keys)")

    def _init_from(self, driver: VAD, path: str) -> None:
        """Initialise the driver from a driving checkpoint (strict; config differences are logged)."""
        from models.checkpoint_formats import load_driving_checkpoint

        src, src_cfg, _ = load_driving_checkpoint(path)
        ours, theirs = to_dict(self.model_cfg), to_dict(src_cfg)
        diff = sorted(k for k in ours if ours[k] != theirs.get(k))
        try:
            driver.load_state_dict(src.state_dict(), strict=True)
        except RuntimeError as e:
            raise UserError(f"--init-from {path}: its weights do not fit this run's model config (differing "
                            f"fields: {diff}): {str(e).splitlines()[0]}") from None
        self.log(f"driver initialised from {path}" + (f" (model config differs in {diff})" if diff else ""))

    def _load(self, folder: Path) -> None:
        """Restore model, optimiser, scheduler, RNG and position from a training checkpoint."""
        c = load_train_checkpoint(folder, device=self.d.device)
        state = ck.check_resumable(c.optimizer_state, folder)
        if to_dict(c.model_cfg) != to_dict(self.model_cfg):
            raise UserError(f"resume: the model config of {folder} differs from this run's; resume with the "
                            "run's own config (python -m scripts.train --out RUN --resume)")
        saved = c.train or {}
        now = to_dict(self.cfg)
        changed = [k for k in TRAJECTORY_FIELDS if k in saved and saved[k] != now[k]]
        if changed:
            raise UserError(f"resume: {changed} differ from the checkpoint's training config; a resumed run "
                            "must keep them (start a new run with another --out to change them)")
        if state["global_batch"] != self.global_batch:
            raise UserError(f"resume: global batch {self.global_batch} differs from the checkpoint's "
                            f"{state['global_batch']} (batch_size x processes x grad_accum must stay equal)")
        self.model.load_state_dict(c.model.state_dict())
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["position"]["step"])
        if state.get("total_steps") not in (None, self.total_steps):
            self.log(f"note: total steps changed {state['total_steps']} -> {self.total_steps}: the cosine "
                     "schedule is recomputed from here on (not the same run as an uninterrupted one)")
        rngs = state["rng"]
        if len(rngs) == self.d.world:
            ck.set_rng_state(rngs[self.d.rank], self.d.device)
        else:
            self.log(f"note: resumed on {self.d.world} processes from a run of {len(rngs)}: data order is "
                     "exact, dropout streams are re-seeded")
            _seed_all(self.cfg.seed + 7919 * (self.step + 1) + self.d.rank)
        self.log(f"resumed from {folder} at step {self.step}")

    def _save(self, tag: str) -> Path:
        """Checkpoint the current step (all ranks call this; rank 0 writes), mark it latest, prune."""
        rng = ck.rng_state(self.d.device)
        rngs = [rng]
        if self.d.world > 1:
            rngs = [None] * self.d.world
            dist.all_gather_object(rngs, rng)
        folder = ck.step_dir(self.run_dir, self.step)
        if self.d.main:
            epoch, pos = divmod(self.step, self.steps_per_epoch)
            g = self.global_batch
            position = {"step": self.step, "epoch": epoch, "step_in_epoch": pos, "samples_in_epoch": pos * g,
                        "samples_seen": self.step * g}
            state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "rng": rngs,
                     "position": position, "world_size": self.d.world, "global_batch": self.global_batch,
                     "total_steps": self.total_steps}
            meta = {**position, "tag": tag, "val_scenes": self.val_scenes, "split": self.split_how,
                    "dataset": {"dataroot": str(self.cfg.dataroot), "version": self.cfg.version},
                    "training_rig": self.training_rig}
            save_train_checkpoint(folder, self.model, self.model_cfg, None, self.cfg, state, meta)
            ck.mark_latest(self.run_dir, self.step)
            ck.prune(self.run_dir, self.cfg.keep_last, protect=folder)
        self.d.barrier()
        return folder

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(self.cfg, self.run_dir, "config.yaml")
        save_resolved(self.model_cfg, self.run_dir, "model.yaml")
        log = self.run_dir / LOG
        if log.is_file():  # drop what was logged after the checkpoint we resume from (or all, when fresh)
            keep = [ln for ln in log.read_text().splitlines()
                    if ln.strip() and self.step > 0 and json.loads(ln).get("step", 0) <= self.step]
            atomic_write_text(log, "".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        if d.main:
            self._prepare_run_dir()
        d.barrier()
        tb = None
        if d.main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1 if self.step else None)
        net = self.ddp or self.model
        net.train()
        start_step, keys, last = self.step, None, {}
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc="train",
                   disable=not (d.main and cfg.progress), dynamic_ncols=True)
        t_train = time.perf_counter()
        t_win, win_steps, stopped = time.perf_counter(), 0, None
        acc = None
        saved_at = -1
        while self.step < self.total_steps and stopped is None:
            epoch, pos = divmod(self.step, self.steps_per_epoch)
            n = min(self.steps_per_epoch - pos, self.total_steps - self.step)
            order = rank_batches(len(self.sample_ids), cfg.seed, epoch, pos, n, cfg.batch_size, d.world,
                                 d.rank, cfg.grad_accum)
            batches = [[self.sample_ids[i] for i in b] for b in order]
            loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=collate,
                                num_workers=cfg.num_workers, pin_memory=d.device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed))
            it = unwrap_worker_errors(loader)
            for _ in range(n):
                for a in range(cfg.grad_accum):
                    batch = next(it)
                    if self.store is not None:
                        add_vlm_targets(batch, self.store)
                    batch = to_device(batch, d.device)
                    sync = self.ddp is None or a == cfg.grad_accum - 1
                    with contextlib.nullcontext() if sync else self.ddp.no_sync():
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
                            _, losses, _ = net(batch)
                        (losses["total"] / cfg.grad_accum).backward()
                    if keys is None:
                        keys = list(losses)
                    vec = torch.stack([losses[k].detach().float() for k in keys]) / cfg.grad_accum
                    acc = vec if acc is None else acc + vec
                params = [p for p in self.model.parameters() if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
                if not bool(torch.isfinite(norm)):
                    bad = {k: float(v) for k, v in zip(keys, acc.tolist()) if not math.isfinite(v)}
                    raise UserError(f"step {self.step + 1}: non-finite gradient norm (non-finite loss terms "
                                    f"on rank {d.rank}: {bad or 'none'}); lower lr or check the data, then "
                                    f"resume from the last checkpoint")
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                win_steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    if d.world > 1:
                        dist.all_reduce(acc)
                        acc /= d.world
                    dt = time.perf_counter() - t_win
                    sps = win_steps * self.global_batch / max(dt, 1e-9)
                    last = {k: float(v) / win_steps for k, v in zip(keys, acc.tolist())}
                    self._log_step(tb, bar, last, sps, float(norm))
                    acc, t_win, win_steps = None, time.perf_counter(), 0
                if stop_after is not None and self.step >= stop_after:
                    stopped = "stop_after"
                    break
                if cfg.max_minutes and self._time_up():
                    stopped = "max_minutes"
                if (self.step % cfg.ckpt_every == 0 or self.step % self.steps_per_epoch == 0
                        or self.step == self.total_steps or stopped):
                    self._save("epoch_end" if self.step % self.steps_per_epoch == 0 else "step")
                    saved_at = self.step
                if stopped:
                    break
            del it, loader
        bar.close()
        train_time = time.perf_counter() - t_train
        if tb is not None:
            tb.close()
        if stopped == "stop_after":
            return {"steps": self.step, "stopped": stopped}
        if saved_at != self.step:
            self._save("final")
        return self._finish(start_step, train_time, last, stopped)

    def _time_up(self) -> bool:
        up = torch.tensor([float(time.perf_counter() - self.t0 > 60.0 * self.cfg.max_minutes)],
                          device=self.d.device)
        if self.d.world > 1:  # rank 0's clock decides, so every rank stops at the same step
            dist.broadcast(up, 0)
        return bool(up.item())

    def _log_step(self, tb, bar, losses: dict[str, float], sps: float, norm: float) -> None:
        if not self.d.main:
            return
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.opt.param_groups)}
        rec = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "losses": losses, "lr": lrs,
               "grad_norm": norm, "samples_per_s": sps, "time_s": time.perf_counter() - self.t0}
        with open(self.run_dir / LOG, "a") as f:  # append-only; truncated to the checkpoint on resume
            f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{losses['total']:.3f}", samples_s=f"{sps:.2f}")
        if tb is not None:
            for k, v in losses.items():
                tb.add_scalar(f"loss/{k}", v, self.step)
            for k, v in lrs.items():
                tb.add_scalar(f"lr/{k}", v, self.step)
            tb.add_scalar("perf/samples_per_s", sps, self.step)
            tb.add_scalar("perf/grad_norm", norm, self.step)

    def _finish(self, start_step: int, train_time: float, last: dict[str, float], stopped: str | None
                ) -> dict[str, Any]:
        """Export the driving checkpoint and write summary.json (rank 0); every rank returns the summary."""
        done = self.step - start_step
        latest = ck.find_latest(self.run_dir) if self.d.main else None
        summary = {
            "steps": self.step, "steps_this_session": done, "total_steps": self.total_steps,
            "epochs": self.step / self.steps_per_epoch, "stopped_early": stopped,
            "wall_time_s": round(time.perf_counter() - self.t0, 3), "train_time_s": round(train_time, 3),
            "samples_per_s": round(done * self.global_batch / max(train_time, 1e-9), 4),
            "s_per_step": round(train_time / max(done, 1), 4), "final_losses": last,
            "world_size": self.d.world, "global_batch": self.global_batch, "device": str(self.d.device),
            "precision": "bf16" if self.bf16 else "fp32", "model": self.model_cfg.name,
            "vlm_ad": self.model.aux is not None, "feature_coverage": self.coverage,
            "train_samples": len(self.train_infos), "split": self.split_how, "val_scenes": self.val_scenes,
            "checkpoint": str(latest) if latest else None,
            "driving_checkpoint": str(self.run_dir / "driving"),
        }
        if self.d.main:
            meta = {"config_name": self.model_cfg.name, "trained_with_vlm_ad": self.model.aux is not None,
                    "source_checkpoint": str(latest), "step": self.step, "val_scenes": self.val_scenes,
                    "split": self.split_how, "dataset": {"dataroot": str(self.cfg.dataroot),
                                                         "version": self.cfg.version},
                    "training_rig": self.training_rig}
            export_driving_checkpoint(self.model.driver, self.model_cfg, self.run_dir / "driving", meta)
            atomic_write_json(self.run_dir / SUMMARY, summary)
            self.log(f"done: {self.step} steps, {summary['samples_per_s']:.2f} samples/s, final loss "
                     f"{last.get('total', float('nan')):.4f}; driving checkpoint {self.run_dir / 'driving'}")
        self.d.barrier()
        return summary
