"""Annotation throughput against a local OpenAI-compatible server that answers after a fixed delay.

Measures frames/s (2 requests per frame) at each concurrency level on a fresh store, then repeats the
last run on its finished store and reports its request count (must be 0). The server binds 127.0.0.1
only; the dataset is the small synthetic nuScenes written to a temporary folder.

Example:
  python -m scripts.bench_annotate --delay 0.2 --concurrency 1 16 --scenes 4 --keyframes 16
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from synthetic.vlm_server import FakeVLMServer
from teacher.backends.http import HttpClient, RetryPolicy
from teacher.backends.openai_chat import ChatTeacher
from teacher.config import TeacherConfig
from teacher.runner import annotate
from teacher.store import AnnotationStore
from vlmad.cli import script_parser
from vlmad.errors import cli_main


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.bench_annotate", __doc__)
    p.add_argument("--delay", type=float, default=0.2, help="server answer delay per request, seconds")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="levels to measure")
    p.add_argument("--scenes", type=int, default=4, help="synthetic scenes")
    p.add_argument("--keyframes", type=int, default=16, help="keyframes per scene")
    p.add_argument("--image-size", type=int, nargs=2, default=[800, 450], metavar=("W", "H"))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    from nusc.infos import build_or_load_infos
    from synthetic.nuscenes import make_synthetic_dataset

    results: dict = {"delay_s": args.delay, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_annotate_") as tmp:
        root = make_synthetic_dataset(Path(tmp) / "ds", num_scenes=args.scenes,
                                      keyframes_per_scene=args.keyframes,
                                      image_size=tuple(args.image_size))
        records = build_or_load_infos(root, "v1.0-mini")
        results["frames"] = len(records)
        with FakeVLMServer(delay_s=args.delay) as srv:
            last_store = None
            for conc in args.concurrency:
                cfg = TeacherConfig(teacher="openai", base_url=srv.base_url, concurrency=conc)
                http = HttpClient(cfg.base_url, "bench-key", 30.0, RetryPolicy(2, 0.1, 1.0))
                last_store = Path(tmp) / f"store_c{conc}.sqlite"
                n0 = srv.count()
                with AnnotationStore(last_store) as store:
                    t0 = time.perf_counter()
                    stats = annotate(records, root, store, cfg, teacher=ChatTeacher(cfg, http=http),
                                     progress=False)
                    dt = time.perf_counter() - t0
                run = {"concurrency": conc, "frames": stats.done, "requests": srv.count() - n0,
                       "seconds": round(dt, 3), "frames_per_s": round(stats.done / dt, 2),
                       "ideal_frames_per_s": round(conc / (2 * args.delay), 2) if args.delay else None}
                results["runs"].append(run)
                print(f"concurrency {conc:3d}: {run['frames']} frames, {run['requests']} requests in "
                      f"{dt:.2f} s -> {run['frames_per_s']:.2f} frames/s (ideal {run['ideal_frames_per_s']})")
            cfg = TeacherConfig(teacher="openai", base_url=srv.base_url, concurrency=args.concurrency[-1])
            http = HttpClient(cfg.base_url, "bench-key", 30.0)
            n0 = srv.count()
            with AnnotationStore(last_store) as store:
                t0 = time.perf_counter()
                annotate(records, root, store, cfg, teacher=ChatTeacher(cfg, http=http), progress=False)
                dt = time.perf_counter() - t0
            results["repeat_requests"] = srv.count() - n0
            results["repeat_seconds"] = round(dt, 3)
            print(f"repeated finished run: {results['repeat_requests']} requests in {dt:.2f} s (must be 0)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["repeat_requests"] == 0 else 1


if __name__ == "__main__":
    cli_main(main)
