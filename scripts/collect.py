"""Collect a nuScenes-format dataset from expert drives in the offline world (no CARLA server).

    python -m scripts.collect --town VlmadGrid --drives 20 --frames 40 --seed 0 --out data/offline

Each drive is a random route driven by the privileged expert: `--frames` keyframes at 2 Hz with the
rig's 6 cameras (`--image-size`, default VAD-Tiny's 640x360), boxes with instance ids, map polylines,
CAN bus at 10 Hz, and the privileged state the rule teacher reads (`<version>/privileged.json`). The
dataset loads with nuscenes-devkit and `nusc.infos.build_or_load_infos`. Finished drives are cached
beside `--out` (`<out>.parts/`), so an interrupted run continues where it stopped when re-run with the
same arguments. Everything written is labelled as coming from the offline world, not CARLA.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tqdm import tqdm

from vlmad.cli import script_parser
from vlmad.config import save_resolved
from vlmad.errors import UserError, cli_main
from world.collect import collect
from world.config import LABEL, SOURCE, add_world_args, world_config_from_args
from world.road_map import GENERATED_TOWN, load_map
from world.runner import OfflineRunner


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.collect", __doc__)
    p.add_argument(
        "--town",
        default=GENERATED_TOWN,
        help="map: %(default)s (generated), a .xodr path or a CARLA town name in --maps-dir / --carla-root",
    )
    p.add_argument("--drives", type=int, default=4, help="number of drives = scenes (default %(default)s)")
    p.add_argument("--frames", type=int, default=40, help="keyframes per drive, 2 Hz (default %(default)s)")
    p.add_argument("--out", required=True, help="dataroot to create (must not exist)")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes version folder (default %(default)s)")
    p.add_argument(
        "--image-size", default=None, help="camera images WxH (default: world.image_width x height)"
    )
    add_world_args(p)
    a = p.parse_args(argv)
    if a.drives < 1 or a.frames < 2:
        raise UserError("--drives must be >= 1 and --frames >= 2")
    cfg = world_config_from_args(a)
    if a.image_size:
        m = re.fullmatch(r"(\d+)x(\d+)", a.image_size)
        if not m:
            raise UserError(f"--image-size must look like 640x360, got {a.image_size!r}")
        cfg.image_width, cfg.image_height = int(m.group(1)), int(m.group(2))
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists; choose a new --out (collect never overwrites a dataset)")
    parts = out.parent / f"{out.name}.parts"
    settings = {
        "town": a.town,
        "seed": a.seed,
        "keyframes": a.frames,
        "drives": a.drives,
        "version": a.version,
        "image": [cfg.image_width, cfg.image_height],
        "set": a.set,
        "config": a.config,
    }
    stamp = parts / "run.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != settings:
        raise UserError(
            f"{parts} holds drives of a run with other arguments; remove it or repeat those arguments"
        )
    parts.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings))

    rmap = load_map(a.town, a.maps_dir, a.carla_root or os.environ.get("CARLA_ROOT"))
    runner = OfflineRunner(rmap, cfg, seed=a.seed)
    with tqdm(
        total=a.drives * a.frames, desc=f"collect (offline world, {rmap.name})", unit="keyframe"
    ) as bar:
        root, n = collect(runner, out, a.version, a.drives, a.frames, a.seed, progress=bar)
    save_resolved(cfg, root, "world_config.yaml")
    print(f"[{SOURCE}] {LABEL}")
    print(
        f"wrote {root}: {n} keyframes in {a.drives} drive(s) on {rmap.name} ({a.version}; images "
        f"{cfg.image_width}x{cfg.image_height}); offline-world data, not CARLA recordings"
    )
    return 0


if __name__ == "__main__":
    cli_main(main)
