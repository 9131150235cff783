"""Export a driving checkpoint to ONNX: one frame + previous BEV state in, plan + new BEV state out.

    python -m scripts.export_onnx --checkpoint runs/agents/vad_tiny --out runs/agents/vad_tiny/model.onnx

The graph is the model's fixed-shape forward for one frame at the checkpoint's image size and the given
batch (inputs and outputs: models/onnx_export.py). `--rig NAME` sizes the spatial cross-attention for that
camera rig (its visible (BEV query, camera) pairs plus a margin: as fast as eager PyTorch's packing; the
runner refuses a calibration that does not fit); without it every pair is computed (any calibration,
several times the work; docs/deploy.md). After writing, the file is run once in onnxruntime
(when installed) on example inputs and compared with PyTorch; the largest difference is printed, and an
export whose outputs differ by more than --tolerance fails. The agent drives from the file with
`backend: onnxruntime` and `onnx: PATH` (docs/agent.md); docs/deploy.md has the TensorRT path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from models.checkpoint_formats import load_driving_checkpoint
from models.onnx_export import (
    DrivingGraph,
    OnnxRunner,
    all_pairs,
    example_inputs,
    export_onnx,
    output_names,
    rig_projections,
    sca_capacity,
)
from models.vad import BEVState
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main


def verify(model_path: Path, graph: DrivingGraph, threads: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| over all outputs on the example inputs, first and second frame."""
    cfg = graph.model.cfg
    runner = OnnxRunner(model_path, cfg, threads)
    inputs = example_inputs(cfg, runner.inputs["img"][0])
    inputs.pop("prev_bev")
    worst = 0.0
    state: BEVState | None = None
    for frame in range(2):  # the second frame is fed the first one's state, with prev_valid True
        if frame:
            inputs["prev_valid"] = torch.ones_like(inputs["prev_valid"])
        got, new = runner(inputs, state)
        graph.model.static_shapes = False  # the reference: eager PyTorch as it drives by default
        try:
            with torch.no_grad():
                ref, ref_state = graph.model(inputs, state)
        finally:
            graph.model.static_shapes = True
        ref["bev"] = ref_state.bev
        worst = max(worst, *((got[k] - ref[k].float()).abs().max().item() for k in output_names(cfg)))
        state = new
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = script_parser("scripts.export_onnx", __doc__)
    ap.add_argument("--checkpoint", type=Path, required=True,
                    help="exported driving checkpoint folder (scripts.export_agent)")
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    ap.add_argument("--rig", default=None,
                    help="size the cross-attention for this camera rig (carla_vad, nuscenes_nominal; the "
                    "agent's default rig is carla_vad); default: every pair, any calibration")
    ap.add_argument("--batch", type=int, default=1, help="samples per call, fixed in the graph (default 1)")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest allowed |onnxruntime - PyTorch| in the check after export (default 1e-4)")
    ap.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check after export")
    args = ap.parse_args(argv)
    if args.batch < 1:
        raise UserError("--batch must be >= 1")
    if args.out.suffix != ".onnx":
        raise UserError(f"--out {args.out} should end in .onnx")
    model, cfg, meta = load_driving_checkpoint(args.checkpoint, "cpu")
    capacity = None if args.rig is None else sca_capacity(cfg, rig_projections(cfg, args.rig))
    t0 = time.perf_counter()
    # written under a temporary name and renamed once checked: an existing --out is always a usable file
    # (scripts.experiment takes an existing output as a finished step)
    tmp = args.out.with_name(args.out.stem + ".unverified.onnx")
    path = export_onnx(model, tmp, args.batch,
                       {"source_checkpoint": str(args.checkpoint.resolve()),
                        "config_name": meta.get("config_name") or cfg.name, "rig": args.rig or "any"},
                       capacity)
    size = path.stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB, {cfg.name}, batch {args.batch}, image {cfg.img_hw[1]}x"
          f"{cfg.img_hw[0]}, cross-attention {model.sca_capacity} of {all_pairs(cfg)} (query, camera) "
          f"pairs ({args.rig or 'any rig'}), export {time.perf_counter() - t0:.0f} s)")
    if not args.no_verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed: skipped the check against PyTorch")
        else:
            diff = verify(path, DrivingGraph(model))
            print(f"onnxruntime vs PyTorch, two frames: max |diff| {diff:.2e} (tolerance {args.tolerance:g})")
            if not diff <= args.tolerance:
                raise UserError(f"onnxruntime outputs differ from PyTorch by {diff:.2e} > --tolerance "
                                f"{args.tolerance:g}: {args.out} not written (the graph is left in {path} "
                                "to inspect)")
    os.replace(path, args.out)
    return 0


if __name__ == "__main__":
    cli_main(main)
