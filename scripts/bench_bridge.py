"""Added latency per tick of the agent bridge (Python 3.7 leaderboard <-> driving server), 6 BGRA cameras.

    python -m scripts.bench_bridge                  # full size and the vad_nano / vad_tiny / vad_base sizes
    python -m scripts.bench_bridge --ticks 100 --transport unix+shm

What is measured (medians over --ticks, after --warmup ticks):
- transport: a real server process (`python -m carla_eval.bridge.server`) running the probe agent with
  its checksum off, driven by `py37_agent.BridgeAgent` in this process with images already at the size
  the server asked for; per tick = bridge run_step minus the same agent's in-process run_step: encode,
  request and reply over the socket, decode. Cases: "unix+shm" (the default set-up: Unix socket, camera
  images in /dev/shm; here they are copied into it, in real use the resize writes them there directly),
  "unix" and "tcp" (shared_memory: false, images through the socket);
- resize: what the 3.7 side spends making those images from the rig's 1600x900 with numpy ("bilinear",
  the default, and "nearest"; 1 thread and the default resize_threads), next to what the in-process
  agent spends in OpenCV (cv2.INTER_LINEAR) instead;
- added = transport + numpy resize (the faster thread setting) - OpenCV resize: what driving through the
  bridge costs per tick over driving in-process. Goal: transport < 5 ms at the checkpoint's image size.
The machine is shared and noisy: run it twice, and compare medians.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from carla_eval.bridge import launch
from carla_eval.bridge import protocol as P
from carla_eval.bridge.probe_agent import ProbeAgent, synthetic_input, synthetic_route
from carla_eval.bridge.py37_agent import BridgeAgent, prepare_input
from models.configs import get_config
from models.features import resized_size
from vlmad.cli import script_parser
from vlmad.errors import cli_main

ROOT = Path(__file__).resolve().parents[1]
FULL = (1600, 900)
CASES = ("unix+shm", "unix", "tcp")


def checkpoint_sizes(names: list[str]) -> dict[str, tuple[int, int]]:
    """(W, H) before padding of each model config (models.features.resized_size, as the agent)."""
    out = {"full 1600x900": FULL}
    for name in names:
        cfg = get_config(name)
        out[name] = resized_size(*cfg.img_size_raw, cfg.img_scale)
    return out


def median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def time_ticks(agent, inputs: list[dict], warmup: int) -> list[float]:
    out = []
    for i, data in enumerate(inputs):
        t0 = time.perf_counter()
        agent.run_step(data, 0.05 * (i + 1))
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def bench_transport(address: str, workdir: Path, size: tuple[int, int], ticks: int, warmup: int,
                    shm: bool) -> tuple[float, float]:
    """(median bridge tick, median in-process tick) in ms, images already at `size`."""
    probe = workdir / f"probe_{size[0]}x{size[1]}.json"
    probe.write_text(json.dumps({"camera_size": list(FULL), "input_size": list(size), "checksum": False}))
    client = workdir / "client.json"
    client.write_text(json.dumps({"address": address, "agent_config": str(probe), "step_timeout": 60.0,
                                  "shared_memory": shm}))
    rng = np.random.default_rng(0)
    # a few distinct frames reused: generating 6 random 1600x900 images per tick would dominate the run
    frames = [synthetic_input(i, rng, size) for i in range(4)]
    inputs = [frames[i % 4] for i in range(ticks + warmup)]
    bridged = BridgeAgent(str(client))
    assert (bridged._region is not None) == shm, "shared memory was not set up"
    local = ProbeAgent(str(probe))
    for a in (bridged, local):
        a.set_global_plan(*synthetic_route())
    over = time_ticks(bridged, inputs, warmup)
    here = time_ticks(local, inputs, warmup)
    bridged.destroy()
    return median_ms(over), median_ms(here)


def bench_resize(size: tuple[int, int], method: str, reps: int, threads: int) -> tuple[float, float]:
    """(numpy 3.7-side, OpenCV in-process) median ms to resize 6 cameras 1600x900 -> size."""
    rng = np.random.default_rng(1)
    data = synthetic_input(0, rng, FULL)
    sizes = {k: size for k in data if k.startswith("CAM_")}
    cache: dict = {}
    numpy_t, cv_t = [], []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            prepare_input(data, sizes, method, cache, pool=pool if threads > 1 else None)
            numpy_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for k in sizes:
                cv2.resize(data[k][1], size, interpolation=cv2.INTER_LINEAR)
            cv_t.append(time.perf_counter() - t0)
    return median_ms(numpy_t), median_ms(cv_t)


def start_server(address: str, workdir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "carla_eval.bridge.server", "--listen", address, "--agent",
           "carla_eval.bridge.probe_agent:ProbeAgent"]
    log = open(workdir / "server.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    launch.wait_for_bridge(address, 60.0, proc)
    return proc


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.bench_bridge", __doc__)
    ap.add_argument("--ticks", type=int, default=50, help="timed ticks per case (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed ticks first (default 5)")
    ap.add_argument("--configs", nargs="+", default=["vad_nano", "vad_tiny", "vad_base"],
                    help="model configs whose image size to measure (default vad_nano vad_tiny vad_base)")
    ap.add_argument("--transport", nargs="+", choices=CASES, default=list(CASES),
                    help="unix+shm: Unix socket, images in /dev/shm (the default set-up); unix / tcp: "
                         "images through a Unix socket / loopback TCP (shared_memory: false)")
    ap.add_argument("--tcp-port", type=int, default=2098, help="loopback port for the tcp case")
    args = ap.parse_args(argv)
    sizes = checkpoint_sizes(args.configs)
    print(f"bridge latency, 6 BGRA cameras; medians of {args.ticks} ticks; machine: {os.cpu_count()} CPU(s), "
          f"load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="vbb", dir="/tmp") as tmp:
        workdir = Path(tmp)
        transport: dict[tuple[str, str], float] = {}
        for kind in args.transport:
            unix = kind.startswith("unix")
            address = f"unix:{workdir}/b.sock" if unix else f"tcp:127.0.0.1:{args.tcp_port}"
            proc = start_server(address, workdir)
            try:
                for label, size in sizes.items():
                    over, here = bench_transport(address, workdir, size, args.ticks, args.warmup,
                                                 shm=kind.endswith("+shm"))
                    transport[(kind, label)] = over - here
                    mb = 6 * size[0] * size[1] * 4 / 1e6
                    print(f"  transport {kind:8s} {label:14s} {size[0]}x{size[1]} ({mb:5.1f} MB/tick): "
                          f"bridge {over:7.2f} ms, in-process {here:5.2f} ms -> {over - here:+6.2f} ms",
                          flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        threads = P.CLIENT_CONFIG_DEFAULTS["resize_threads"]
        print(f"  resize of 6 cameras from 1600x900 (3.7 side, numpy, 1 and {threads} threads) vs the "
              f"in-process agent's OpenCV:")
        resize: dict[tuple[str, str], tuple[float, float]] = {}
        for label, size in sizes.items():
            if size == FULL:
                continue
            for method in P.RESIZE_METHODS:
                one, cv = bench_resize(size, method, max(10, args.ticks // 2), 1)
                many, _ = bench_resize(size, method, max(10, args.ticks // 2), threads)
                resize[(method, label)] = (min(one, many), cv)
                print(f"    {label:14s} {method:8s}: numpy {one:6.2f} ms ({threads} threads {many:6.2f} ms), "
                      f"cv2 {cv:5.2f} ms", flush=True)
        print("  added latency per tick (transport + numpy resize - cv2 resize):")
        for kind in args.transport:
            for label, size in sizes.items():
                t = transport[(kind, label)]
                if size == FULL:
                    print(f"    {kind:8s} {label:14s}: transport {t:+6.2f} ms (no resize)")
                    continue
                parts = ", ".join(f"{m} {t + resize[(m, label)][0] - resize[(m, label)][1]:+6.2f} ms"
                                  for m in P.RESIZE_METHODS)
                print(f"    {kind:8s} {label:14s}: transport {t:+6.2f} ms; with resize: {parts}")
    return 0


if __name__ == "__main__":
    cli_main(main)
