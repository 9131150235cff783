"""End to end: the README's main job (`scripts.main --smoke`) on the embedded defaults.

Collect -> index -> rule-teacher annotations -> MiniLM features -> expert drive -> per variant and seed:
train (test size), open-loop evaluation, offline-world drive, score -> one table, each through the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("main") / "run"
    cmd = [sys.executable, "-m", "scripts.main", "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_main_job_produces_the_table_with_honest_labels(smoke_run):
    out, stdout = smoke_run
    table = (out / "table.md").read_text()
    # a row per metric convention and a closed-loop row; VLM-AD also its paired difference and its checks
    assert table.count("| VAD |") == 3 and table.count("| VAD + VLM-AD (Q1+Q2) |") == 5
    assert "VAD / ST-P3 convention" in table and "UniAD convention" in table
    assert "one seed, no spread: 1 seed (0)" in table  # the smoke run has one seed and says so
    assert "| expert (privileged) |" in table and "not CARLA" in table
    for variant in ("vad", "vad_vlm-ad_q1_q2"):
        metrics = json.loads((out / "runs" / variant / "seed_0" / "openloop.json").read_text())
        assert metrics["num_samples"] > 0
        assert set(metrics["vad"]["l2"]) == {"1s", "2s", "3s", "avg"}
        report = json.loads((out / "runs" / variant / "seed_0" / "closedloop_report.json").read_text())
        assert report["source"] == "offline_world" and report["is_carla"] is False
    assert "not a VLM" in stdout and "not CARLA" in stdout and "test size" in stdout
    res = json.loads((out / "results.json").read_text())
    assert res["baseline"] == "VAD" and res["seeds"] == [0]
    assert (out / "seeds.png").stat().st_size > 1000
    # The VLM-AD run really trained the heads; the exported driving checkpoint has none of them.
    run = out / "runs" / "vad_vlm-ad_q1_q2" / "seed_0"
    summary = json.loads((run / "summary.json").read_text())
    assert any(k.startswith("vlm") for k in summary["final_losses"])
    from safetensors import safe_open

    with safe_open(str(run / "driving" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("aux")]
    # why VLM-AD helps or not: measured on the run's training checkpoint (the heads are only there)
    checks = json.loads((run / "vlmad_checks.json").read_text())
    g = checks["losses_and_gradients"]
    assert 0.0 < g["grad_share_vlm"] < 1.0 and g["lambda1_align"] > 0.0
    assert checks["teacher"]["text"]["current"]["valid"] > 0 and checks["params"]["heads"] > 0
    assert "## VLM-AD checks" in table


def test_main_job_rerun_resumes_without_redoing_work(smoke_run):
    out, _ = smoke_run
    summary = out / "runs" / "vad" / "seed_0" / "summary.json"
    before = summary.stat().st_mtime
    proc = subprocess.run([sys.executable, "-m", "scripts.main", "--smoke", "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[collect]" in proc.stdout and "skipped" in proc.stdout
    assert "[train_vad_s0]" in proc.stdout and "[drive_vad_s0]" in proc.stdout
    assert summary.stat().st_mtime == before  # not retrained
