"""Run-folder checkpoints: atomic step checkpoints, the `latest` pointer, RNG state, pruning.

    <run>/checkpoints/step_00001000/   a training checkpoint (checkpoint_formats.save_train_checkpoint):
                                       weights, config.yaml, meta.json and optimizer.pt, which holds the
                                       optimizer, the scheduler, every rank's RNG states and the position in
                                       the data
    <run>/checkpoints/latest.json      {"step": 1000, "path": "step_00001000"}, written after the folder

A checkpoint folder appears only complete (it is staged and renamed into place by
models.checkpoint_formats), and latest.json is written only after that rename, so an interrupted save leaves
the previous checkpoint as the latest. `find_latest` does not trust latest.json alone: it falls back to the
highest complete step folder.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint_formats import META, WEIGHTS
from vlmad.errors import UserError
from vlmad.io import atomic_write_json

CKPT_DIR = "checkpoints"
LATEST = "latest.json"
_STEP_RE = re.compile(r"^step_(\d{8})$")


def step_dir(run: Path, step: int) -> Path:
    return Path(run) / CKPT_DIR / f"step_{step:08d}"


# ----------------------------------------------------------------------------------------------------
# RNG state (kept to plain containers and tensors: optimizer.pt loads with weights_only=True)
# ----------------------------------------------------------------------------------------------------
def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and (on GPU) current-CUDA-device RNG states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": list(random.getstate()),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ----------------------------------------------------------------------------------------------------
# Finding and pruning
# ----------------------------------------------------------------------------------------------------
def _complete(folder: Path) -> bool:
    return (folder / META).is_file() and (folder / WEIGHTS).is_file()


def list_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete step checkpoint of the run, by step. Staging folders are hidden
    (their names start with a dot) and never listed."""
    root = Path(run) / CKPT_DIR
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and _complete(p):
            out.append((int(m.group(1)), p))
    return sorted(out)


def find_latest(run: str | Path) -> Path | None:
    """The checkpoint to resume from: latest.json's target when it is complete, else the highest complete
    step folder; None when the run has no checkpoint."""
    root = Path(run) / CKPT_DIR
    pointer = root / LATEST
    if pointer.is_file():
        try:
            target = root / json.loads(pointer.read_text())["path"]
            if _complete(target):
                return target
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            pass  # a damaged pointer is not fatal: the folders themselves say what is complete
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def mark_latest(run: str | Path, step: int) -> None:
    """Point latest.json at step `step` (atomic; only call once that checkpoint is complete)."""
    folder = step_dir(Path(run), step)
    if not _complete(folder):
        raise RuntimeError(f"refusing to mark the incomplete checkpoint {folder} as latest")
    atomic_write_json(Path(run) / CKPT_DIR / LATEST, {"step": step, "path": folder.name})


def prune(run: str | Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the `keep_last` newest step checkpoints (never `protect`); keep_last 0 keeps all."""
    if keep_last <= 0:
        return
    found = list_checkpoints(run)
    for _, folder in found[:-keep_last]:
        if protect is None or folder.resolve() != protect.resolve():
            shutil.rmtree(folder, ignore_errors=True)


def check_resumable(state: dict[str, Any] | None, folder: Path) -> dict[str, Any]:
    """The trainer state of optimizer.pt, or a UserError saying why this checkpoint cannot be resumed."""
    if not state or not all(k in state for k in ("optimizer", "scheduler", "rng", "position")):
        raise UserError(f"checkpoint {folder} has no complete trainer state (optimizer.pt); it can be "
                        "exported or evaluated but not resumed; start a new run (other --out)")
    return state
