"""Benchmark the offline world: closed-loop steps/s and data-collection time.

    python -m scripts.bench_world [--town VlmadGrid] [--steps 400] [--keyframes 60]

Prints (1) simulation steps per second with the privileged expert and the world alone, (2) the same with
all 6 rig cameras rendered every step at VAD-Tiny resolution (640x360; a camera agent's closed loop,
goal >= 10 steps/s on 2 CPU cores), and (3) the time to collect `--keyframes` keyframes (6 cameras at
2 Hz) extrapolated to 1,000 keyframes. Numbers are wall-clock on this machine, single process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlmad.cli import script_parser
from vlmad.errors import cli_main
from world.collect import collect
from world.config import WorldConfig
from world.expert import ExpertAgent
from world.road_map import GENERATED_TOWN, load_map, random_routes
from world.runner import OfflineRunner, StepView


def _steps_per_s(runner: OfflineRunner, steps: int, cameras: bool) -> tuple[float, float]:
    """(steps/s, ms per render) driving the expert for `steps` steps (several routes if needed)."""
    from world.collect import dataset_rig

    rig = dataset_rig(runner.cfg)
    render_s = [0.0]
    done = [0]

    def hook(view: StepView) -> None:
        done[0] += 1
        if cameras:
            t = time.perf_counter()
            runner.render(view.world, rig)
            render_s[0] += time.perf_counter() - t

    rng = np.random.default_rng(0)
    if cameras:
        runner.renderer(rig)  # rasterise the map's ground texture before timing
    t0 = time.perf_counter()
    i = 0
    while done[0] < steps:
        spec = random_routes(runner.rmap, 1, rng, 300, 500, first_id=i)[0]
        runner.run_route(
            lambda: ExpertAgent("", runner.cfg.expert), spec, i, on_step=hook, max_steps=steps - done[0]
        )
        i += 1
    wall = time.perf_counter() - t0
    return done[0] / wall, 1e3 * render_s[0] / max(done[0], 1)


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.bench_world", __doc__)
    p.add_argument("--town", default=GENERATED_TOWN)
    p.add_argument("--maps-dir", default=None)
    p.add_argument("--steps", type=int, default=400, help="steps per closed-loop measurement")
    p.add_argument("--keyframes", type=int, default=60, help="keyframes collected for the extrapolation")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = WorldConfig()  # 640x360, 30 vehicles, 6 pedestrians, 20 Hz
    t = time.perf_counter()
    rmap = load_map(a.town, a.maps_dir)
    _ = rmap.segments, rmap.planner
    print(
        f"town {rmap.name}: {len(rmap.segments)} lane segments, {len(rmap.lights)} lights, "
        f"loaded in {time.perf_counter() - t:.2f} s"
    )
    runner = OfflineRunner(rmap, cfg, seed=0)
    sps, _ = _steps_per_s(runner, a.steps, cameras=False)
    print(f"world + expert, no cameras: {sps:.1f} steps/s ({1e3 / sps:.1f} ms/step)")
    sps_cam, render_ms = _steps_per_s(runner, a.steps, cameras=True)
    verdict = "meets" if sps_cam >= 10 else "misses"
    print(
        f"world + expert + 6 cameras {cfg.image_width}x{cfg.image_height} every step: {sps_cam:.1f} steps/s "
        f"({1e3 / sps_cam:.1f} ms/step, render {render_ms:.1f} ms) -> {verdict} the 10 steps/s goal"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_world_"))
    try:
        drives = max(1, a.keyframes // 20)
        t = time.perf_counter()
        _, n = collect(runner, tmp / "ds", "v1.0-mini", drives, a.keyframes // drives, seed=0)
        dt = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"collect: {n} keyframes (6 cameras {cfg.image_width}x{cfg.image_height}, 2 Hz) in {dt:.1f} s "
        f"-> {dt / n:.2f} s/keyframe, ~{1000 * dt / n / 60:.1f} min per 1,000 keyframes"
    )
    return 0


if __name__ == "__main__":
    cli_main(main)
