"""Benchmark VAD configs: forward latency, throughput, peak memory, parameter counts per module.

    python -m scripts.bench_model --configs vad_nano vad_tiny --iters 10 --device cpu
    python -m scripts.bench_model --configs vad_base --device cuda --amp bf16 --iters 50 --train
    python -m scripts.bench_model --configs vad_nano --compile     # + torch.compile, eager/compiled ratio
    python -m scripts.bench_model --configs vad_nano --onnx --threads 1   # + onnxruntime, eager/ORT ratio

Each config runs at its native image size on random inputs (synthetic.batch) in eval mode, as the
closed-loop agent calls it: one frame (Tq = 1) plus the previous BEV state. Latency is the median of
`--iters` timed calls after `--warmup` calls; the stages (backbone + FPN, BEV encoder, heads) are timed
separately, each on precomputed inputs of the stage before. `--train` also times one training step
(forward over the config's temporal queue + loss + backward + AdamW). Weights are random: speed does not
depend on them. `--compile` also times the `torch.compile`d forward (models.vad.compile_for_inference) in
the same run, on the same inputs, and prints its compile time, the largest output difference to eager
and the eager / compiled latency ratio; `--cuda-graphs` (CUDA only) does the same with
torch.compile's "reduce-overhead" mode, which replays CUDA graphs. The compiled forward runs the
fixed-shape BEV encoder, its cross-attention sized for the inputs' rig (models/onnx_export.py
`sca_capacity`, as the agent does), so eager PyTorch on that same fixed-shape path ("eager static") is
timed too: compiled vs eager static is what inductor itself gains, eager static vs eager the price of
the fixed shapes. `--onnx` (CPU) exports
the model to ONNX (models/onnx_export.py, a temporary file) and times onnxruntime against eager
PyTorch the same way, at the same thread count.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from models.configs import PRESETS, get_config
from models.features import feature_inputs
from models.onnx_export import sca_capacity
from models.vad import VAD, BEVState, compile_for_inference
from synthetic.batch import make_dummy_batch
from vlmad.cli import resolve_device, script_parser
from vlmad.errors import UserError, cli_main
from vlmad.io import atomic_write_json


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # process peak RSS, MiB
    except OSError:
        pass
    return float("nan")


def _time(fn, iters: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def param_counts(model: VAD) -> dict[str, int]:
    """Parameters per top-level block (millions are printed)."""
    groups = {
        "img_backbone": model.img_backbone,
        "img_neck": model.img_neck,
        "bev_encoder": model.transformer.encoder,
        "det_decoder": model.transformer.decoder,
        "map_decoder": model.transformer.map_decoder,
        "motion": model.motion,
        "planning": model.planning,
        "lane_encoder": model.lane_encoder,
    }
    if model.tl_branch is not None:
        groups["tl_branch"] = model.tl_branch
    out = {k: sum(p.numel() for p in m.parameters()) for k, m in groups.items()}
    total = sum(p.numel() for p in model.parameters())
    out["embeddings+branches"] = total - sum(out.values())
    out["total"] = total
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out


def _to(batch: dict, device: torch.device) -> dict:
    def conv(v):
        if torch.is_tensor(v):
            return v.to(device)
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(batch)


def bench_config(
    name: str,
    device: torch.device,
    iters: int,
    warmup: int,
    batch_size: int,
    amp: str,
    train: bool,
    compile_mode: str | None = None,
    onnx: bool = False,
) -> dict:
    """Time one config; compile_mode None (eager only), "default" or "reduce-overhead" (CUDA graphs);
    onnx: also onnxruntime on an ONNX export of the same model."""
    cfg = get_config(name)
    torch.manual_seed(0)
    model = VAD(cfg).to(device)
    counts = param_counts(model)
    model.eval()
    batch = _to(make_dummy_batch(cfg, batch_size=batch_size, queue_length=1), device)
    inputs = feature_inputs(batch)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    ac = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    b = batch_size
    state = BEVState(
        torch.zeros(b, cfg.bev_h * cfg.bev_w, cfg.embed_dims, device=device),
        torch.ones(b, dtype=torch.bool, device=device),
    )
    imgs = inputs["img"][:, -1].flatten(0, 1)

    def fwd():
        with torch.inference_mode(), ac():
            model(inputs, state)

    def backbone():
        with torch.inference_mode(), ac():
            model.extract_img_feats(imgs)

    with torch.inference_mode(), ac():
        feats = model.extract_img_feats(imgs)
        bev_out = model.encode_bev(inputs, state).bev
    one = {
        k: (v[:, -1] if k in ("img_from_ego", "can_bus", "cur_from_prev", "prev_valid") else v)
        for k, v in inputs.items()
    }

    def bev():  # the BEV encoder alone, on precomputed image features
        with torch.inference_mode(), ac():
            model.encode_frame(
                feats,
                one["img_from_ego"],
                one["can_bus"],
                one["cur_from_prev"],
                one["prev_valid"],
                cfg.img_hw,
                state,
            )

    def heads():
        with torch.inference_mode(), ac():
            model.decode(bev_out, inputs)

    _reset_peak(device)
    times = _time(fwd, iters, warmup, device)
    peak = _peak_mib(device)
    t_bb = statistics.median(_time(backbone, max(iters // 2, 1), 1, device))
    t_bev = statistics.median(_time(bev, max(iters // 2, 1), 1, device))
    t_heads = statistics.median(_time(heads, max(iters // 2, 1), 1, device))
    med = statistics.median(times)
    res = {
        "config": name,
        "device": str(device),
        "amp": amp,
        "batch": b,
        "img_hw": list(cfg.img_hw),
        "bev": [cfg.bev_h, cfg.bev_w],
        "latency_ms_median": med,
        "latency_ms_min": min(times),
        "throughput_fps": 1000.0 * b / med,
        "peak_mem_mib": peak,
        "stage_ms": {"backbone+fpn": t_bb, "bev_encoder": t_bev, "heads": t_heads},
        "params": counts,
    }
    if compile_mode is not None:
        res["compiled"] = _bench_compiled(model, inputs, state, ac, iters, warmup, device, compile_mode)
    if onnx:
        res["onnx"] = _bench_onnx(model, inputs, state, iters, warmup)
    if train:
        model.train()
        tb = _to(make_dummy_batch(cfg, batch_size=batch_size), device)
        tin = feature_inputs(tb)
        opt = torch.optim.AdamW(model.param_groups(2e-4))

        def step():
            with ac():
                out, _ = model(tin)
                loss = model.loss(out, tb)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        _reset_peak(device)
        tt = _time(step, max(iters // 2, 1), min(warmup, 2), device)
        res["train_step_ms_median"] = statistics.median(tt)
        res["train_queue"] = cfg.queue_length
        res["train_peak_mem_mib"] = _peak_mib(device)
    return res


def _bench_compiled(
    model: VAD,
    inputs: dict,
    state: BEVState,
    ac,
    iters: int,
    warmup: int,
    device: torch.device,
    mode: str,
) -> dict:
    """The compiled forward on the same model and inputs: compile time, latency, max |diff| to eager."""
    cap = sca_capacity(model.cfg, inputs["img_from_ego"])
    if mode == "default":
        cmodel = compile_for_inference(model, sca_capacity=cap)
    else:
        model.sca_capacity = cap
        cmodel = torch.compile(model, mode=mode, fullgraph=True)
    with torch.inference_mode(), ac():
        ref, _ = model(inputs, state)
        t0 = time.perf_counter()
        got, _ = cmodel(inputs, state)  # the first call compiles
        _sync(device)
        compile_s = time.perf_counter() - t0
    keys = ("plan_all", "det_logits", "det_code", "motion_offsets", "map_pts", "bev")
    diff = max((got[k].float() - ref[k].float()).abs().max().item() for k in keys)

    def fwd(m):
        def call():
            with torch.inference_mode(), ac():
                m(inputs, state)

        return call

    _reset_peak(device)
    _time(fwd(cmodel), 0, warmup, device)
    calls = {"eager": fwd(model), "eager_static": _static(model, fwd(model), cap), "compiled": fwd(cmodel)}
    t = _interleaved(calls, iters, device)
    med = t["compiled"]
    return {
        "mode": mode,
        "compile_s": compile_s,
        "latency_ms_median": med,
        "eager_ms_median_interleaved": t["eager"],
        "eager_static_ms_median_interleaved": t["eager_static"],
        "peak_mem_mib": _peak_mib(device),
        "max_abs_diff": diff,
        "speedup": t["eager"] / med,
        "speedup_vs_eager_static": t["eager_static"] / med,
        "sca_capacity": cap,
    }


def _interleaved(fns: dict, iters: int, device: torch.device) -> dict[str, float]:
    """Median ms per callable, the callables alternating call by call: load from other processes hits
    all of them alike, so the ratios stay meaningful on a shared machine (the absolute numbers may not)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            times[k] += _time(fn, 1, 0, device)
    return {k: statistics.median(v) for k, v in times.items()}


def _static(model: VAD, fn, capacity: int):
    """fn run eagerly on the fixed-shape BEV encoder path (`VAD.static_shapes`, `capacity` slots)."""
    def call():
        model.static_shapes, keep = True, model.sca_capacity
        model.sca_capacity = capacity
        try:
            fn()
        finally:
            model.static_shapes, model.sca_capacity = False, keep

    return call


def _bench_onnx(model: VAD, inputs: dict, state: BEVState, iters: int, warmup: int) -> dict:
    """onnxruntime on an ONNX export of the same model (CPU, fp32): export time, latency, max |diff|."""
    import tempfile

    from models.onnx_export import OnnxRunner, export_onnx, output_names

    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        graph_model = VAD(model.cfg)  # a copy: the export switches its model to the fixed-shape path
        graph_model.load_state_dict(model.state_dict())
        cap = sca_capacity(model.cfg, inputs["img_from_ego"])
        path = export_onnx(graph_model, f"{tmp}/model.onnx", inputs["img"].shape[0], capacity=cap)
        export_s = time.perf_counter() - t0
        runner = OnnxRunner(path, model.cfg, threads=torch.get_num_threads())
    with torch.inference_mode():
        ref, ref_state = model(inputs, state)
    got, got_state = runner(inputs, state)
    ref["bev"], got["bev"] = ref_state.bev, got_state.bev
    diff = max((got[k] - ref[k].float()).abs().max().item() for k in output_names(model.cfg))

    def eager():
        with torch.inference_mode():
            model(inputs, state)

    _time(lambda: runner(inputs, state), 0, warmup, cpu)
    t = _interleaved({"eager": eager, "eager_static": _static(model, eager, cap),
                      "onnxruntime": lambda: runner(inputs, state)}, iters, cpu)
    return {
        "export_s": export_s,
        "latency_ms_median": t["onnxruntime"],
        "eager_ms_median_interleaved": t["eager"],
        "eager_static_ms_median_interleaved": t["eager_static"],
        "max_abs_diff": diff,
        "speedup": t["eager"] / t["onnxruntime"],
        "speedup_vs_eager_static": t["eager_static"] / t["onnxruntime"],
        "sca_capacity": cap,
    }


def _print(res: dict) -> None:
    p = res["params"]
    s = res["stage_ms"]
    print(
        f"\n== {res['config']} on {res['device']} (amp={res['amp']}, batch {res['batch']}, image "
        f"{res['img_hw'][1]}x{res['img_hw'][0]} x6, BEV {res['bev'][0]}x{res['bev'][1]}, Tq=1 + state)"
    )
    print(
        f"forward latency median {res['latency_ms_median']:.1f} ms (min {res['latency_ms_min']:.1f}), "
        f"throughput {res['throughput_fps']:.2f} frames/s, peak memory {res['peak_mem_mib']:.0f} MiB"
    )
    print(
        f"stages: backbone+fpn {s['backbone+fpn']:.1f} ms, BEV encoder {s['bev_encoder']:.1f} ms, "
        f"heads {s['heads']:.1f} ms"
    )
    if "compiled" in res:
        c = res["compiled"]
        print(
            f"compiled ({c['mode']}): compile {c['compile_s']:.1f} s, latency median "
            f"{c['latency_ms_median']:.1f} ms vs eager {c['eager_ms_median_interleaved']:.1f} ms "
            f"(alternating calls), max |diff| to eager {c['max_abs_diff']:.2e}, "
            f"speed-up eager/compiled {c['speedup']:.2f}x; eager on the fixed-shape path "
            f"{c['eager_static_ms_median_interleaved']:.1f} ms, eager static/compiled "
            f"{c['speedup_vs_eager_static']:.2f}x (cross-attention {c['sca_capacity']} slots)"
        )
    if "onnx" in res:
        o = res["onnx"]
        print(
            f"onnxruntime: export {o['export_s']:.1f} s, latency median {o['latency_ms_median']:.1f} ms vs "
            f"eager {o['eager_ms_median_interleaved']:.1f} ms (alternating calls), max |diff| to eager "
            f"{o['max_abs_diff']:.2e}, speed-up eager/onnxruntime {o['speedup']:.2f}x; eager static "
            f"{o['eager_static_ms_median_interleaved']:.1f} ms, eager static/onnxruntime "
            f"{o['speedup_vs_eager_static']:.2f}x"
        )
    if "train_step_ms_median" in res:
        print(
            f"train step (queue {res['train_queue']}, loss, backward, AdamW): "
            f"{res['train_step_ms_median']:.1f} ms, peak memory {res['train_peak_mem_mib']:.0f} MiB"
        )
    print("parameters (M): " + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in p.items()))


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.bench_model", __doc__)
    ap.add_argument("--configs", nargs="+", default=["vad_nano", "vad_tiny"], help=f"any of {list(PRESETS)}")
    ap.add_argument("--iters", type=int, default=10, help="timed forward calls per config (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    ap.add_argument("--batch", type=int, default=1, help="samples per forward call")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    ap.add_argument("--train", action="store_true", help="also time a training step")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd forward")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="also time torch.compile mode='reduce-overhead' (CUDA graphs; CUDA only)")
    ap.add_argument("--onnx", action="store_true",
                    help="also time onnxruntime on an ONNX export of the model (CPU, fp32, batch as --batch)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    for n in args.configs:
        get_config(n)  # unknown names fail before any work
    device = resolve_device(args.device, "--device")
    if args.cuda_graphs and device.type != "cuda":
        raise UserError("--cuda-graphs needs --device cuda (CUDA graphs do not exist on CPU)")
    if args.compile and args.cuda_graphs:
        raise UserError("pick one of --compile and --cuda-graphs per run")
    mode = "default" if args.compile else "reduce-overhead" if args.cuda_graphs else None
    if args.onnx and (device.type != "cpu" or args.amp != "none"):
        raise UserError("--onnx times onnxruntime's CPU build: use it with --device cpu and --amp none")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    else:
        print(f"CPU: {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    results = []
    for name in args.configs:
        res = bench_config(name, device, args.iters, args.warmup, args.batch, args.amp, args.train, mode,
                           args.onnx)
        _print(res)
        results.append(res)
        sys.stdout.flush()
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    cli_main(main)
