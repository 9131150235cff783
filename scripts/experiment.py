"""Run an experiment: every variant x seed trained, evaluated open loop and driven, then one table.

    python -m scripts.experiment --preset cpu_protocol               # docs/experiments.md's CPU protocol
    python -m scripts.experiment --preset main --out runs/main        # the README's main job
    python -m scripts.experiment --config my.yaml --set seeds=[0,1]   # a YAML over the defaults
    python -m scripts.experiment --preset cpu_protocol --table-only   # re-render the table of what exists

A config (experiments/config.py: ExperimentConfig) names the dataset (an existing nuScenes-format root, or an
offline-world collection), the variants (scripts.train arguments; the first is the baseline), the seeds, the
training budget and the evaluation (held-out open loop, offline-world routes). Each run has its own folder
(`runs/<variant>/seed_<s>/`, with scripts.train's resolved config); re-running the same command skips what
is done and resumes what was interrupted.

Writes <out>/table.md (Table 1 layout, mean +/- std over seeds for both metric conventions; closed-loop DS /
RC / infractions per km; each variant's paired difference against the baseline with a 95 % CI),
<out>/results.json (every run's numbers) and <out>/seeds.png (per-seed points beside the means).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from experiments.config import PRESETS, ExperimentConfig
from experiments.steps import run_steps
from experiments.summary import write_summary
from vlmad.cli import script_parser
from vlmad.config import load_config
from vlmad.errors import UserError, cli_main


def labels(cfg: ExperimentConfig) -> str:
    """One line saying what produced the numbers: never pretend the embedded defaults are the real thing."""
    d = cfg.data
    data = (f"dataset {d.dataroot} ({d.version})" if d.dataroot else
            f"offline world {d.collect.town} (not CARLA): {d.collect.drives} expert drives x "
            f"{d.collect.frames} keyframes")
    teacher = ("rule teacher (privileged ground truth, not a VLM)" if d.teacher == "rule"
               else f"teacher {d.teacher}")
    encoder = "MiniLM (not CLIP)" if d.encoder == "minilm" else d.encoder
    nano = cfg.train.model == "vad_nano"
    model = f"{cfg.train.model}" + (" (test size, not VAD-Tiny/Base)" if nano else "")
    extra = f" ({' '.join(cfg.train.extra_args)})" if cfg.train.extra_args else ""
    drive = (f"; agents driven on {cfg.closed_loop.backend}" if cfg.closed_loop.routes
             and cfg.closed_loop.backend != "torch" else "")
    return (f"Produced by: {data}; {teacher}; {encoder}; {model}, {cfg.train.steps} steps x batch "
            f"{cfg.train.batch_size}{extra}{drive}. "
            "Not comparable with the paper's nuScenes / CARLA numbers.")


def resolve(preset: str | None, config: str | None, overrides: list[str],
            out: str | None) -> ExperimentConfig:
    """The experiment: a preset (or the defaults), then a YAML, then --set overrides, then --out."""
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    base = copy.deepcopy(PRESETS[preset]) if preset else ExperimentConfig()
    cfg = load_config(ExperimentConfig, base, config, overrides, replace=("variants",))
    if out is not None:
        cfg.out = out
    return cfg


def run(cfg: ExperimentConfig, table_only: bool = False) -> dict:
    t0 = time.time()
    timings = {} if table_only else run_steps(cfg)
    res, md = write_summary(cfg, labels(cfg))
    res["step_times_s"] = timings
    res["wall_time_s"] = round(time.time() - t0, 1)
    print("\n" + md)
    print(f"wall time {res['wall_time_s']} s; outputs in {cfg.out}/ (table.md, results.json, seeds.png)")
    return res


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.experiment", __doc__)
    p.add_argument("--preset", help=f"a complete experiment: {', '.join(sorted(PRESETS))}")
    p.add_argument("--config", help="YAML with ExperimentConfig fields, merged over the preset or defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set train.steps=200 --set seeds=[0,1] (repeatable)")
    p.add_argument("--out", help="output folder (default: the config's out)")
    p.add_argument("--table-only", action="store_true", help="only re-render the table of the finished runs")
    a = p.parse_args(argv)
    cfg = resolve(a.preset, a.config, a.overrides, a.out)
    if a.table_only and not Path(cfg.out).is_dir():
        raise UserError(f"--table-only: {cfg.out} does not exist (run the experiment first)")
    run(cfg, a.table_only)
    return 0


if __name__ == "__main__":
    cli_main(main)
