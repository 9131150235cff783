"""Benchmark the data layer: index build time per 1,000 samples and dataset speed at the VAD-Tiny size.

    python -m scripts.bench_data                      # 5 scenes x 40 keyframes of 1600x900 images
    python -m scripts.bench_data --scenes 2 --keyframes 20 --iters 10

Writes a synthetic nuScenes-format set with full-size (1600x900) images into a temporary folder (or
--dataroot), builds its index without cache, reloads it from cache, then iterates the dataset with the
VAD-Tiny setting (x0.4 -> 640x360 padded to 640x384, queue of 3, 6 cameras). Prints the numbers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from nusc.dataset import DatasetConfig, NuScenesVADDataset, collate
from nusc.infos import build_infos, build_or_load_infos
from synthetic.nuscenes import make_synthetic_dataset
from vlmad.cli import script_parser
from vlmad.errors import cli_main


def _iterate(ds: NuScenesVADDataset, n: int, workers: int) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process) over n items, batch size 1.

    The second figure is what one uncontended core gives (only meaningful with 0 workers): the CI machine
    is shared, so wall-clock rates depend on what else runs.
    """
    subset = torch.utils.data.Subset(ds, range(min(n, len(ds))))
    loader = DataLoader(subset, batch_size=1, num_workers=workers, collate_fn=collate)
    t0, c0 = time.perf_counter(), time.process_time()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - t0), count / max(time.process_time() - c0, 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.bench_data", __doc__)
    p.add_argument("--dataroot", type=Path, default=None,
                   help="where to write the set (default: a temp dir); a set already there is reused")
    p.add_argument("--scenes", type=int, default=5, help="number of synthetic scenes")
    p.add_argument("--keyframes", type=int, default=40, help="keyframes per scene")
    p.add_argument("--iters", type=int, default=30, help="dataset items to time")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the second timing")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataroot or Path(tmp) / "bench_ds"
        n = args.scenes * args.keyframes
        if (root / "v1.0-mini" / "sample.json").is_file() and args.dataroot is not None:
            print(f"reusing the set in {root}")  # delete it to rewrite with other --scenes / --keyframes
        else:
            t0 = time.perf_counter()
            make_synthetic_dataset(root, num_scenes=args.scenes, keyframes_per_scene=args.keyframes,
                                   image_size=(1600, 900), overwrite=True)
            print(f"wrote {n} samples of 6 x 1600x900 images in {time.perf_counter() - t0:.1f} s")

        import nuscenes.nuscenes  # noqa: F401  (import cost is not part of the per-sample figure)

        t0, c0 = time.perf_counter(), time.process_time()
        recs = build_infos(root, "v1.0-mini", progress=False)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"index build (devkit load + records, no cache): {dt:.2f} s for {n} samples "
              f"= {1000 * dt / n:.1f} s per 1,000 samples ({1000 * cpu / n:.1f} CPU-s)")
        cache = Path(tmp) / "infos.json"
        build_or_load_infos(root, "v1.0-mini", cache=cache, progress=False)
        t0 = time.perf_counter()
        recs = build_or_load_infos(root, "v1.0-mini", cache=cache, progress=False)
        dt = time.perf_counter() - t0
        print(f"index reuse from cache: {dt:.3f} s for {n} samples = {1000 * dt / n:.2f} s per 1,000 samples")

        for fast in (False, True):
            cfg = DatasetConfig(queue_length=3, img_scale=0.4, fast_decode=fast)
            ds = NuScenesVADDataset(recs, root, cfg)
            shape = tuple(ds[0]["img"].shape)
            label = "half-size JPEG decode" if fast else "full decode"
            for workers in (0, args.workers):
                wall, cpu = _iterate(ds, args.iters, workers)
                extra = f" ({cpu:.2f} per CPU-second of one core)" if workers == 0 else ""
                print(f"dataset VAD-Tiny {shape} ({label}, {workers} workers): {wall:.2f} samples/s{extra}")
    return 0


if __name__ == "__main__":
    cli_main(main)
