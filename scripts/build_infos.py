"""Build (or reuse) the per-keyframe sample index of a nuScenes-format dataset.

    python -m scripts.build_infos --dataroot data/nuscenes --version v1.0-mini --out infos_mini.json

The index is cached in --out (default <dataroot>/vlmad_infos_<version>.json) with a fingerprint of the
input tables and of the code: a second run reuses it unless the inputs changed (use --rebuild to force).
Reads through the real nuscenes-devkit; the CAN bus and map expansions are used when present.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from nusc.infos import build_or_load_infos, default_cache_path, is_cached
from vlmad.cli import script_parser
from vlmad.errors import cli_main


def summary(recs: list[dict]) -> str:
    """A few lines describing an index (scenes, commands, agents, map vectors, CAN bus source)."""
    if not recs:
        return "0 samples"
    scenes = len({r["scene_token"] for r in recs})
    cmds = np.bincount([r["command"] for r in recs], minlength=3)
    full = sum(bool(np.all(r["ego_fut_mask"])) for r in recs)
    agents = sum(len(r["agents"]["labels"]) for r in recs)
    vecs = sum(len(r["map"]) for r in recs)
    derived = sum(bool(r["can_bus_derived"]) for r in recs)
    return (f"{len(recs)} samples in {scenes} scenes; {full} with all 6 future keyframes; commands "
            f"right/left/straight {cmds[0]}/{cmds[1]}/{cmds[2]}; {agents / len(recs):.1f} agents and "
            f"{vecs / len(recs):.1f} map vectors per sample; CAN bus derived from ego poses for {derived} "
            "samples")


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.build_infos", __doc__,
                      epilog="Bad input (wrong --version, missing tables or images, corrupt JSON) "
                             "is reported in one line naming the file.")
    p.add_argument("--dataroot", type=Path, required=True, help="folder holding <version>/ and samples/")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes version folder (default: v1.0-mini)")
    p.add_argument("--out", type=Path, default=None,
                   help="index/cache file (default: <dataroot>/vlmad_infos_<version>.json)")
    p.add_argument("--rebuild", action="store_true", help="ignore an up-to-date cache and rebuild")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = args.out or default_cache_path(args.dataroot, args.version)
    if args.rebuild and out.is_file():
        out.unlink()
    reused = is_cached(args.dataroot, args.version, out)
    t0 = time.perf_counter()
    recs = build_or_load_infos(args.dataroot, args.version, cache=out, progress=not args.quiet)
    dt = time.perf_counter() - t0
    print(f"{'reused' if reused else 'built'} {out} in {dt:.2f} s")
    print(summary(recs))
    return 0


if __name__ == "__main__":
    cli_main(main)
