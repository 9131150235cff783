"""Apply this project's two changes to a leaderboard 1.0 / CARLA set-up (idempotent, checked).

    python -m carla_eval.patch_leaderboard --leaderboard-root ~/lb/leaderboard --carla-root ~/carla-0.9.16

1. `carla_eval/patches/agent_wrapper_6_cameras.yaml`: leaderboard 1.0 allows at most 4 RGB cameras;
   the rig has 6. A regex edit that must match exactly once; a marker makes re-running a no-op.
2. `carla_eval/patches/global_route_planner_dao.py`: CARLA >= 0.9.12 removed
   `agents.navigation.global_route_planner_dao`, which leaderboard 1.0's route_manipulation.py imports.
   The compatibility module is copied into `<carla_root>/PythonAPI/carla/agents/navigation/` when CARLA has
   no module of that name (never over CARLA's own, e.g. 0.9.10.1).

A file that matches neither the unpatched pattern nor the marker is a `UserError` (an unexpected
leaderboard version), never a silent partial patch.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import yaml

from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_text

PATCH_DIR = Path(__file__).with_name("patches")
EDITS = ("agent_wrapper_6_cameras.yaml",)
COMPAT = "global_route_planner_dao.py"


def apply_edit(spec_path: Path, root: Path) -> str:
    """Apply one edit spec under `root`; returns "applied" or "already applied"."""
    spec = yaml.safe_load(spec_path.read_text())
    target = root / spec["file"]
    if not target.is_file():
        raise UserError(f"{target} not found: --leaderboard-root must be a leaderboard 1.0 clone")
    text = target.read_text()
    if spec["marker"] in text:
        return "already applied"
    new, n = re.subn(spec["find"], spec["replace"], text)
    if n != 1:
        raise UserError(
            f"{target}: expected exactly one match of {spec['find']!r}, found {n}; this is not the "
            f"leaderboard 1.0 file the patch {spec_path.name} was written for"
        )
    atomic_write_text(target, new)
    return "applied"


def install_compat(carla_root: Path) -> str:
    """Copy the DAO compatibility module into CARLA's agents when CARLA lacks the module."""
    nav = carla_root / "PythonAPI" / "carla" / "agents" / "navigation"
    if not (nav / "global_route_planner.py").is_file():
        raise UserError(
            f"{nav}/global_route_planner.py not found: --carla-root must be a CARLA server folder"
        )
    dest = nav / COMPAT
    if dest.is_file():
        return "already installed" if "VLMAD_COMPAT" in dest.read_text() else "not needed (CARLA has its own)"
    shutil.copyfile(PATCH_DIR / COMPAT, dest)
    return "installed"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m carla_eval.patch_leaderboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--leaderboard-root", required=True, help="leaderboard 1.0 clone (holds leaderboard/)")
    p.add_argument("--carla-root", default=None, help="CARLA server folder (for the compatibility module)")
    a = p.parse_args(argv)
    for name in EDITS:
        print(f"{name}: {apply_edit(PATCH_DIR / name, Path(a.leaderboard_root))}")
    if a.carla_root:
        print(f"{COMPAT}: {install_compat(Path(a.carla_root))}")
    return 0


if __name__ == "__main__":
    cli_main(main)
