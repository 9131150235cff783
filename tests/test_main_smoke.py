"""End to end: the README's main job (`scripts.main --smoke`) on the embedded defaults.

Collect -> index -> rule-teacher annotations -> MiniLM features -> train VAD and VAD + VLM-AD (test size)
-> open-loop tables -> offline-world driving -> driving-score comparison, each through the real CLI.
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


def test_main_job_produces_both_tables_with_honest_labels(smoke_run):
    out, stdout = smoke_run
    table = (out / "openloop_table.md").read_text()
    for row in ("| VAD (vad_nano) |", "| VAD + VLM-AD (vad_nano) |"):
        assert table.count(row) == 2  # one row per metric convention
    assert "VAD / ST-P3 convention" in table and "UniAD convention" in table
    for tag in ("vad", "vlmad"):
        metrics = json.loads((out / f"openloop_{tag}.json").read_text())
        assert metrics["num_samples"] > 0
        assert set(metrics["vad"]["l2"]) == {"1s", "2s", "3s", "avg"}
    closed = (out / "closedloop_table.md").read_text()
    assert closed.count("offline_world (not CARLA)") == 3  # expert, VAD, VAD + VLM-AD
    assert "not a VLM" in stdout and "not CARLA" in stdout and "test size" in stdout
    # The VLM-AD run really trained the heads; the exported driving checkpoint has none of them.
    summary = json.loads((out / "train_vlmad" / "summary.json").read_text())
    assert any(k.startswith("vlm") for k in summary["final_losses"])
    from safetensors import safe_open

    with safe_open(str(out / "train_vlmad" / "driving" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("aux")]


def test_main_job_rerun_resumes_without_redoing_work(smoke_run):
    out, _ = smoke_run
    before = (out / "train_vad" / "summary.json").stat().st_mtime
    proc = subprocess.run([sys.executable, "-m", "scripts.main", "--smoke", "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[collect]" in proc.stdout and "skipped" in proc.stdout
    assert (out / "train_vad" / "summary.json").stat().st_mtime == before  # not retrained
