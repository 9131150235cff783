"""scripts.experiment: the step table, resumption, aggregation over seeds and paired intervals.

The end-to-end run (real CLIs) is tests/test_main_smoke.py; here the runs' output files are written by the
test, so every number in the table is checked against an independent computation.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.config import PRESETS, ClosedLoopSpec, ExperimentConfig
from experiments.steps import build_steps, run_dir, run_steps, slug
from experiments.summary import collect_results, paired_ci, render_markdown, write_summary
from nusc.infos import default_cache_path
from scripts.experiment import labels, resolve
from scripts.experiment import main as experiment_main
from vlmad.errors import UserError

T_975 = {1: 12.706204736, 2: 4.302652730}  # Student's t quantiles (tables), df 1 and 2


def _cfg(tmp_path: Path, seeds=(0, 1, 2)) -> ExperimentConfig:
    return ExperimentConfig(name="t", out=str(tmp_path / "exp"), seeds=seeds,
                            variants={"VAD": [], "VAD + VLM-AD (Q1+Q2)": ["--vlm-ad"]},
                            closed_loop=ClosedLoopSpec(routes=3))


def _write_run(rd: Path, l2: float, col: float, ds: float, rc: float) -> None:
    rd.mkdir(parents=True, exist_ok=True)
    conv = {"l2": {"1s": l2 / 2, "2s": l2, "3s": l2 * 1.5, "avg": l2},
            "collision": {"1s": 0.0, "2s": col, "3s": col, "avg": col}}
    (rd / "openloop.json").write_text(json.dumps({"num_samples": 68, "vad": conv, "uniad": conv}))
    (rd / "closedloop_report.json").write_text(json.dumps({
        "driving_score": ds, "route_completion": rc, "infractions_per_km": {"total": 10.0}, "km_driven": 1.5,
        "routes": [{}, {}, {}]}))


def test_slug_and_run_dirs_are_distinct(tmp_path):
    cfg = _cfg(tmp_path)
    assert slug("VAD + VLM-AD (Q1+Q2)") == "vad_vlm-ad_q1_q2"
    dirs = {run_dir(cfg, v, s) for v in cfg.variants for s in cfg.seeds}
    assert len(dirs) == 6


def test_steps_cover_every_variant_and_seed_in_order(tmp_path):
    cfg = _cfg(tmp_path, seeds=(0, 1))
    steps = build_steps(cfg)
    names = [s.name for s in steps]
    assert names[:5] == ["collect", "infos", "annotate", "report", "encode"]
    assert names[5:7] == ["drive_expert", "score_expert"]
    for tag in ("vad_s0", "vad_s1", "vad_vlm-ad_q1_q2_s0", "vad_vlm-ad_q1_q2_s1"):
        i = names.index(f"train_{tag}")
        checks = [f"checks_{tag}"] if tag == "vad_vlm-ad_q1_q2_s0" else []  # VLM-AD runs, first seed
        assert names[i + 1: i + 4 + len(checks)] == [f"eval_{tag}", *checks, f"drive_{tag}", f"score_{tag}"]
    by = {s.name: s for s in steps}
    vlm_train = by["train_vad_vlm-ad_q1_q2_s1"].argv
    assert "--vlm-ad" in vlm_train and "--features" in vlm_train
    assert "--features" not in by["train_vad_s0"].argv
    seed_at = by["train_vad_s1"].argv.index("--seed")
    assert by["train_vad_s1"].argv[seed_at + 1] == "1"
    # every run drives the same routes (same seed, lengths, town) as the expert
    route_args = [s.argv[s.argv.index("--town"):s.argv.index("--out")] for s in steps
                  if s.name.startswith("drive")]
    assert len(route_args) == 5 and all(a == route_args[0] for a in route_args)
    # the index is written where every later step reads it (a separate file made each of them rebuild it)
    root = Path(by["train_vad_s0"].argv[by["train_vad_s0"].argv.index("--dataroot") + 1])
    assert by["infos"].output == default_cache_path(root, "v1.0-mini")
    assert "--out" not in by["infos"].argv


def test_onnxruntime_backend_exports_each_run_before_its_drive(tmp_path):
    cfg = _cfg(tmp_path, seeds=(0,))
    cfg.closed_loop.backend = "onnxruntime"
    steps = build_steps(cfg)
    names = [s.name for s in steps]
    by = {s.name: s for s in steps}
    for tag in ("vad_s0", "vad_vlm-ad_q1_q2_s0"):
        assert names.index(f"eval_{tag}") < names.index(f"export_{tag}") == names.index(f"drive_{tag}") - 1
        rd = run_dir(cfg, "VAD" if tag == "vad_s0" else "VAD + VLM-AD (Q1+Q2)", 0)
        exp = by[f"export_{tag}"]
        assert exp.output == rd / "model.onnx"
        assert exp.argv[exp.argv.index("--checkpoint") + 1] == str(rd / "driving")
        by[f"drive_{tag}"].before()  # writes the agent YAML the drive reads
        agent = yaml.safe_load((rd / "agent_offline.yaml").read_text())
        assert agent["backend"] == "onnxruntime" and agent["onnx"] == "model.onnx"
    assert "agents driven on onnxruntime" in labels(cfg)  # the table says which runtime drove
    assert "driven on" not in labels(_cfg(tmp_path))
    cfg.closed_loop.backend = "tensorrt"
    assert any("closed_loop.backend" in p for p in cfg.problems())
    assert "export_vad_s0" not in [s.name for s in build_steps(_cfg(tmp_path, seeds=(0,)))]  # torch: none


def test_no_teacher_steps_without_a_vlmad_variant(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.variants = {"VAD": []}
    names = [s.name for s in build_steps(cfg)]
    assert "annotate" not in names and "encode" not in names


def test_run_skips_done_steps_and_resumes_interrupted_ones(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, seeds=(0,))
    cfg.closed_loop.routes = 0
    ran: list[list[str]] = []

    def fake(step, log_dir, threads=None):
        ran.append(list(step.argv))
        step.output.parent.mkdir(parents=True, exist_ok=True)
        if step.name != "infos" and step.name != "annotate":
            step.output.mkdir() if step.name in ("collect", "report") else step.output.write_text("{}")
        return 0.0

    monkeypatch.setattr("experiments.steps.run_cli", fake)
    run_steps(cfg)
    first = [a[0] for a in ran]
    assert first.count("scripts.train") == 2 and first.count("scripts.eval_openloop") == 2
    ran.clear()
    # an interrupted VLM-AD training (checkpoints, no summary) resumes; finished steps are skipped
    rd = run_dir(cfg, "VAD + VLM-AD (Q1+Q2)", 0)
    (rd / "summary.json").unlink()
    (rd / "checkpoints").mkdir()
    run_steps(cfg)
    assert [a[0] for a in ran] == ["scripts.build_infos", "scripts.annotate", "scripts.train"]
    assert "--resume" in ran[-1]
    assert (Path(cfg.out) / "experiment.yaml").is_file()


def test_paired_interval_matches_student_t():
    m, lo, hi = paired_ci([1.0, 2.0, 3.0])
    half = T_975[2] * 1.0 / math.sqrt(3)
    assert m == pytest.approx(2.0) and lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert paired_ci([0.5]) == (0.5, None, None)


def test_table_has_mean_std_and_paired_differences(tmp_path):
    cfg = _cfg(tmp_path)
    base_l2, vlm_l2 = [0.50, 0.60, 0.55], [0.45, 0.58, 0.47]
    base_ds, vlm_ds = [20.0, 30.0, 25.0], [24.0, 31.0, 30.0]
    for s, (bl, vl, bd, vd) in enumerate(zip(base_l2, vlm_l2, base_ds, vlm_ds)):
        _write_run(run_dir(cfg, "VAD", s), bl, 1.0, bd, 40.0)
        _write_run(run_dir(cfg, "VAD + VLM-AD (Q1+Q2)", s), vl, 0.5, vd, 45.0)
    res = collect_results(cfg)
    agg = res["aggregate"]["VAD"]["vad.l2.avg"]
    assert agg["mean"] == pytest.approx(np.mean(base_l2))
    assert agg["std"] == pytest.approx(np.std(base_l2, ddof=1))
    d = res["paired_vs_baseline"]["VAD + VLM-AD (Q1+Q2)"]["driving_score"]
    diffs = np.subtract(vlm_ds, base_ds)
    half = T_975[2] * diffs.std(ddof=1) / math.sqrt(3)
    assert d["mean"] == pytest.approx(diffs.mean()) and d["ci95"][0] == pytest.approx(diffs.mean() - half)
    md = render_markdown(res, "labels here")
    assert "mean ± std over 3 seeds (0, 1, 2)" in md and "labels here" in md
    assert f"| VAD | {np.mean(base_l2) / 2:.2f} ± {np.std(np.divide(base_l2, 2), ddof=1):.2f} |" in md
    assert f"+{diffs.mean():.2f} [{diffs.mean() - half:+.2f}, {diffs.mean() + half:+.2f}]" in md
    assert md.count("| VAD + VLM-AD (Q1+Q2) |") == 4  # 2 conventions, closed loop, paired
    write_summary(cfg, "x")
    assert (Path(cfg.out) / "seeds.png").stat().st_size > 1000
    assert json.loads((Path(cfg.out) / "results.json").read_text())["baseline"] == "VAD"


def test_missing_runs_show_as_dashes_not_zeros(tmp_path):
    cfg = _cfg(tmp_path, seeds=(0, 1))
    _write_run(run_dir(cfg, "VAD", 0), 0.5, 1.0, 20.0, 40.0)
    res = collect_results(cfg)
    assert res["aggregate"]["VAD"]["vad.l2.avg"]["n"] == 1
    md = render_markdown(res, "")
    assert "| VAD + VLM-AD (Q1+Q2) | - | - |" in md
    # a mean over fewer runs than the experiment's seeds says how many it has
    vad_row = next(line for line in md.splitlines() if line.startswith("| VAD | "))
    assert "0.50 (n=1)" in vad_row
    _write_run(run_dir(cfg, "VAD", 1), 0.7, 1.0, 20.0, 40.0)
    vad_row = next(line for line in render_markdown(collect_results(cfg), "").splitlines()
                   if line.startswith("| VAD | "))
    assert "0.60 ± 0.14 |" in vad_row and "(n=" not in vad_row


def test_parallel_lanes_run_at_once_after_the_data_and_report_every_failure(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, seeds=(0, 1))
    cfg.closed_loop.routes, cfg.jobs = 0, 2
    barrier = threading.Barrier(2, timeout=10)  # broken unless two trainings are in flight together
    lock, ran = threading.Lock(), []

    def fake(step, log_dir, threads=None):
        with lock:
            ran.append((step.name, threads))
        if step.name.startswith("train"):
            barrier.wait()
        if step.name == "eval_vad_s1":
            raise UserError("step 'eval_vad_s1' failed (exit 1)")
        step.output.parent.mkdir(parents=True, exist_ok=True)
        if step.name not in ("infos", "annotate"):
            step.output.mkdir() if step.name in ("collect", "report") else step.output.write_text("{}")
        return 0.0

    monkeypatch.setattr("experiments.steps.run_cli", fake)
    with pytest.raises(UserError, match="eval_vad_s1"):
        run_steps(cfg)
    names = [n for n, _ in ran]
    # the data steps first, one at a time and streamed (threads None); then every run's steps once
    assert names[:5] == ["collect", "infos", "annotate", "report", "encode"]
    per_lane = max(1, (os.cpu_count() or 1) // 2)
    assert all(t is None for _, t in ran[:5]) and all(t == per_lane for _, t in ran[5:])
    assert sorted(names[5:]) == sorted(s.name for s in build_steps(cfg)[5:])  # the failure stopped no lane
    for tag in ("vad_s0", "vad_s1", "vad_vlm-ad_q1_q2_s0", "vad_vlm-ad_q1_q2_s1"):
        assert names.index(f"train_{tag}") < names.index(f"eval_{tag}")  # in order within a lane
    ran.clear()
    with pytest.raises(UserError, match="eval_vad_s1"):  # only the failed step runs again
        run_steps(cfg)
    assert [n for n, _ in ran] == ["infos", "annotate", "eval_vad_s1"]


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="unknown preset"):
        resolve("nope", None, [], None)
    with pytest.raises(UserError, match="distinct seeds"):
        run_steps(ExperimentConfig(out=str(tmp_path / "x"), seeds=(0, 0)))
    with pytest.raises(UserError, match="jobs must be >= 1"):
        run_steps(ExperimentConfig(out=str(tmp_path / "x"), jobs=0))
    with pytest.raises(UserError, match="unknown field"):
        resolve("main", None, ["train.stepz=3"], None)
    with pytest.raises(UserError, match="does not exist"):
        experiment_main(["--preset", "main", "--out", str(tmp_path / "none"), "--table-only"])


def test_presets_meet_their_protocols():
    p = PRESETS["cpu_protocol"]
    assert len(p.seeds) >= 3 and p.closed_loop.routes >= 20
    assert 150.0 <= p.closed_loop.min_length <= p.closed_loop.max_length <= 500.0
    assert p.data.collect.drives * p.data.collect.frames >= 2000  # thousands of keyframes
    assert list(p.variants)[0] == "VAD" and not p.problems()
    assert len(PRESETS["main"].seeds) >= 2  # the main job reports a spread


def test_yaml_variants_replace_the_preset_ones(tmp_path):
    y = tmp_path / "e.yaml"
    y.write_text('variants:\n  "plain": []\n  "Q2 only": ["--vlm-ad", "--set=vlm_ad.use_q1=false"]\n'
                 "seeds: [3, 4]\ntrain: {steps: 7}\n")
    cfg = resolve("main", str(y), ["closed_loop.routes=5"], str(tmp_path / "o"))
    assert cfg.variants == {"plain": [], "Q2 only": ["--vlm-ad", "--set=vlm_ad.use_q1=false"]}
    assert cfg.seeds == (3, 4) and cfg.train.steps == 7 and cfg.closed_loop.routes == 5
    assert cfg.train.batch_size == PRESETS["main"].train.batch_size  # merged, not replaced
    assert cfg.out == str(tmp_path / "o")
