"""ONNX export of a VAD driving model, and an onnxruntime runner with the model's own call signature.

    graph = DrivingGraph(model)                     # one frame + previous BEV -> plan, ..., new BEV
    export_onnx(model, "model.onnx")                # torch.onnx.export (dynamo exporter), static shapes
    runner = OnnxRunner("model.onnx", cfg)          # onnxruntime on CPU
    outputs, state = runner(inputs, state)          # as `VAD.forward` with Tq = 1 (outputs: OUTPUTS)

The exported graph is `VAD.forward` for one frame (Tq = 1) in its fixed-shape form (`VAD.static_shapes`,
docs/deploy.md), batch and image size fixed at export time:

    inputs   img (B, 1, Ncam, 3, H, W) float32, normalised as cfg.img_norm; img_from_ego (B, 1, Ncam, 4, 4);
             can_bus (B, 1, 18); cur_from_prev (B, 1, 4, 4); prev_valid (B, 1) bool; command (B,) int64;
             ego_his (B, 2, 2); goal_point (B, 2) (CARLA variant only); prev_bev (B, H*W, C) float32
    outputs  plan (B, T, 2); plan_all (B, 3, T, 2); det_logits (B, Q, 10); det_boxes (B, Q, 9); map_logits
             (B, V, 3); map_pts (B, V, P, 2); tl_logits (B, 4) (traffic-light variant only); bev (B, H*W, C)

A first frame has no previous BEV: the runner feeds zeros with prev_valid False, which the model treats
exactly as "no state" (the temporal attention then uses the current queries). The model's config is stored
in the file's metadata (`vad_config`), so a runner can refuse a file exported from another config.

Cross-attention capacity (docs/deploy.md): eager PyTorch computes the spatial cross-attention only for
the (BEV query, camera) pairs a camera sees; a fixed-shape graph needs a fixed number of slots. Which
pairs are visible depends only on the calibration and the image size, so for a known rig the capacity is
its visible count plus a margin (`sca_capacity`); without a rig it is every pair (Ncam * H * W: exact for
any calibration, but several times the work). `CapacityGuard` checks on the host, once per distinct
calibration, that the inputs' calibration fits (a ValueError, never silently dropped pairs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.bev_encoder import visible_pairs
from models.vad import VAD, BEVState, VADConfig, check_finite_inputs
from vlmad.commands import Command
from vlmad.errors import UserError
from vlmad.horizon import HIS_STEPS

OPSET = 18  # the dynamo exporter's default; GridSample (opset 16+) is the newest op the graph needs
META_CONFIG = "vad_config"
META_CAPACITY = "sca_capacity"
CAPACITY_MARGIN = 0.02  # slots beyond the rig's visible pairs: other received image sizes round the
# projections slightly differently (a few pairs at the image borders)


def all_pairs(cfg: VADConfig) -> int:
    """Every (BEV query, camera) pair: the capacity that fits any calibration."""
    return cfg.num_cams * cfg.bev_h * cfg.bev_w


def count_visible(
    cfg: VADConfig, img_from_ego: torch.Tensor, ego_from_bev: torch.Tensor | None = None
) -> int:
    """Largest number of visible (BEV query, camera) pairs over a batch of projections (..., Ncam, 4, 4)
    (the model's image size), BEV frame at ego_from_bev (B, 4, 4) or the config's nominal mounting."""
    m = torch.as_tensor(img_from_ego).float().cpu().reshape(-1, cfg.num_cams, 4, 4)
    e = torch.as_tensor(cfg.nominal_ego_from_bev(), dtype=torch.float32) if ego_from_bev is None else (
        torch.as_tensor(ego_from_bev).float().cpu().reshape(-1, 4, 4)[:, None])
    n = visible_pairs(m @ e, cfg.img_hw, cfg.bev_h, cfg.bev_w, cfg.pc_range, cfg.num_pillar_heights)
    return int(n.max())


def sca_capacity(cfg: VADConfig, img_from_ego: torch.Tensor) -> int:
    """Capacity for a rig's projections (Ncam, 4, 4) or (..., Ncam, 4, 4): its visible pairs + the margin,
    rounded up to a multiple of 64, at most every pair."""
    n = count_visible(cfg, img_from_ego)
    n = n + max(64, math.ceil(CAPACITY_MARGIN * n))
    return min(all_pairs(cfg), 64 * math.ceil(n / 64))


def rig_projections(cfg: VADConfig, rig_name: str) -> torch.Tensor:
    """(Ncam, 4, 4) projections of a `vlmad.rig.RIGS` rig at the config's image size (as the dataset and
    the dummy batches build them)."""
    from vlmad.rig import RIGS

    if rig_name not in RIGS:
        raise UserError(f"unknown rig {rig_name!r}; valid: {sorted(RIGS)}")
    rig = RIGS[rig_name].with_image_size(*cfg.img_size_raw)
    return torch.as_tensor(rig.img_from_ego(cfg.img_scale)[: cfg.num_cams], dtype=torch.float32)


class CapacityGuard:
    """Host-side check that an input calibration fits a fixed cross-attention capacity (cached per
    distinct calibration, so a fixed rig costs one check)."""

    def __init__(self, cfg: VADConfig, capacity: int, where: str) -> None:
        self.cfg, self.capacity, self.where = cfg, capacity, where
        self._seen: dict[bytes, int] = {}

    def check(self, img_from_ego: torch.Tensor, ego_from_bev: torch.Tensor | None = None) -> None:
        if self.capacity >= all_pairs(self.cfg):
            return  # every pair fits
        arrs = [torch.as_tensor(x).detach().float().cpu().numpy() for x in (img_from_ego, ego_from_bev)
                if x is not None]
        key = b"".join(a.tobytes() for a in arrs)
        if key not in self._seen:
            if len(self._seen) > 64:
                self._seen.clear()
            self._seen[key] = count_visible(self.cfg, img_from_ego, ego_from_bev)
        n = self._seen[key]
        if n > self.capacity:
            raise ValueError(f"this calibration sees {n} (BEV query, camera) pairs but {self.where} was "
                             f"built for at most {self.capacity} (another rig or image size): rebuild it for "
                             "this rig (scripts.export_onnx --rig) or without a rig (every pair)")


def input_names(cfg: VADConfig) -> list[str]:
    """The graph's input names, in order (goal_point only for the CARLA variant)."""
    names = ["img", "img_from_ego", "can_bus", "cur_from_prev", "prev_valid", "command", "ego_his"]
    return names + (["goal_point"] if cfg.use_goal_point else []) + ["prev_bev"]


def output_names(cfg: VADConfig) -> list[str]:
    """The graph's output names, in order (tl_logits only for the traffic-light variant)."""
    names = ["plan", "plan_all", "det_logits", "det_boxes", "map_logits", "map_pts"]
    return names + (["tl_logits"] if cfg.use_traffic_light else []) + ["bev"]


class DrivingGraph(nn.Module):
    """`VAD.forward` for one frame as a function of flat tensors (see the module docstring), the form
    torch.onnx.export traces. Switches the wrapped model to eval mode and fixed shapes (`static_shapes`),
    which give the same outputs as the eager default."""

    def __init__(self, model: VAD) -> None:
        super().__init__()
        self.model = model.eval()
        model.static_shapes = True
        self.inputs = input_names(model.cfg)
        self.outputs = output_names(model.cfg)
        self.eval()

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """tensors in `input_names` order -> outputs in `output_names` order."""
        args = dict(zip(self.inputs, tensors))
        prev_bev = args.pop("prev_bev")
        # validity travels in prev_valid (the runner folds the state's own flag into it)
        state = BEVState(prev_bev, torch.ones(prev_bev.shape[0], dtype=torch.bool, device=prev_bev.device))
        out, new = self.model(args, state)
        out["bev"] = new.bev
        return tuple(out[k] for k in self.outputs)


def example_inputs(cfg: VADConfig, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """Inputs of the graph's shapes: zero images and motion, the CARLA rig's calibration at the config's
    image size, a straight command, no previous BEV. Only shapes and dtypes matter to the exporter; the
    calibration is a real one so the fixed-size camera packing sees a plausible rig."""
    b, (h, w) = batch_size, cfg.img_hw
    mats = rig_projections(cfg, "carla_vad")
    inputs = {
        "img": torch.zeros(b, 1, cfg.num_cams, 3, h, w),
        "img_from_ego": mats[None, None].expand(b, 1, -1, -1, -1).clone(),
        "can_bus": torch.zeros(b, 1, 18),
        "cur_from_prev": torch.eye(4).expand(b, 1, 4, 4).clone(),
        "prev_valid": torch.zeros(b, 1, dtype=torch.bool),
        "command": torch.full((b,), int(Command.STRAIGHT), dtype=torch.long),
        "ego_his": torch.zeros(b, HIS_STEPS, 2),
        "goal_point": torch.tensor([[10.0, 0.0]]).expand(b, 2).clone(),
        "prev_bev": torch.zeros(b, cfg.bev_h * cfg.bev_w, cfg.embed_dims),
    }
    return {k: inputs[k] for k in input_names(cfg)}


def export_onnx(model: VAD, out: str | Path, batch_size: int = 1, metadata: dict | None = None,
                capacity: int | None = None) -> Path:
    """Export `model` (CPU, float32) to an ONNX file `out` for `batch_size` samples at the config's image
    size; capacity: cross-attention slots (`sca_capacity` of the rig; None = every pair). The config, the
    capacity (and `metadata`) go into the file's metadata. Returns the path written."""
    cfg = model.cfg
    capacity = all_pairs(cfg) if capacity is None else min(int(capacity), all_pairs(cfg))
    model.sca_capacity = capacity
    graph = DrivingGraph(model.float().cpu())
    args = tuple(example_inputs(cfg, batch_size).values())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        prog = torch.onnx.export(graph, args, input_names=graph.inputs, output_names=graph.outputs,
                                 opset_version=OPSET, dynamo=True, verbose=False)
    if prog is None:  # pragma: no cover - the dynamo exporter always returns its program
        raise RuntimeError("torch.onnx.export returned no program")
    props = {META_CONFIG: json.dumps(dataclasses.asdict(cfg), sort_keys=True), META_CAPACITY: str(capacity)}
    props.update({k: str(v) for k, v in (metadata or {}).items()})
    prog.model.metadata_props.update(props)
    prog.save(str(out))
    return out


def _config_json(cfg: VADConfig) -> str:
    # through JSON both ways so tuples / lists compare equal
    return json.dumps(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=True)


class OnnxRunner:
    """An exported VAD in onnxruntime, called like the model: runner(inputs, state) -> (outputs, state).

    inputs: the model's input dict for one frame (Tq = 1; see the module docstring), torch tensors on any
    device; state: the BEVState of the previous call or None. Outputs: the names in `output_names` as
    CPU torch tensors; state: BEVState(new BEV, valid). Raises UserError for a missing file, a missing
    onnxruntime or a file exported from another config than `cfg`, ValueError for inputs whose shapes
    differ from those exported, that hold NaN / inf (as `VAD.forward`) or whose calibration does not fit
    the file's cross-attention capacity."""

    def __init__(self, path: str | Path, cfg: VADConfig, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the onnxruntime backend needs the onnxruntime package: `.venv/bin/pip "
                            "install onnxruntime` (scripts/setup_env.sh installs it)") from None
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"ONNX file {path} does not exist; export one with "
                            "`python -m scripts.export_onnx --checkpoint DIR --out model.onnx`")
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own error types for unreadable / invalid files
            raise UserError(f"ONNX file {path} cannot be loaded by onnxruntime: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.path = path
        stored = meta.get(META_CONFIG)
        if stored is None:
            raise UserError(f"ONNX file {path} has no `{META_CONFIG}` metadata: it was not written by "
                            "scripts.export_onnx; re-export it from the checkpoint")
        if json.dumps(json.loads(stored), sort_keys=True) != _config_json(cfg):
            mine, theirs = json.loads(_config_json(cfg)), json.loads(stored)
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise UserError(f"ONNX file {path} was exported from another model config than the "
                            f"checkpoint's (fields differ: {diff}); re-export it from this checkpoint")
        self.inputs = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.hidden = self.inputs["prev_bev"][1:]
        self.capacity = int(meta.get(META_CAPACITY, all_pairs(cfg)))
        self.guard = CapacityGuard(cfg, self.capacity, path.name)

    def check_calibration(self, img_from_ego: torch.Tensor) -> None:
        """ValueError when projections (..., Ncam, 4, 4) see more pairs than the file's capacity."""
        self.guard.check(img_from_ego)

    def _feed(self, name: str, value: torch.Tensor | np.ndarray) -> np.ndarray:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        want = self.inputs[name]
        if tuple(arr.shape) != want:
            raise ValueError(f"input {name!r} has shape {tuple(arr.shape)} but {self.path.name} was exported "
                             f"for {want} (batch, image size and config are fixed at export; re-export "
                             "with scripts.export_onnx for these inputs)")
        dtype = {"prev_valid": np.bool_, "command": np.int64}.get(name, np.float32)
        return arr.astype(dtype, copy=False)

    def __call__(self, inputs: dict, state: BEVState | None = None) -> tuple[dict, BEVState]:
        """One frame -> (outputs, new state); see the class docstring."""
        check_finite_inputs(inputs)
        # the model reads ego_from_bev when given; the graph always uses the nominal mounting. Other keys
        # (goal_point of a config without it, training targets) the model ignores too
        if inputs.get("ego_from_bev") is not None:
            raise ValueError(f"inputs['ego_from_bev'] is not an input of the exported graph {self.path.name} "
                             f"(it uses the config's nominal BEV mounting; it takes {sorted(self.inputs)})")
        img = inputs["img"]
        b = img.shape[0]
        valid = torch.as_tensor(inputs.get("prev_valid", torch.zeros(b, 1, dtype=torch.bool))).bool().cpu()
        if state is None:
            prev_bev = torch.zeros(b, *self.hidden)
            valid = torch.zeros_like(valid)
        else:
            prev_bev = state.bev.float()
            valid = valid & state.valid.bool().cpu().view(-1, 1)
        values = {**inputs, "prev_valid": valid, "prev_bev": prev_bev}
        missing = [k for k in self.inputs if values.get(k) is None]
        if missing:
            raise ValueError(f"inputs need {missing} for the exported graph {self.path.name}")
        feed = {k: self._feed(k, values[k]) for k in self.inputs}
        self.check_calibration(inputs["img_from_ego"])
        res = dict(zip(self.outputs, (torch.from_numpy(r) for r in self.session.run(None, feed))))
        return res, BEVState(res["bev"], torch.ones(b, dtype=torch.bool))
