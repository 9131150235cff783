"""An experiment as a table of steps, each a real CLI of the project run as a subprocess.

Every step names the output it writes (atomically) and is skipped when that output exists, so re-running an
interrupted experiment continues where it stopped without redoing or duplicating work. A training run that
was interrupted resumes from its last checkpoint (`scripts.train --resume`); a drive from its last finished
route (`scripts.drive --resume`).

Layout below `out/`:
    experiment.yaml                  the resolved ExperimentConfig
    dataset/, infos_<version>.json   the collected dataset and its index (or the config's dataroot)
    annotations.sqlite, features/    teacher answers and their text features
    runs/<variant>/seed_<s>/         scripts.train's run folder, plus openloop.json and closedloop*.json
                                     (results, report, and the ride-along diagnosis: world/ride_along.py)
    expert/                          the expert's closed-loop results (when enabled)
    logs/<step>.log                  each step's console output
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from experiments.config import ExperimentConfig
from nusc.infos import default_cache_path
from vlmad.config import save_resolved
from vlmad.errors import UserError


@dataclass
class Step:
    """One CLI call: `python -m <argv>`, done once `output` exists."""

    name: str  # unique, used for the log file name
    output: Path  # what the step writes; its existence marks the step done
    argv: list[str]  # module and arguments
    always: bool = False  # run even when `output` exists (cheap idempotent steps: indexes, scoring)
    before: Callable[[], None] | None = None  # prepares inputs (e.g. writes an agent YAML)
    # Steps of one lane run in order; different lanes may run at once (ExperimentConfig.jobs). The data
    # steps have no lane: every lane needs them, so they run first.
    lane: str = ""


ONNX_FILE = "model.onnx"  # a run's exported driving graph (closed_loop.backend: onnxruntime)


def slug(name: str) -> str:
    """A folder name for a variant name: 'VAD + VLM-AD (Q1+Q2)' -> 'vad_vlm-ad_q1_q2'."""
    s = re.sub(r"[^a-z0-9-]+", "_", name.lower()).strip("_")
    return s or "variant"


def run_dir(cfg: ExperimentConfig, variant: str, seed: int) -> Path:
    return Path(cfg.out) / "runs" / slug(variant) / f"seed_{seed}"


def dataroot(cfg: ExperimentConfig) -> Path:
    return Path(cfg.data.dataroot) if cfg.data.dataroot else Path(cfg.out) / "dataset"


def drive_town(cfg: ExperimentConfig) -> str:
    return cfg.closed_loop.town or cfg.data.collect.town


def build_steps(cfg: ExperimentConfig) -> list[Step]:
    """The experiment's steps in order: data, teacher, features, then per run train / evaluate / drive."""
    out, d, c = Path(cfg.out), cfg.data, cfg.closed_loop
    root, version = dataroot(cfg), d.version
    store, feats = out / "annotations.sqlite", out / "features" / "all.safetensors"
    steps: list[Step] = []
    if not d.dataroot:
        col = d.collect
        steps.append(Step("collect", root / version, [
            "scripts.collect", "--town", col.town, "--drives", str(col.drives), "--frames", str(col.frames),
            "--seed", str(col.seed), "--image-size", col.image_size, "--version", version, "--out", str(root),
            *[f"--set={o}" for o in col.world_overrides]]))
    # the index goes to the dataset's default cache, the one every later step (annotate, train, eval)
    # reads: written elsewhere, each of them rebuilt it (3 min on the protocol's 2,400 keyframes)
    steps.append(Step("infos", default_cache_path(root, version), [
        "scripts.build_infos", "--dataroot", str(root), "--version", version], always=True))
    needs_teacher = any("--vlm-ad" in a for a in cfg.variants.values())
    if needs_teacher:
        # the store is resumable by itself: the step always runs and sends nothing for answered frames
        steps.append(Step("annotate", store, [
            "scripts.annotate", "--dataroot", str(root), "--version", version, "--teacher", d.teacher,
            "--store", str(store), "--no-progress"], always=True))
        if d.report_samples > 0:
            steps.append(Step("report", out / "annotation_report", [
                "scripts.annotation_report", "--store", str(store),
                "--out-dir", str(out / "annotation_report"),
                "--dataroot", str(root), "--version", version, "--sample", str(d.report_samples)]))
        steps.append(Step("encode", feats, [
            "scripts.encode_text", "--store", str(store), "--encoder", d.encoder, "--out-dir",
            str(feats.parent), "--split", "all", "--no-progress"]))
    drive_common = ["--town", drive_town(cfg), "--num-routes", str(c.routes), "--seed", str(c.seed),
                    "--min-length", str(c.min_length), "--max-length", str(c.max_length),
                    *[f"--set={o}" for o in c.world_overrides]]
    if c.routes and c.expert:
        steps += _drive_steps("expert", "expert (privileged)", out / "expert", ["--expert"], drive_common)
    for variant, args in cfg.variants.items():
        for seed in cfg.seeds:
            rd, tag = run_dir(cfg, variant, seed), f"{slug(variant)}_s{seed}"
            train = ["scripts.train", "--config", cfg.train.model, "--dataroot", str(root),
                     "--version", version,
                     "--out", str(rd), "--max-steps", str(cfg.train.steps), "--batch-size",
                     str(cfg.train.batch_size), "--num-workers", "0", "--seed", str(seed), "--device", "cpu",
                     "--quiet", *cfg.train.extra_args, *args]
            if "--vlm-ad" in args:
                train += ["--features", str(feats), *cfg.train.vlm_ad_args]
            steps.append(Step(f"train_{tag}", rd / "summary.json", train, before=_resume_flag(train, rd),
                              lane=tag))
            steps.append(Step(f"eval_{tag}", rd / "openloop.json", [
                "scripts.eval_openloop", "--dataroot", str(root), "--version", version,
                "--checkpoint", str(rd),
                "--split", cfg.openloop_split, "--out", str(rd / "openloop.json"), "--name", variant,
                "--device", "cpu", "--quiet"], lane=tag))
            if "--vlm-ad" in args and seed == cfg.seeds[0]:  # why the heads help or not (first seed)
                steps.append(Step(f"checks_{tag}", rd / "vlmad_checks.json", [
                    "scripts.vlmad_checks", "--run", str(rd), "--dataroot", str(root), "--version", version,
                    "--features", str(feats), "--out", str(rd / "vlmad_checks.json")], lane=tag))
            if c.routes:
                agent_yaml = rd / "agent_offline.yaml"
                if c.backend == "onnxruntime":  # the agent's rig (carla_vad) sizes the cross-attention
                    steps.append(Step(f"export_{tag}", rd / ONNX_FILE, [
                        "scripts.export_onnx", "--checkpoint", str(rd / "driving"),
                        "--out", str(rd / ONNX_FILE), "--rig", "carla_vad"], lane=tag))
                who = ["--agent-config", str(agent_yaml), "--diagnose", str(rd / "closedloop_diagnosis.json")]
                steps += _drive_steps(tag, f"{variant}, seed {seed}", rd, who, drive_common,
                                      before=_agent_yaml(agent_yaml, c.camera_size, c.model_every, c.backend))
    return steps


def _drive_steps(tag: str, label: str, folder: Path, who: list[str], common: list[str],
                 before: Callable[[], None] | None = None) -> list[Step]:
    results, report = folder / "closedloop.json", folder / "closedloop_report.json"
    drive = Step(f"drive_{tag}", report, ["scripts.drive", *who, *common, "--out", str(results)], lane=tag,
                 before=before)
    prep = drive.before

    def before_drive() -> None:  # an interrupted drive continues at its first unfinished route
        if prep is not None:
            prep()
        if results.exists() and "--resume" not in drive.argv:
            drive.argv.append("--resume")

    drive.before = before_drive
    # both are done once the report exists: results alone may be a drive interrupted after some routes
    score = Step(f"score_{tag}", report, lane=tag, argv=[
        "carla_eval.report", str(results), "--json", str(report),
        "--markdown", str(folder / "closedloop_report.md"), "--label", label])
    return [drive, score]


def _resume_flag(argv: list[str], rd: Path) -> Callable[[], None]:
    def before() -> None:
        if (rd / "checkpoints").exists() and "--resume" not in argv:
            argv.append("--resume")

    return before


def _agent_yaml(path: Path, camera_size: tuple[int, int], model_every: int,
                backend: str = "torch") -> Callable[[], None]:
    def before() -> None:
        # cameras rendered at the model's input size (same FOV: saves simulator time only)
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = camera_size
        text = f"checkpoint: driving\ncamera_size: [{w}, {h}]\nmodel_every: {model_every}\n"
        if backend != "torch":
            text += f"backend: {backend}\nonnx: {ONNX_FILE}\n"  # relative to the YAML's folder
        path.write_text(text)

    return before


def run_cli(step: Step, log_dir: Path, threads: int | None = None) -> float:
    """Run one step's CLI with its output in <log_dir>/<name>.log; returns seconds.

    `threads` None streams the output to the console too (one step at a time); a number runs the step
    quietly (other steps are running beside it) with that many torch / OpenMP threads.
    """
    cmd = [sys.executable, "-m", *step.argv]
    print(f"\n=== [{step.name}] {' '.join(step.argv)}", flush=True)
    t0 = time.time()
    log_dir.mkdir(parents=True, exist_ok=True)
    env = None
    if threads is not None:  # torch reads these at import: the child's thread pool size
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_file = log_dir / f"{step.name}.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        # Raw chunks, not lines: progress bars redraw with '\r', which line iteration would split.
        while chunk := proc.stdout.read1(65536):
            if threads is None:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            log.write(chunk)
        code = proc.wait()
    if code != 0:
        raise UserError(f"step {step.name!r} failed (exit {code}); its output is in {log_file}")
    dt = time.time() - t0
    print(f"=== [{step.name}] done in {dt:.1f} s", flush=True)
    return dt


def _run_lane(steps: list[Step], log_dir: Path, threads: int | None) -> dict[str, float]:
    """Run one lane's steps in order, skipping the finished ones; returns {step name: seconds}."""
    timings: dict[str, float] = {}
    for step in steps:
        if step.output.exists() and not step.always:
            print(f"=== [{step.name}] {step.output} exists: skipped (delete it to redo the step)", flush=True)
            continue
        if step.before is not None:
            step.before()
        timings[step.name] = round(run_cli(step, log_dir, threads), 1)
    return timings


def run_steps(cfg: ExperimentConfig) -> dict[str, float]:
    """Run every step not yet done; returns {step name: seconds} of the steps that ran.

    The data steps run first, one at a time; then the lanes (one per run, one for the expert), `cfg.jobs`
    at once. A failed lane does not stop the others; the error names every failed step once all are done.
    """
    bad = cfg.problems()
    if bad:
        raise UserError("experiment config: " + "; ".join(bad))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out, "experiment.yaml")
    log_dir = out / "logs"
    steps = build_steps(cfg)
    lanes: dict[str, list[Step]] = {}
    for step in steps:
        lanes.setdefault(step.lane, []).append(step)
    timings = _run_lane(lanes.pop("", []), log_dir, None)
    if cfg.jobs == 1:
        for lane in lanes.values():
            timings |= _run_lane(lane, log_dir, None)
        return timings
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    print(f"=== {len(lanes)} lanes, {cfg.jobs} at a time ({threads} thread(s) each); "
          f"progress in {log_dir}/<step>.log", flush=True)
    errors: list[str] = []
    with ThreadPoolExecutor(cfg.jobs) as pool:
        futures = [pool.submit(_run_lane, lane, log_dir, threads) for lane in lanes.values()]
        for f in futures:
            try:
                timings |= f.result()
            except UserError as e:
                errors.append(str(e))
    if errors:
        raise UserError("; ".join(errors))
    return timings
