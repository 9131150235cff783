"""Expert data collection in CARLA through the leaderboard: routes -> drives -> nuScenes-format dataset.

    bash carla_eval/collect.sh --out runs/carla_data --leaderboard-root ~/lb/leaderboard \\
        --carla-root ~/carla-0.9.15 --carla-version 0.9.15 --servers 2 [--routes FILE] [--towns Town01 ...]

1. routes: `--routes FILE` (default: the leaderboard's training routes, LEADERBOARD_ROOT/data/
   routes_training.xml) restricted to `--towns` (default: every town in the file except Town05, the
   evaluation town), written to OUT/collect_routes.xml;
2. drive them with carla_eval/collect_agent.py (track MAP) through carla_eval/launcher.py, exactly as
   run_evaluation.sh drives an evaluation: parallel servers, crash restarts, `--resume`; the agent writes
   one drive per route into OUT/parts, the launcher its results and report into OUT/eval;
3. finalize: the drives become the dataset OUT/dataset (nuScenes tables, images, CAN bus, map from each
   town's OpenDRIVE through world.geometry, as the offline collector writes it). nuScenes has 4 map names,
   so more than 4 towns are split into OUT/dataset_1, OUT/dataset_2, ... (4 towns each, towns sorted).

Every other option goes to the launcher (`--servers`, `--carla-root`, `--resume`, ...: see
`bash carla_eval/run_evaluation.sh --help`); `--checkpoint` and `--track` are set by this script.
`python -m carla_eval.collect finalize --parts OUT/parts --out OUT` redoes step 3 alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from carla_eval import launcher
from nusc.bench2drive import cached_drive_rig
from nusc.writer import RecordedDrive, write_nuscenes
from routes.parse import parse_routes, write_routes
from vlmad.errors import UserError, cli_main

TRAINING_ROUTES = "data/routes_training.xml"  # leaderboard 1.0's training routes, under --leaderboard-root
EVAL_TOWN = "Town05"
AGENT = "carla_eval/collect_agent.py"
TOWNS_PER_DATASET = 4  # nusc.writer aliases each town to one of nuScenes' 4 map names
BASE_TIME_US = 1_800_000_000_000_000  # scene i starts at BASE + i * 1000 s (as the offline collector)
_OURS = ("--checkpoint", "--track", "--routes-dir")  # set here: refused on the command line


def select_towns(towns_in_file: list[str], towns: list[str] | None) -> list[str]:
    """`towns` (each must be in the file) or, by default, every town of the file but Town05."""
    if towns:
        unknown = sorted(set(towns) - set(towns_in_file))
        if unknown:
            raise UserError(f"--towns {unknown}: the route file has only {sorted(set(towns_in_file))}")
        if EVAL_TOWN in towns:
            print(f"warning: {EVAL_TOWN} is the evaluation town; collecting training data there leaks the "
                  "benchmark", file=sys.stderr)
        return sorted(set(towns))
    return sorted(set(towns_in_file) - {EVAL_TOWN})


def prepare(routes_file: Path, towns: list[str] | None, out: Path) -> tuple[Path, list[str]]:
    """Write OUT/collect_routes.xml (the selected towns' routes); returns (its path, the towns)."""
    if not routes_file.is_file():
        raise UserError(f"route file {routes_file} not found (pass --routes FILE, or --leaderboard-root "
                        f"holding {TRAINING_ROUTES})")
    routes = parse_routes(routes_file)
    chosen = select_towns([r.town for r in routes], towns)
    sel = [r for r in routes if r.town in chosen]
    if not sel:
        raise UserError(f"no route of {routes_file} is in the towns {chosen}")
    out.mkdir(parents=True, exist_ok=True)
    return write_routes(sel, out / "collect_routes.xml"), chosen


def _shifted(drive: RecordedDrive, idx: int) -> RecordedDrive:
    """The drive as scene-<idx + 1>, its clock starting at BASE_TIME_US + idx * 1000 s."""
    t0 = drive.frames[0].timestamp_us
    for f in drive.frames:
        f.timestamp_us = BASE_TIME_US + idx * 1_000_000_000 + (f.timestamp_us - t0)
    drive.scene_name = f"scene-{idx + 1:04d}"
    return drive


def town_map_polylines(xodr: Path) -> list[tuple[str, np.ndarray]]:
    """The VAD map elements of a town from its OpenDRIVE (the offline world's extraction)."""
    import carla

    from world.geometry import RoadGeometry

    return RoadGeometry.from_map(carla.Map(xodr.stem, xodr.read_text())).map_polylines()


def finalize(parts: Path, out: Path, version: str = "v1.0-trainval", overwrite: bool = False) -> list[Path]:
    """The drives in `parts` as nuScenes-format dataset(s) under `out`; returns the dataset folders."""
    from world.collect import load_drive

    files = sorted(parts.glob("*.npz"))
    if not files:
        raise UserError(f"no recorded drive in {parts} (did any route run? see the logs in the eval folder)")
    drives = []
    for f in files:
        d = load_drive(f, None)
        d.rig = cached_drive_rig(d)
        drives.append(d)
    towns = sorted({d.location for d in drives})
    groups = [towns[i: i + TOWNS_PER_DATASET] for i in range(0, len(towns), TOWNS_PER_DATASET)]
    written = []
    for g, group in enumerate(groups):
        ds = [_shifted(d, i) for i, d in enumerate(d for d in drives if d.location in group)]
        for town in group:
            xodr = parts / f"{town}.xodr"
            if not xodr.is_file():
                raise UserError(f"{xodr} missing: the collection agent writes it with the town's first drive")
            first = next(d for d in ds if d.location == town)
            first.map_polylines = town_map_polylines(xodr)  # one map per location: the first drive holds it
        root = out / ("dataset" if len(groups) == 1 else f"dataset_{g + 1}")
        write_nuscenes(root, version, ds, overwrite=overwrite)
        keys = sum(f.is_keyframe for d in ds for f in d.frames)
        print(f"wrote {root}: {len(ds)} drives, {keys} keyframes, towns {group}")
        written.append(root)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carla_eval/collect.sh", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routes", type=Path, help=f"route XML (default: LEADERBOARD_ROOT/{TRAINING_ROUTES})")
    p.add_argument("--towns", nargs="+", help=f"only these towns' routes (default: all but {EVAL_TOWN})")
    p.add_argument("--out", type=Path, required=True, help="output folder: routes, parts, eval, dataset")
    p.add_argument("--version", default="v1.0-trainval", help="nuScenes version name of the dataset")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset this project wrote in OUT")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["finalize"]:
        fp = argparse.ArgumentParser(prog="python -m carla_eval.collect finalize")
        fp.add_argument("--parts", type=Path, required=True)
        fp.add_argument("--out", type=Path, required=True)
        fp.add_argument("--version", default="v1.0-trainval")
        fp.add_argument("--overwrite", action="store_true")
        f = fp.parse_args(argv[1:])
        finalize(f.parts, f.out, f.version, f.overwrite)
        return 0
    a, rest = build_parser().parse_known_args(argv)
    bad = [r for r in rest if r.split("=", 1)[0] in _OURS]
    if bad:
        raise UserError(f"{bad}: collect.sh sets these itself (the agent config is OUT/parts, track MAP)")
    largs = launcher.build_parser().parse_args(rest)
    cfg = launcher.config_from_args(largs)
    routes_file = a.routes or Path(cfg.leaderboard_root or ".") / TRAINING_ROUTES
    route_xml, towns = prepare(routes_file, a.towns, a.out)
    print(f"collecting {len(parse_routes(route_xml))} routes in {towns} -> {a.out}")
    (a.out / "parts").mkdir(parents=True, exist_ok=True)  # the agents' --agent-config
    cfg = dataclasses.replace(
        cfg, routes=str(route_xml), out=str(a.out / "eval"), checkpoint=str(a.out / "parts"), track="MAP",
        agent=cfg.agent if largs.agent else AGENT, check_checkpoint=False,
        label=cfg.label or "expert collection")
    launcher.run(cfg)
    finalize(a.out / "parts", a.out, a.version, a.overwrite)
    return 0


if __name__ == "__main__":
    cli_main(main)
