"""Torch dataset over the sample records: temporal queue, image resize / pad / normalise, and collate.

One item is the model input of one keyframe plus (optionally) its training targets, as specified in
docs/data_contract.md. Inputs are built by `build_features` from a copy of the records that holds only
the keys in `models.features.RECORD_KEYS`, so nothing downstream of a feature can depend on ground truth;
targets are built separately by `build_targets`. Image size, normalisation and the CAN-bus form are the
model-input contract's (models/features.py), shared with the CARLA agent (agent/sensing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.features import (
    RECORD_KEYS,
    can_bus_delta,
    check_norm,
    normalise_planes_into,
    padded_size,
    resize_image,
    resized_size,
)
from nusc.records import PATCH_X, PATCH_Y
from vlmad.errors import UserError
from vlmad.frames import img_from_ego_calibrated, relative_motion
from vlmad.rig import CAMERA_NAMES


@dataclass
class DatasetConfig:
    """How records become model batches."""

    queue_length: int = 3  # frames in the temporal queue including the current one (VAD-Tiny 3, VAD-Base 4)
    img_scale: float = 0.4  # resize factor of the source images (VAD-Tiny 0.4: 1600x900 -> 640x360; Base 0.8)
    pad_divisor: int = 32  # images are zero-padded (bottom/right) to a multiple of this (640x360 -> 640x384)
    normalisation: str = "torchvision"  # a models.features.IMG_NORMS name ("caffe": BGR, mean only)
    cameras: tuple[str, ...] = CAMERA_NAMES  # camera order of the `img` axis
    fast_decode: bool = False  # decode JPEGs at half size when img_scale <= 0.5 (faster, not bit-identical)
    agent_range: tuple[float, float] = (PATCH_X / 2, PATCH_Y / 2)  # |x|, |y| limits (m) of target agents


def image_sizes(width: int, height: int, cfg: DatasetConfig) -> tuple[int, int, int, int]:
    """(resized w, resized h, padded w, padded h) for a source image of `width` x `height`."""
    w, h = resized_size(width, height, cfg.img_scale)
    return (w, h, *padded_size(w, h, cfg.pad_divisor))


def load_image(path: Path, cfg: DatasetConfig) -> np.ndarray:
    """(h, w, 3) uint8 BGR image as decoded (at half size with cfg.fast_decode); a UserError if unreadable."""
    flag = cv2.IMREAD_REDUCED_COLOR_2 if cfg.fast_decode and cfg.img_scale <= 0.5 else cv2.IMREAD_COLOR
    bgr = cv2.imread(str(path), flag)
    if bgr is None:
        hint = "it is missing" if not path.is_file() else "it is not a readable image"
        raise UserError(
            f"image {path}: {hint}; re-extract the nuScenes samples archive or rebuild the dataset"
        )
    return bgr


def build_features(queue: list[dict], prev_valid: list[bool], dataroot: Path, cfg: DatasetConfig) -> dict:
    """Model inputs of one sample from its queue records (RECORD_KEYS only; last = current).

    img (Tq, Ncam, 3, H, W) float32; img_from_ego (Tq, Ncam, 4, 4); can_bus (Tq, 18) in BEVFormer's
    queue form ([0:3] and [17] relative to the previous queue frame, zero where prev_valid is False);
    cur_from_prev (Tq, 4, 4); prev_valid (Tq,) bool; command (); ego_his (2, 2); ego_his_mask (2,);
    ego_from_bev (4, 4): the current record's LIDAR_TOP calibration (the model's BEV frame), when known;
    goal_point (2,): the route's target point in the ego frame, when the record has one.
    """
    sizes = [
        image_sizes(r["cams"][c]["width"], r["cams"][c]["height"], cfg) for r in queue for c in cfg.cameras
    ]
    pad_w, pad_h = max(s[2] for s in sizes), max(s[3] for s in sizes)
    tq, nc = len(queue), len(cfg.cameras)
    img = np.zeros((tq, nc, 3, pad_h, pad_w), np.float32)
    img_from_ego = np.zeros((tq, nc, 4, 4))
    for t, rec in enumerate(queue):
        for c, name in enumerate(cfg.cameras):
            cam = rec["cams"].get(name)
            if cam is None:
                raise UserError(f"sample {rec['token']} has no camera {name}; cameras: {sorted(rec['cams'])}")
            w, h, _, _ = image_sizes(cam["width"], cam["height"], cfg)
            bgr = resize_image(load_image(dataroot / cam["path"], cfg), w, h)
            normalise_planes_into(bgr, img[t, c, :, :h, :w], cfg.normalisation)
            img_from_ego[t, c] = img_from_ego_calibrated(
                cam["intrinsics"], cam["ego_from_cam"], w / cam["width"], h / cam["height"]
            )
    raw_bus = [np.asarray(r["can_bus"], np.float64) for r in queue]
    has_prev = [t > 0 and prev_valid[t] for t in range(tq)]  # prev_valid[0] is always False (queue_indices)
    prev_bus = [raw_bus[t - 1] if has_prev[t] else None for t in range(tq)]
    can_bus = np.stack([can_bus_delta(cur, prev) for cur, prev in zip(raw_bus, prev_bus)])
    cur_from_prev = np.tile(np.eye(4), (tq, 1, 1))
    for t in range(1, tq):
        if has_prev[t]:
            cur_from_prev[t] = relative_motion(queue[t - 1]["world_from_ego"], queue[t]["world_from_ego"])
    cur = queue[-1]
    extra = {}
    if cur.get("ego_from_lidar") is not None:  # VAD's grid is centred on LIDAR_TOP (models/vad.py)
        extra["ego_from_bev"] = torch.as_tensor(np.asarray(cur["ego_from_lidar"]), dtype=torch.float32)
    if cur.get("goal_point") is not None:  # the CARLA variant's goal point (2,), ego frame
        extra["goal_point"] = torch.as_tensor(np.asarray(cur["goal_point"]), dtype=torch.float32)
    return {
        **extra,
        "img": torch.from_numpy(img),
        "img_from_ego": torch.from_numpy(img_from_ego).float(),
        "can_bus": torch.from_numpy(can_bus).float(),
        "cur_from_prev": torch.from_numpy(cur_from_prev).float(),
        "prev_valid": torch.tensor(prev_valid, dtype=torch.bool),
        "command": torch.tensor(int(cur["command"]), dtype=torch.long),
        "ego_his": torch.as_tensor(cur["ego_his"], dtype=torch.float32),
        "ego_his_mask": torch.as_tensor(cur["ego_his_mask"], dtype=torch.bool),
        "token": cur["token"],
    }


def build_targets(rec: dict, cfg: DatasetConfig) -> dict:
    """Training / evaluation targets of one record: ego future, agents in range, map vectors.

    ego_fut (6, 2), ego_fut_mask (6,), ego_fut_yaw (6,); agents: boxes (N, 7), labels (N,), velocity
    (N, 2), fut (N, 6, 2), fut_mask (N, 6), fut_yaw (N, 6); map: cls (M,), pts (M, 20, 2); tl_label ()
    for the CARLA variant's traffic-light branch (`traffic_light_label`).
    """
    ag = rec["agents"]
    boxes = np.asarray(ag["boxes"], np.float64).reshape(-1, 7)
    keep = (np.abs(boxes[:, 0]) <= cfg.agent_range[0]) & (np.abs(boxes[:, 1]) <= cfg.agent_range[1])
    agents = {k: torch.as_tensor(np.asarray(ag[k])[keep]) for k in ("boxes", "velocity", "fut", "fut_yaw")}
    agents = {k: v.float() for k, v in agents.items()}
    agents["labels"] = torch.as_tensor(np.asarray(ag["labels"], np.int64)[keep])
    agents["fut_mask"] = torch.as_tensor(np.asarray(ag["fut_mask"], bool)[keep])
    pts = np.stack([m["pts"] for m in rec["map"]]) if rec["map"] else np.zeros((0, 20, 2))
    cls = np.array([m["cls"] for m in rec["map"]], np.int64)
    return {
        "ego_fut": torch.as_tensor(rec["ego_fut"], dtype=torch.float32),
        "ego_fut_mask": torch.as_tensor(rec["ego_fut_mask"], dtype=torch.bool),
        "ego_fut_yaw": torch.as_tensor(rec["ego_fut_yaw"], dtype=torch.float32),
        "agents": agents,
        "map": {"cls": torch.from_numpy(cls), "pts": torch.as_tensor(pts, dtype=torch.float32)},
        "tl_label": torch.tensor(traffic_light_label(rec), dtype=torch.long),
    }


TL_CLASSES = ("red", "yellow", "green")  # then 3 = no light ahead; order of VADConfig.tl_num_classes


def traffic_light_label(rec: dict) -> int:
    """Traffic-light class of a record for the CARLA variant: 0 red, 1 yellow, 2 green, 3 no light ahead,
    -1 unknown (no privileged state: real nuScenes has none, so the loss ignores it)."""
    priv = rec.get("privileged")
    if not priv or "traffic_light" not in priv:
        return -1
    state = priv["traffic_light"]
    return TL_CLASSES.index(state) if state in TL_CLASSES else len(TL_CLASSES)


class NuScenesVADDataset(Dataset):
    """Items of docs/data_contract.md over a list of records (from nusc.infos.build_or_load_infos)."""

    def __init__(
        self,
        infos: list[dict],
        dataroot: str | Path,
        cfg: DatasetConfig | None = None,
        with_targets: bool = True,
    ):
        self.infos = infos
        self.dataroot = Path(dataroot)
        self.cfg = cfg or DatasetConfig()
        self.with_targets = with_targets
        check_norm(self.cfg.normalisation)
        if self.cfg.queue_length < 1:
            raise UserError(f"queue_length must be >= 1, got {self.cfg.queue_length}")
        self.by_token = {r["token"]: i for i, r in enumerate(infos)}
        # features see a ground-truth-free copy of each record
        self.feature_view = [{k: r[k] for k in RECORD_KEYS if k in r} for r in infos]

    def __len__(self) -> int:
        return len(self.infos)

    def queue_indices(self, index: int) -> tuple[list[int], list[bool]]:
        """Indices of the queue (oldest first, last = `index`) and whether each has its predecessor.

        At a scene start the oldest available frame is repeated; repeated frames have prev_valid False.
        """
        idx = [index]
        while len(idx) < self.cfg.queue_length:
            prev = self.infos[idx[0]]["prev"]
            if not prev or prev not in self.by_token:
                break
            idx.insert(0, self.by_token[prev])
        valid = [False] + [True] * (len(idx) - 1)
        pad = self.cfg.queue_length - len(idx)
        return [idx[0]] * pad + idx, [False] * pad + valid

    def __getitem__(self, index: int) -> dict:
        idx, prev_valid = self.queue_indices(index)
        item = build_features([self.feature_view[i] for i in idx], prev_valid, self.dataroot, self.cfg)
        if self.with_targets:
            item.update(build_targets(self.infos[index], self.cfg))
        return item


def collate(items: list[dict]) -> dict:
    """Stack tensors into a batch; `agents`, `map` (ragged) and `token` stay lists of length B."""
    out: dict = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out
