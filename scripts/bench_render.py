"""Benchmark the offline world's camera renderer: milliseconds per 6-camera frame.

Drives the ego along a lane of a town with traffic around it and renders all rig cameras at each size.
Prints the one-off costs (road geometry, ground texture) and the per-frame time (median and 90th
percentile) per resolution.

    .venv/bin/python -m scripts.bench_render                      # Town02 from ../shared/maps
    .venv/bin/python -m scripts.bench_render --xodr $CARLA_ROOT/.../Maps/OpenDrive/Town05.xodr
    .venv/bin/python -m scripts.bench_render --sizes 640x360 --frames 50 --vehicles 40
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.frames import se2_pose
from vlmad.rig import RIGS

DEFAULT_XODR = Path(__file__).resolve().parents[2] / "shared" / "maps" / "Town02.xodr"


def _scene(geometry, n_vehicles: int, n_frames: int, seed: int):
    """Ego poses along the longest lane, vehicles on random lane samples, every traffic light."""
    from world.render import RenderBox, RenderLight

    rng = np.random.default_rng(seed)
    lane = max(geometry.lanes, key=lambda s: len(s.center))
    poses = []
    for i in np.linspace(0, len(lane.center) - 2, n_frames).astype(int):
        d = lane.center[i + 1, :2] - lane.center[i, :2]
        c = lane.center[i]
        poses.append(se2_pose(c[0], c[1], math.atan2(d[1], d[0]), c[2]))
    boxes = []
    for _ in range(n_vehicles):
        s = geometry.lanes[rng.integers(len(geometry.lanes))]
        j = int(rng.integers(len(s.center) - 1))
        d = s.center[j + 1, :2] - s.center[j, :2]
        centre = s.center[j] + [0.0, 0.0, 0.75]
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        boxes.append(RenderBox(centre, (4.6, 1.9, 1.5), math.atan2(d[1], d[0]), colour))
    states = ("red", "yellow", "green")
    lights = [RenderLight(site.position, site.yaw, states[k % 3]) for k, site in enumerate(geometry.lights)]
    return poses, boxes, lights


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.bench_render", __doc__)
    ap.add_argument("--xodr", type=Path, default=DEFAULT_XODR, help="OpenDRIVE map (default: shared Town02)")
    ap.add_argument("--sizes", default="640x360,1600x900", help="comma-separated WxH list")
    ap.add_argument("--frames", type=int, default=30, help="frames rendered per size")
    ap.add_argument("--vehicles", type=int, default=30, help="vehicles placed on random lanes")
    ap.add_argument("--rig", default="carla_vad", choices=sorted(RIGS), help="sensor rig")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.xodr.is_file():
        raise UserError(f"map {args.xodr} not found; pass --xodr PATH to an OpenDRIVE file (e.g. from "
                        "$CARLA_ROOT/CarlaUE4/Content/Carla/Maps/OpenDrive/)")
    import carla
    import cv2

    from world.geometry import RoadGeometry
    from world.render import Renderer, ground_texture

    t0 = time.perf_counter()
    cmap = carla.Map(args.xodr.stem, args.xodr.read_text())
    t1 = time.perf_counter()
    geometry = RoadGeometry.from_map(cmap)
    t2 = time.perf_counter()
    tex = ground_texture(geometry)
    t3 = time.perf_counter()
    print(f"map {args.xodr.stem}: load {1e3 * (t1 - t0):.0f} ms, geometry {1e3 * (t2 - t1):.0f} ms, "
          f"texture {tex.levels[0].shape[1]}x{tex.levels[0].shape[0]} @ {tex.res:.3f} m/px "
          f"{1e3 * (t3 - t2):.0f} ms; cv2 threads {cv2.getNumThreads()}")
    poses, boxes, lights = _scene(geometry, args.vehicles, args.frames, args.seed)
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        renderer = Renderer(geometry, RIGS[args.rig], w, h)
        renderer.render(poses[0], boxes, lights)  # warm-up (sky cache)
        times, cpu = [], []
        for pose in poses:
            t, c = time.perf_counter(), time.process_time()
            renderer.render(pose, boxes, lights)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        ms = 1e3 * np.array(times)
        print(f"{w}x{h}: {np.median(ms):.1f} ms per 6-camera frame (p90 {np.percentile(ms, 90):.1f}; "
              f"process CPU {1e3 * np.median(cpu):.1f} ms, all threads; {len(boxes)} vehicles, "
              f"{len(lights)} lights, {len(ms)} frames)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"1-minute load average {load:.1f} on {os.cpu_count()} CPUs (a busy machine inflates wall times)")
    return 0


if __name__ == "__main__":
    cli_main(main)
