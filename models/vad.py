"""VAD (Jiang et al., ICCV 2023) in pure PyTorch: config, model, inference API and training loss.

    outputs, state = model(inputs, state)      # one call: images + calibration + CAN bus + command
    losses = model.loss(outputs, batch)        # training: every weighted term and "total"

Inputs (the feature part of a batch, docs/data_contract.md): img (B, Tq, Ncam, 3, H, W) normalised as
`cfg.img_norm` says, img_from_ego (B, Tq, Ncam, 4, 4), can_bus (B, Tq, 18), cur_from_prev (B, Tq, 4, 4),
prev_valid (B, Tq) bool, command (B,), ego_his (B, 2, 2); CARLA variant also goal_point (B, 2); optional
ego_from_bev (B, 4, 4) or (B, Tq, 4, 4): the sample's LIDAR_TOP calibration (`ego_from_lidar`), else the
config's nominal mounting (`bev_xyz`, `bev_yaw_deg`).

Frames: as VAD, the BEV grid and every head work in the BEV frame = LIDAR_TOP (x right, y forward,
docs/coordinate_systems.md), so the official checkpoints load with a rename only (models/convert_official.py);
the public outputs are converted into the ego frame (x forward, y left) at the end of `decode`, and the
BEV-frame originals are returned too (`*_bev`, `map_pts_norm`).
With Tq > 1 the earlier frames build the previous BEV without gradient (BEVFormer's history; a given
`state` then seeds the first frame); with Tq == 1 the `state` argument (explicit, returned by the
previous call) supplies it. Nothing temporal is
kept in module attributes, so one model can serve several agents / evaluations at once.

Module names follow the official VAD state dict where possible (see docs/models.md for the mapping).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models import losses as L
from models.backbone import ResNet
from models.bev_encoder import (
    BEVFormerEncoder,
    align_prev_bev,
    invert_4x4,
    official_shift,
    rotate_prev_bev_official,
)
from models.decoders import (
    RefineDecoder,
    box_code_to_boxes,
    code_bev_to_ego,
    decode_boxes,
    normalised_xy,
    points_bev_to_ego,
    vectors_bev_to_ego,
)
from models.deform_attn import inductor_keeping_grid_sample
from models.features import can_bus_from_motion, drop_ego_status, padded_size, resized_size
from models.fpn import FPN
from models.layers import LearnedPositionalEncoding, cls_branch, reg_branch
from models.motion_planning import LaneNet, MotionHead, PlanningHead, TrafficLightBranch
from vlmad.errors import UserError
from vlmad.frames import make_transform, rot_z
from vlmad.horizon import FUT_STEPS, HIS_STEPS
from vlmad.rig import NUSCENES_RIG

BEV_ALIGN_MODES = ("official", "exact")


@dataclass
class VADConfig:
    """Everything that defines a VAD network and its loss. Presets in models/configs.py."""

    name: str = "vad_base"  # preset name, recorded in checkpoints
    # ---- input ----------------------------------------------------------------------------------------
    img_size_raw: tuple[int, int] = (1600, 900)  # (W, H) of the camera images before resizing
    img_scale: float = 0.8  # resize factor (Base 0.8 -> 1280x720, Tiny 0.4 -> 640x360)
    pad_divisor: int = 32  # pad H and W up to a multiple of this (720 -> 736, 360 -> 384); the resized size
    # rounds down as VAD's (models.features.resized_size)
    img_norm: str = "torchvision"  # "torchvision" (RGB, ImageNet mean/std: matches torchvision ImageNet
    # weights) or "caffe" (BGR, mean 103.53/116.28/123.675, std 1: what the released VAD checkpoints need);
    # models.features applies it (IMG_NORMS), for the dataset and the agent alike
    num_cams: int = 6  # cameras, in vlmad.rig.CAMERA_NAMES order
    # ---- backbone and neck ----------------------------------------------------------------------------
    backbone_width: int = 64  # ResNet stem width (64 = ResNet-50; smaller only for the test size)
    backbone_blocks: tuple[int, ...] = (3, 4, 6, 3)  # bottlenecks per stage (ResNet-50)
    backbone_out_indices: tuple[int, ...] = (1, 2, 3)  # stages fed to the FPN (Base C3-C5, Tiny C5 = (3,))
    frozen_stages: int = 1  # stem + layer1 frozen (mmdet frozen_stages=1); BatchNorm always frozen
    fpn_levels: int = 4  # FPN outputs (Base 4 with one extra strided level, Tiny 1)
    # ---- BEV ------------------------------------------------------------------------------------------
    bev_h: int = 200  # BEV rows, along BEV y (LIDAR_TOP forward, 60 m)
    bev_w: int = 200  # BEV columns, along BEV x (LIDAR_TOP right, 30 m)
    pc_range: tuple[float, ...] = (-15.0, -30.0, -2.0, 15.0, 30.0, 2.0)  # x0 y0 z0 x1 y1 z1 in the BEV
    # frame (VAD's point_cloud_range, LIDAR_TOP axes: x right, y forward, z up, origin at the lidar)
    bev_xyz: tuple[float, ...] = tuple(NUSCENES_RIG.lidar_xyz)  # nominal BEV-frame origin in the ego frame
    # (the nuScenes LIDAR_TOP mounting, m); a sample's own calibration in inputs["ego_from_bev"] wins
    bev_yaw_deg: float = NUSCENES_RIG.lidar_yaw_deg  # nominal yaw of the BEV frame's x axis in the ego frame
    bev_align: str = "official"  # temporal alignment of the previous BEV: "official" (VAD: nearest-neighbour
    # rotation about pixel (100, 100) + reference-point shift; what the released weights saw) or "exact"
    # (bilinear resampling through the ego motion; this project's improvement, docs/models.md)
    num_pillar_heights: int = 4  # pillar points per BEV cell for spatial cross-attention
    queue_length: int = 4  # temporal queue Tq used in training (Base 4, Tiny 3); inference uses state
    can_bus_from_motion: bool = True  # overwrite can_bus[0:3] / [17] with the motion since the previous
    # frame (from cur_from_prev), as BEVFormer feeds deltas; False = use the can_bus values as given
    bev_ego_status: bool = True  # the BEV queries see the CAN bus's ego motion (VAD); False zeroes it
    # (models.features.CAN_BUS_EGO_STATUS): a driver that stands cannot read "I stand" from its input
    # and copy it (BEV-Planner, Li et al. 2024; docs/models.md "Ego status")
    # ---- transformer ----------------------------------------------------------------------------------
    embed_dims: int = 256  # channels of every query / feature
    ffn_dims: int = 512  # hidden size of every FFN
    num_heads: int = 8  # attention heads everywhere
    dropout: float = 0.1  # dropout in attention / FFN (VAD 0.1)
    encoder_layers: int = 6  # BEVFormer layers (Base 6, Tiny 3)
    det_layers: int = 6  # detection decoder layers (Base 6, Tiny 3)
    map_layers: int = 6  # map decoder layers (Base 6, Tiny 3)
    tsa_points: int = 4  # sampling points per head in temporal self-attention (BEVFormer / VAD: 4)
    sca_points: int = 8  # sampling points per head and level in spatial cross-attention (over 4 heights)
    dec_points: int = 4  # sampling points per head in the decoders' BEV cross-attention
    # ---- detection / motion ---------------------------------------------------------------------------
    num_agent_queries: int = 300  # agent (detection) queries
    num_classes: int = 10  # nuScenes detection classes
    fut_mode: int = 6  # motion modes per agent
    fut_ts: int = FUT_STEPS  # future steps (vlmad.horizon.STEP_S apart) for motion and planning
    motion_map_thresh: float = 0.5  # lanes with a lower class score are not attended by motion queries
    motion_map_dis_thresh: float = 0.2  # normalised BEV units (VAD's dis_thresh): lanes whose point nearest
    # the grid corner is farther from the agent are not attended (0.2 = 6 m across, 12 m along the grid)
    # ---- map ------------------------------------------------------------------------------------------
    map_num_vec: int = 100  # map vector queries
    map_num_pts: int = 20  # points per vector
    map_num_classes: int = 3  # divider, ped_crossing, boundary
    # ---- planning -------------------------------------------------------------------------------------
    ego_fut_mode: int = 3  # command modes: 0 right, 1 left, 2 straight (vlmad.commands.Command)
    ego_his_steps: int = HIS_STEPS  # past ego positions in inputs["ego_his"]
    use_ego_his: bool = False  # add an ego-history embedding to the ego query (VAD default: off)
    plan_query_thresh: float = 0.0  # agents / lanes not above this score are left out of the ego query's
    # attention (VAD's query_thresh 0, no pad key: query_use_fix_pad=False)
    # ---- planning constraints (VAD end-to-end config) -------------------------------------------------
    plan_agent_thresh: float = 0.5  # predicted agents above this score enter the collision loss
    plan_map_thresh: float = 0.5  # predicted map vectors above this score enter boundary / direction losses
    bound_dis_thresh: float = 1.0  # metres to road boundaries
    col_lat_thresh: float = 1.5  # metres lateral (ego y) for the collision loss
    col_lon_thresh: float = 3.0  # metres longitudinal (ego x)
    col_dis_thresh: float = 3.0  # metres; farther agents are ignored by the collision loss
    dir_dis_thresh: float = 2.0  # metres to the nearest divider for the direction loss
    # ---- loss weights (docs/facts.md section 6) -----------------------------------------------------------
    w_det_cls: float = 2.0  # detection focal
    w_det_reg: float = 0.25  # detection L1 (box code)
    w_motion_reg: float = 0.2  # motion L1 of the best mode
    w_motion_cls: float = 0.2  # motion mode focal
    w_map_cls: float = 2.0  # map focal
    w_map_pts: float = 1.0  # map points L1 (normalised coordinates)
    w_map_dir: float = 0.005  # map direction (cosine)
    w_plan_reg: float = 1.0  # planning L1
    w_plan_bound: float = 1.0  # planning boundary constraint
    w_plan_col: float = 1.0  # planning agent-collision constraint
    w_plan_dir: float = 0.5  # planning direction constraint
    aux_loss: bool = True  # detection / map losses on every decoder layer (DETR auxiliary losses)
    # ---- CARLA variant switches -----------------------------------------------------------------------
    use_goal_point: bool = False  # goal point (B, 2) + command one-hot -> MLP -> added to the ego query
    use_traffic_light: bool = False  # ResNet-50 on the front image's top-middle crop -> ego query, tl_logits
    tl_num_classes: int = 4  # traffic-light classes: red, yellow, green, none
    tl_crop: tuple[float, ...] = (0.0, 0.5, 0.25, 0.75)  # top, bottom, left, right (fractions of the image)
    w_tl: float = 1.0  # traffic-light cross-entropy (only when the batch has "tl_label")

    def __post_init__(self) -> None:
        if self.bev_align not in BEV_ALIGN_MODES:
            raise UserError(f"bev_align must be one of {list(BEV_ALIGN_MODES)}, got {self.bev_align!r}")
        if len(self.pc_range) != 6 or len(self.bev_xyz) != 3:
            raise UserError("pc_range needs 6 values (x0 y0 z0 x1 y1 z1) and bev_xyz 3 (x y z)")

    def nominal_ego_from_bev(self) -> np.ndarray:
        """4x4 `ego_from_bev` of the nominal mounting (`bev_xyz`, `bev_yaw_deg`), float64."""
        return make_transform(rot_z(math.radians(self.bev_yaw_deg)), self.bev_xyz)

    @property
    def ego_range(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in the ego frame of the grid under the nominal mounting (axis-aligned hull):
        the scale the losses normalise ego-frame map points by (VAD normalises by the grid extent)."""
        x0, y0, _, x1, y1, _ = self.pc_range
        corners = np.array([[x0, y0, 0.0], [x1, y0, 0.0], [x0, y1, 0.0], [x1, y1, 0.0]])
        e = self.nominal_ego_from_bev()
        pts = corners @ e[:3, :3].T + e[:3, 3]
        lo, hi = pts.min(0), pts.max(0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    @property
    def img_hw(self) -> tuple[int, int]:
        """(H, W) of the resized and padded model input (models.features: the dataset's and the agent's)."""
        w, h = padded_size(*resized_size(*self.img_size_raw, self.img_scale), self.pad_divisor)
        return h, w


@dataclass
class BEVState:
    """The temporal state the caller keeps between frames: previous BEV (B, H*W, C) and its validity (B,)."""

    bev: torch.Tensor
    valid: torch.Tensor

    def to(self, device: torch.device | str) -> BEVState:
        return BEVState(self.bev.to(device), self.valid.to(device))


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily switch off dropout (history frames run as at test time), restoring every flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


class _Transformer(nn.Module):
    """VADPerceptionTransformer: BEV encoder, both decoders and their embeddings."""

    def __init__(self, cfg: VADConfig) -> None:
        super().__init__()
        c = cfg.embed_dims
        self.encoder = BEVFormerEncoder(
            cfg.encoder_layers,
            c,
            cfg.num_heads,
            cfg.ffn_dims,
            cfg.fpn_levels,
            cfg.bev_h,
            cfg.bev_w,
            cfg.pc_range,
            cfg.num_pillar_heights,
            cfg.sca_points,
            cfg.dropout,
            num_points_tsa=cfg.tsa_points,
        )
        self.decoder = RefineDecoder(
            cfg.det_layers, c, cfg.num_heads, cfg.ffn_dims, cfg.dec_points, cfg.dropout
        )
        self.map_decoder = RefineDecoder(
            cfg.map_layers, c, cfg.num_heads, cfg.ffn_dims, cfg.dec_points, cfg.dropout
        )
        self.level_embeds = nn.Parameter(torch.randn(cfg.fpn_levels, c) * 0.02)
        self.cams_embeds = nn.Parameter(torch.randn(cfg.num_cams, c) * 0.02)
        self.can_bus_mlp = nn.Sequential(
            nn.Linear(18, c // 2), nn.ReLU(inplace=True), nn.Linear(c // 2, c), nn.ReLU(inplace=True)
        )
        self.can_bus_mlp.add_module("norm", nn.LayerNorm(c))
        self.reference_points = nn.Linear(c, 3)
        self.map_reference_points = nn.Linear(c, 2)


class VAD(nn.Module):
    """Vectorised autonomous driving: cameras -> BEV -> agents, motion, map -> plan."""

    def __init__(self, cfg: VADConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dims
        self.img_backbone = ResNet(
            cfg.backbone_width, cfg.backbone_blocks, cfg.backbone_out_indices, cfg.frozen_stages
        )
        self.img_neck = FPN(self.img_backbone.out_channels, c, cfg.fpn_levels)
        self.transformer = _Transformer(cfg)
        self.bev_embedding = nn.Embedding(cfg.bev_h * cfg.bev_w, c)
        self.positional_encoding = LearnedPositionalEncoding(c // 2, cfg.bev_h, cfg.bev_w)
        self.query_embedding = nn.Embedding(cfg.num_agent_queries, 2 * c)
        self.map_instance_embedding = nn.Embedding(cfg.map_num_vec, 2 * c)
        self.map_pts_embedding = nn.Embedding(cfg.map_num_pts, 2 * c)
        self.cls_branches = nn.ModuleList(cls_branch(c, cfg.num_classes) for _ in range(cfg.det_layers))
        self.reg_branches = nn.ModuleList(reg_branch(c, 10) for _ in range(cfg.det_layers))
        self.map_cls_branches = nn.ModuleList(
            cls_branch(c, cfg.map_num_classes) for _ in range(cfg.map_layers)
        )
        self.map_reg_branches = nn.ModuleList(reg_branch(c, 2) for _ in range(cfg.map_layers))
        self.lane_encoder = LaneNet(c, c // 2, 3)
        self.motion = MotionHead(
            c,
            cfg.num_heads,
            cfg.ffn_dims,
            cfg.fut_mode,
            cfg.fut_ts,
            cfg.motion_map_thresh,
            cfg.motion_map_dis_thresh,
            cfg.dropout,
        )
        self.planning = PlanningHead(
            c,
            cfg.num_heads,
            cfg.ffn_dims,
            cfg.fut_mode,
            cfg.ego_fut_mode,
            cfg.fut_ts,
            cfg.ego_his_steps,
            cfg.use_ego_his,
            cfg.use_goal_point,
            cfg.ego_fut_mode,
            cfg.plan_query_thresh,
            cfg.dropout,
        )
        self.tl_branch = (
            TrafficLightBranch(
                c, cfg.tl_num_classes, cfg.tl_crop, cfg.backbone_width, cfg.backbone_blocks, cfg.frozen_stages
            )
            if cfg.use_traffic_light
            else None
        )
        ex0, ey0, ex1, ey1 = cfg.ego_range
        # the CARLA goal point (ego metres) enters the ego query divided by the grid's ego half extents
        self.register_buffer("pos_scale", torch.tensor([(ex1 - ex0) / 2, (ey1 - ey0) / 2]), persistent=False)
        e = torch.as_tensor(cfg.nominal_ego_from_bev(), dtype=torch.float32)
        self.register_buffer("nominal_ego_from_bev", e, persistent=False)
        # fixed shapes in the BEV encoder (`sca_capacity` (query, camera) slots, masked; None = every pair)
        # and no host sync: the forward is one graph (torch.compile fullgraph, ONNX). Set by
        # models.onnx_export; also on whenever TorchDynamo traces. Off = eager packs exactly the visible
        # pairs (one host sync). docs/deploy.md
        self.static_shapes = False
        self.sca_capacity: int | None = None

    # ------------------------------------------------------------------------------------------------
    # BEV
    # ------------------------------------------------------------------------------------------------
    def extract_img_feats(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img (N, 3, H, W) -> FPN levels (N, C, h_l, w_l)."""
        return self.img_neck(self.img_backbone(img))

    def _camera_value(self, feats: list[torch.Tensor], b: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """FPN levels of B*Ncam images -> (B*Ncam, S, C) values with camera and level embeddings."""
        t = self.transformer
        ncam = self.cfg.num_cams
        cam = t.cams_embeds[None].expand(b, ncam, -1).reshape(b * ncam, 1, -1)
        vals, shapes = [], []
        for lvl, f in enumerate(feats):
            shapes.append((f.shape[-2], f.shape[-1]))
            vals.append(f.flatten(2).transpose(1, 2) + cam.to(f.dtype) + t.level_embeds[lvl].to(f.dtype))
        return torch.cat(vals, 1), shapes

    def ego_from_bev(self, inputs: dict, b: int, tq: int, device: torch.device) -> torch.Tensor:
        """(B, Tq, 4, 4) fp32 BEV-frame poses: inputs["ego_from_bev"] ((B, 4, 4) or (B, Tq, 4, 4)) or the
        config's nominal mounting."""
        m = inputs.get("ego_from_bev")
        if m is None:
            return self.nominal_ego_from_bev.to(device)[None, None].expand(b, tq, 4, 4)
        m = m.to(device=device, dtype=torch.float32)
        return m[:, None].expand(b, tq, 4, 4) if m.dim() == 3 else m

    def encode_frame(
        self,
        feats: list[torch.Tensor],
        img_from_ego: torch.Tensor,
        can_bus: torch.Tensor,
        cur_from_prev: torch.Tensor,
        prev_valid: torch.Tensor,
        img_hw: tuple[int, int],
        prev: BEVState | None,
        ego_from_bev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One frame: features of its B*Ncam images -> BEV (B, H*W, C). ego_from_bev (B, 4, 4), default
        the nominal mounting."""
        cfg = self.cfg
        b = img_from_ego.shape[0]
        dev = img_from_ego.device
        can_bus = can_bus.float()
        with torch.autocast(dev.type, enabled=False):
            e = self.nominal_ego_from_bev[None].expand(b, 4, 4) if ego_from_bev is None else ego_from_bev
            e = e.float()
            img_from_bev = img_from_ego.float() @ e[:, None]  # VAD's lidar2img
            cur_from_prev = cur_from_prev.float()
            prev_from_cur = invert_4x4(cur_from_prev)  # no linalg.inv: ONNX has no matrix inverse
            # heading change since the previous frame (positive = turned left), BEVFormer's can_bus[-1]
            dyaw = torch.rad2deg(torch.atan2(prev_from_cur[:, 1, 0], prev_from_cur[:, 0, 0]))
        if cfg.can_bus_from_motion:
            can_bus = can_bus_from_motion(can_bus, prev_from_cur, dyaw)
        if not cfg.bev_ego_status:
            can_bus = drop_ego_status(can_bus)
        query = self.bev_embedding.weight[None] + self.transformer.can_bus_mlp(can_bus)[:, None]
        pos = self.positional_encoding()
        value, shapes = self._camera_value(feats, b)
        prev_bev, valid, shift = None, None, None
        if prev is not None:
            valid = prev.valid.bool() & prev_valid.bool()
            if cfg.bev_align == "exact":
                with torch.autocast(dev.type, enabled=False):
                    bcur_from_bprev = invert_4x4(e) @ cur_from_prev @ e
                prev_bev = align_prev_bev(prev.bev, bcur_from_bprev, cfg.bev_h, cfg.bev_w, cfg.pc_range)
            else:
                prev_bev = rotate_prev_bev_official(prev.bev, dyaw, cfg.bev_h, cfg.bev_w)
                # the ego's displacement in the current ego axes, turned into BEV axes by the nominal yaw
                # (VAD: CAN-bus translation rotated by the current heading, lidar assumed at -90 deg)
                disp = -cur_from_prev[:, :2, 3]
                rot = self.nominal_ego_from_bev[:2, :2].to(dev)
                shift = official_shift(disp @ rot, cfg.pc_range) * valid[:, None].float()
        return self.transformer.encoder(
            query, pos, value, shapes, img_from_bev, img_hw, prev_bev, valid, shift, self._capacity(),
        )

    def encode_bev(self, inputs: dict, state: BEVState | None = None) -> BEVState:
        """Run the temporal queue -> BEVState of the last frame (gradient only through the last frame)."""
        img = inputs["img"]
        b, tq, ncam = img.shape[:3]
        img_hw = (img.shape[-2], img.shape[-1])
        dev = img.device
        cur_from_prev = inputs.get("cur_from_prev")
        if cur_from_prev is None:
            cur_from_prev = torch.eye(4, device=dev).expand(b, tq, 4, 4)
        prev_valid = inputs.get("prev_valid")
        if prev_valid is None:
            prev_valid = torch.zeros(b, tq, dtype=torch.bool, device=dev)
        can_bus = inputs.get("can_bus")
        if can_bus is None:
            can_bus = torch.zeros(b, tq, 18, device=dev)

        ego_from_bev = self.ego_from_bev(inputs, b, tq, dev)

        def step(t: int, feats: list[torch.Tensor], prev: BEVState | None) -> torch.Tensor:
            return self.encode_frame(
                feats,
                inputs["img_from_ego"][:, t],
                can_bus[:, t],
                cur_from_prev[:, t],
                prev_valid[:, t],
                img_hw,
                prev,
                ego_from_bev[:, t],
            )

        prev = state
        if tq > 1:
            with torch.no_grad(), _eval_mode(self):
                hist = self.extract_img_feats(img[:, :-1].flatten(0, 2))
                for t in range(tq - 1):
                    feats = [f.view(b, tq - 1, ncam, *f.shape[1:])[:, t].flatten(0, 1) for f in hist]
                    bev = step(t, feats, prev)
                    prev = BEVState(bev, torch.ones(b, dtype=torch.bool, device=dev))
        bev = step(tq - 1, self.extract_img_feats(img[:, -1].flatten(0, 1)), prev)
        return BEVState(bev, torch.ones(b, dtype=torch.bool, device=dev))

    # ------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------
    def _check_inputs(self, inputs: dict) -> None:
        img = inputs.get("img")
        if img is None or img.dim() != 6 or img.shape[2] != self.cfg.num_cams or img.shape[3] != 3:
            shape = None if img is None else tuple(img.shape)
            raise ValueError(f"inputs['img'] must be (B, Tq, {self.cfg.num_cams}, 3, H, W), got {shape}")
        m = inputs.get("img_from_ego")
        if m is None or tuple(m.shape) != tuple(img.shape[:3]) + (4, 4):
            raise ValueError(
                f"inputs['img_from_ego'] must be {tuple(img.shape[:3]) + (4, 4)}, "
                f"got {None if m is None else tuple(m.shape)}"
            )
        if "command" not in inputs:
            raise ValueError("inputs need 'command' (B,) long: 0 right, 1 left, 2 straight")
        e = inputs.get("ego_from_bev")
        if e is not None and (e.dim() not in (3, 4) or tuple(e.shape[-2:]) != (4, 4)
                              or e.shape[0] != img.shape[0]):
            raise ValueError(
                f"inputs['ego_from_bev'] must be (B, 4, 4) or (B, Tq, 4, 4), got {tuple(e.shape)}"
            )
        if not self._static():  # a traced graph cannot raise: its callers check (check_finite_inputs)
            check_finite_inputs(inputs)

    def _capacity(self) -> int | None:
        """Cross-attention slots of the BEV encoder: fixed when static (`sca_capacity`, default every
        (query, camera) pair), None in eager mode (exactly the visible pairs)."""
        if not self._static():
            return None
        return self.sca_capacity or self.cfg.num_cams * self.cfg.bev_h * self.cfg.bev_w

    def _static(self) -> bool:
        """Fixed shapes, no host sync: `static_shapes` set, or TorchDynamo (compile, export) tracing."""
        return self.static_shapes or torch.compiler.is_compiling()

    def forward(self, inputs: dict, state: BEVState | None = None) -> tuple[dict, BEVState]:
        """Inputs -> (outputs, new state). See the module docstring for the inputs.

        Outputs in the ego frame (x forward, y left): plan_all (B, 3, T, 2) positions per command mode;
        plan (B, T, 2) of inputs' command; plan_offsets (B, 3, T, 2); f_ego (B, 2C); det_logits (B, Q, 10);
        det_boxes (B, Q, 9) [x, y, z, l, w, h, yaw, vx, vy]; det_code (B, Q, 10); motion_trajs
        (B, Q, M, T, 2) positions; motion_offsets (B, Q, M, T, 2) per-step offsets; motion_mode_logits
        (B, Q, M); map_logits (B, V, 3); map_pts (B, V, P, 2); aux_* lists of earlier decoder layers; bev
        (B, H*W, C); tl_logits (B, 4) for the traffic-light variant. In the BEV frame, as the official
        head returns them: det_code_bev (B, Q, 10) VAD's box code [cx, cy, log w, log l, cz, log h,
        sin, cos, vx, vy]; map_pts_norm (B, V, P, 2) normalised to the grid; motion_offsets_bev;
        plan_offsets_bev (B, 3, T, 2) (VAD's ego_fut_preds); ego_from_bev (B, 4, 4) used."""
        self._check_inputs(inputs)
        new_state = self.encode_bev(inputs, state)
        out = self.decode(new_state.bev, inputs)
        return out, BEVState(new_state.bev.detach(), new_state.valid)

    def decode(self, bev: torch.Tensor, inputs: dict) -> dict:
        """All heads on a BEV (B, H*W, C): agents, map, motion, planning. Outputs as `forward`."""
        cfg = self.cfg
        b, c = bev.shape[0], cfg.embed_dims
        shape = (cfg.bev_h, cfg.bev_w)
        t = self.transformer
        e = self.ego_from_bev(inputs, b, 1, bev.device)[:, -1]  # (B, 4, 4) of the current frame
        # agents
        qpos, q = self.query_embedding.weight.split(c, -1)
        ref = t.reference_points(qpos).sigmoid()[None].expand(b, -1, -1)
        hs, regs, refs = t.decoder(
            q[None].expand(b, -1, -1),
            qpos[None].expand(b, -1, -1),
            bev,
            shape,
            ref,
            self.reg_branches,
            (0, 1, 4),
        )
        # earlier layers only feed the auxiliary losses: skipped at inference
        keep = range(len(hs)) if self.training else [len(hs) - 1]
        det_logits = [self.cls_branches[i](hs[i]) for i in keep]
        det_code_bev = [decode_boxes(regs[i], refs[i], cfg.pc_range) for i in keep]
        agent_norm = normalised_xy(regs[-1], refs[-1]).detach()  # (B, Q, 2) VAD's outputs_coords_bev
        # map
        v, p = cfg.map_num_vec, cfg.map_num_pts
        memb = (self.map_pts_embedding.weight[None] + self.map_instance_embedding.weight[:, None]).flatten(
            0, 1
        )
        mpos, mq = memb.split(c, -1)
        mref = t.map_reference_points(mpos).sigmoid()[None].expand(b, -1, -1)
        mhs, mregs, mrefs = t.map_decoder(
            mq[None].expand(b, -1, -1),
            mpos[None].expand(b, -1, -1),
            bev,
            shape,
            mref,
            self.map_reg_branches,
            (0, 1),
        )
        keep = range(len(mhs)) if self.training else [len(mhs) - 1]
        map_logits = [self.map_cls_branches[i](mhs[i].view(b, v, p, c).mean(2)) for i in keep]
        map_norm = [normalised_xy(mregs[i], mrefs[i]).view(b, v, p, 2) for i in keep]
        # motion and planning, on normalised BEV positions as VAD's head
        lane_feats = self.lane_encoder(mhs[-1].view(b, v, p, c))
        offsets_bev, mode_logits, mfeats = self.motion(
            hs[-1], agent_norm, lane_feats, map_norm[-1].detach(), map_logits[-1].detach()
        )
        out: dict = {}
        extra = None
        if self.tl_branch is not None:
            extra, out["tl_logits"] = self.tl_branch(inputs["img"][:, -1, 0])
        plan_bev, f_ego = self.planning(
            mfeats,
            agent_norm,
            det_logits[-1].detach(),
            lane_feats,
            map_norm[-1].detach(),
            map_logits[-1].detach(),
            self.pos_scale.to(bev.dtype),
            inputs.get("ego_his"),
            inputs.get("goal_point"),
            inputs["command"],
            extra,
        )
        # public outputs in the ego frame
        x0, y0, _, x1, y1, _ = cfg.pc_range
        span = torch.tensor([x1 - x0, y1 - y0], device=bev.device)
        lo = torch.tensor([x0, y0], device=bev.device)
        det_code = [code_bev_to_ego(cd, e) for cd in det_code_bev]
        map_pts = [points_bev_to_ego(mn.float() * span + lo, e) for mn in map_norm]
        offsets = vectors_bev_to_ego(offsets_bev, e)
        plan_off = vectors_bev_to_ego(plan_bev, e)
        plan_all = plan_off.float().cumsum(-2)
        cmd = inputs["command"].long().clamp(0, cfg.ego_fut_mode - 1)
        agent_xy = det_code[-1][..., :2].detach()
        out.update(
            {
                "plan_offsets": plan_off,
                "plan_all": plan_all,
                "plan": plan_all[torch.arange(b, device=bev.device), cmd],
                "f_ego": f_ego,
                "det_logits": det_logits[-1],
                "det_code": det_code[-1],
                "det_boxes": box_code_to_boxes(det_code[-1]),
                "motion_offsets": offsets,
                "motion_mode_logits": mode_logits,
                "motion_trajs": agent_xy[:, :, None, None, :].float() + offsets.float().cumsum(-2),
                "map_logits": map_logits[-1],
                "map_pts": map_pts[-1],
                "aux_det_logits": det_logits[:-1],
                "aux_det_code": det_code[:-1],
                "aux_map_logits": map_logits[:-1],
                "aux_map_pts": map_pts[:-1],
                "bev": bev,
                "det_code_bev": det_code_bev[-1],
                "map_pts_norm": map_norm[-1],
                "motion_offsets_bev": offsets_bev,
                "plan_offsets_bev": plan_bev,
                "ego_from_bev": e,
            }
        )
        return out

    # ------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------
    def loss(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Every weighted loss term plus "total" (models.losses.vad_losses documents the targets)."""
        return L.vad_losses(self.cfg, outputs, batch)

    def param_groups(
        self, lr: float, backbone_lr_mult: float = 0.1, weight_decay: float = 0.01
    ) -> list[dict]:
        """AdamW parameter groups: image backbones at lr * backbone_lr_mult, the rest at lr."""
        bb, rest = [], []
        for name, prm in self.named_parameters():
            if not prm.requires_grad:
                continue
            (bb if name.startswith(("img_backbone.", "tl_branch.tl_backbone.")) else rest).append(prm)
        return [
            {"params": bb, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay, "name": "backbone"},
            {"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "rest"},
        ]


FINITE_INPUTS = ("img_from_ego", "can_bus", "cur_from_prev", "ego_his", "goal_point", "ego_from_bev")


def check_finite_inputs(inputs: dict) -> None:
    """ValueError naming the calibration / ego-motion inputs that hold NaN or inf (one host sync).

    These are tiny; a NaN there would silently poison the BEV. Images are not scanned (a full-image pass per
    frame buys little). `VAD.forward` calls it in eager mode; a compiled or exported model cannot, so its
    caller does (the agent's torch.compile / onnxruntime backends)."""
    keys = [k for k in FINITE_INPUTS if inputs.get(k) is not None]
    if keys:
        finite = torch.stack([torch.isfinite(torch.as_tensor(inputs[k])).all() for k in keys]).tolist()
        bad = [k for k, ok in zip(keys, finite) if not ok]
        if bad:
            raise ValueError(f"inputs {bad} contain NaN or inf")


def compile_for_inference(
    model: VAD, heads_only: bool = False, backend: str = "inductor", sca_capacity: int | None = None
) -> VAD:
    """`torch.compile` a VAD for inference (eval mode, same call signature; the weights stay shared).

    Both forms use `fullgraph=True`: any graph break (data-dependent shape, host sync) raises at the first
    call instead of silently splitting the graph. heads_only=False compiles the whole `forward` as one
    graph: under TorchDynamo the BEV encoder takes its fixed-shape path (`sca_capacity` (query, camera)
    slots, masked) and the input finiteness check is left to the caller
    (`check_finite_inputs`; a graph cannot raise). heads_only=True compiles `decode` alone (motion /
    planning lane selection and the score thresholds are masks over fixed-size keys). The first call
    compiles (a minute or more on a small CPU, see docs/deploy.md); later calls with the same shapes and
    the same presence of a previous state reuse the graph.
    backend: torch.compile's backend ("inductor" generates kernels, here with ATen's grid_sample on CPU:
    models.deform_attn.inductor_keeping_grid_sample; "aot_eager" / "eager" only trace, for tests).
    sca_capacity: the BEV encoder's fixed number of (query, camera) slots (models.onnx_export.sca_capacity
    of the rig; None = every pair, any calibration); the caller checks that its calibration fits
    (models.onnx_export.CapacityGuard)."""
    model.eval()
    model.sca_capacity = sca_capacity
    if backend == "inductor":  # inductor, with ATen's grid_sample on CPU (several times faster there)
        backend = inductor_keeping_grid_sample  # type: ignore[assignment]
    if heads_only:
        model.decode = torch.compile(model.decode, fullgraph=True, backend=backend)  # type: ignore[method-assign]
        return model
    return torch.compile(model, fullgraph=True, backend=backend)  # type: ignore[return-value]
