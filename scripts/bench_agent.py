"""Per-tick latency of the CARLA agent (agent/vad_agent.py): preprocessing, model and controller, separately.

    # test size on CPU (random-init export in a temporary folder)
    python -m scripts.bench_agent --config vad_nano --ticks 30
    # VAD-Base at full resolution (6 x 1600x900 cameras -> 1280x736) on a GPU
    python -m scripts.bench_agent --config vad_base --device cuda --ticks 50
    # an exported checkpoint as it is
    python -m scripts.bench_agent --checkpoint runs/export/vad_base_vlmad --device cuda

The agent runs exactly as under the leaderboard (synthetic sensor data at the rig's resolution, a straight
drive on a route with turns, temporal state on); the synthetic input is built outside the timed region.
Numbers are wall-clock milliseconds per tick; the model column covers the ticks on which the model ran.
A random-init model costs the same as a trained one (same shapes, same work).
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from agent.vad_agent import VADAgent
from models.checkpoint_formats import export_driving_checkpoint
from models.configs import get_config
from models.vad import VAD
from synthetic.leaderboard import camera_images, input_data, leaderboard_plans, turning_route
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main
from vlmad.frames import se2_pose
from vlmad.io import atomic_write_json

COLUMNS = ("preprocess_ms", "model_ms", "control_ms", "total_ms")


def summarise(rows: list[dict]) -> dict:
    """median / p90 / mean per column; model and preprocessing over the ticks on which the model ran."""
    out = {}
    for k in COLUMNS:
        model_only = k in ("model_ms", "preprocess_ms")
        v = np.array([r[k] for r in rows if not model_only or r["model_ms"] > 0])
        out[k] = {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "mean": float(v.mean()),
                  "n": int(len(v))} if len(v) else None
    return out


def run(ckpt: Path, args: argparse.Namespace) -> dict:
    opts = {"checkpoint": str(ckpt.resolve()), "device": args.device, "model_every": args.model_every,
            "autocast": args.autocast}
    if args.camera_size:
        opts["camera_size"] = list(args.camera_size)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "agent.yaml"
        cfg_path.write_text(yaml.safe_dump(opts))
        agent = VADAgent(str(cfg_path))
    agent.set_global_plan(*leaderboard_plans(*turning_route()))
    images = camera_images(agent.sensors())
    speed = 5.0
    rows = []
    cuda = agent.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(agent.device)
    for tick in tqdm(range(args.warmup + args.ticks), desc="ticks", leave=False):
        data = input_data(agent.rig, images, tick, se2_pose(speed * 0.05 * tick, 0.0, 0.0), speed)
        agent.run_step(data, 0.05 * tick)
        if agent.brake_reason is not None:
            raise UserError(f"tick {tick}: the agent braked for a fault: {agent.brake_reason}")
        if tick >= args.warmup:
            rows.append(dict(agent.timing))
    result = {"checkpoint": str(ckpt), "config": agent.cfg.name, "device": str(agent.device),
              "gpu": torch.cuda.get_device_name(agent.device) if cuda else None,
              "torch_threads": torch.get_num_threads(), "cameras": [agent.rig.cameras[0].width,
                                                                    agent.rig.cameras[0].height],
              "model_input_hw": list(agent.cfg.img_hw), "model_every": args.model_every,
              "autocast": args.autocast, "ticks": args.ticks, "latency": summarise(rows),
              "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(agent.device) / 2**30 if cuda else None}
    agent.destroy()
    return result


def print_result(r: dict) -> None:
    where = r["gpu"] or f"CPU ({r['torch_threads']} threads)"
    print(f"{r['config']} on {where}: cameras 6 x {r['cameras'][0]}x{r['cameras'][1]} -> model input "
          f"{r['model_input_hw'][1]}x{r['model_input_hw'][0]}, model every {r['model_every']} tick(s), "
          f"autocast {r['autocast']}, {r['ticks']} ticks")
    print(f"  {'stage':<14}{'median':>10}{'p90':>10}{'mean':>10}{'n':>6}")
    for k in COLUMNS:
        s = r["latency"][k]
        if s:
            print(f"  {k:<14}{s['median']:>10.2f}{s['p90']:>10.2f}{s['mean']:>10.2f}{s['n']:>6}")
    total = r["latency"]["total_ms"]["mean"]
    print(f"  -> {1000.0 / total:.1f} ticks/s mean (the leaderboard runs at 20 Hz simulated time)"
          + (f"; peak GPU memory {r['peak_gpu_mem_gb']:.2f} GiB" if r["peak_gpu_mem_gb"] is not None else ""))


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.bench_agent", __doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="config of a random-init export (vad_nano, vad_tiny, vad_base, ...)")
    src.add_argument("--checkpoint", type=Path, help="exported driving checkpoint folder")
    ap.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    ap.add_argument("--ticks", type=int, default=30, help="timed ticks (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first ticks (default 3)")
    ap.add_argument("--model-every", type=int, default=1, help="run the model every N ticks (default 1)")
    ap.add_argument("--camera-size", type=int, nargs=2, metavar=("W", "H"), default=None,
                    help="camera resolution (default: the checkpoint's img_size_raw, i.e. full resolution)")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.ticks < 1 or args.warmup < 0:
        raise UserError("--ticks must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.checkpoint:
        result = run(args.checkpoint, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = get_config(args.config)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            ckpt = export_driving_checkpoint(VAD(cfg), cfg, Path(tmp) / args.config,
                                             {"random_init": True, "note": "bench_agent"})
            print(f"random-init {args.config} exported in {time.perf_counter() - t0:.1f} s "
                  "(untrained: for timing only)")
            result = run(ckpt, args)
    print_result(result)
    if args.json:
        atomic_write_json(args.json, result)
    return 0 if math.isfinite(result["latency"]["total_ms"]["mean"]) else 1


if __name__ == "__main__":
    cli_main(main)
