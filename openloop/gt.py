"""Ground truth for open-loop planning metrics, read through nuscenes-devkit from the 13 core tables only.

For every keyframe: the ego positions of its next 6 keyframes (same scene) in its ego frame, and the boxes
of the annotated agents of the 10 detection classes (`nusc.classes`) with their future positions and yaws,
followed through the `sample_annotation.next` pointers. No CAN bus, no map expansion, no images.

Ego poses are those of the keyframe's LIDAR_TOP sample_data (the nuScenes / VAD convention); when a
dataset has no LIDAR_TOP the first keyframe channel's pose is used and `ego_from_lidar` is unknown.
Results are memoised per (dataroot, version) in the process and, when asked, cached on disk (npz, no
pickle) with a fingerprint of the table files so that a changed dataset is rebuilt.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nusc.classes import TABLES as CORE_TABLES
from nusc.classes import detection_label
from nusc.infos import check_layout
from vlmad.errors import UserError
from vlmad.frames import invert_transform, pose_to_matrix, quat_to_rotmat, world_to_ego, yaw_of
from vlmad.horizon import FUT_STEPS
from vlmad.io import atomic_write_bytes, sha256_bytes

CACHE_FORMAT = 2  # bump when the cached arrays change meaning


@dataclass
class SampleGT:
    """Ground truth of one keyframe, in its ego frame (x forward, y left, metres, yaw CCW radians)."""

    token: str  # sample token
    scene_name: str  # scene name, e.g. scene-0103
    frame_idx: int  # index of the keyframe in its scene
    world_from_ego: np.ndarray  # (4, 4) ego pose
    ego_from_lidar: np.ndarray | None  # (4, 4) LIDAR_TOP calibration; None when the dataset has no lidar
    ego_fut: np.ndarray  # (6, 2) future ego positions at +0.5 s .. +3 s (zeros where missing)
    ego_fut_mask: np.ndarray  # (6,) bool, which future keyframes exist
    ego_fut_yaw: np.ndarray  # (6,) future ego yaw relative to now
    lidar_fut: np.ndarray  # (6, 2) future LIDAR_TOP positions minus the current one, ego axes (VAD target)
    agent_box: np.ndarray  # (A, 7) current boxes [x, y, z, length, width, height, yaw]
    agent_label: np.ndarray  # (A,) int, index into nusc.classes.DETECTION_CLASSES
    agent_fut_xy: np.ndarray  # (A, 6, 2) box centres at the future keyframes
    agent_fut_yaw: np.ndarray  # (A, 6) box yaws at the future keyframes
    agent_fut_mask: np.ndarray  # (A, 6) bool, whether the agent is annotated at that future keyframe

    @property
    def valid(self) -> bool:
        """True when all 6 future keyframes exist (only such samples are evaluated)."""
        return bool(self.ego_fut_mask.all())

    @property
    def agent_size(self) -> np.ndarray:
        """(A, 2) [length, width]."""
        return self.agent_box[:, 3:5]


@dataclass
class GroundTruth:
    """All keyframes of a dataset version, in scene order."""

    dataroot: str  # resolved dataroot
    version: str  # e.g. v1.0-trainval
    samples: dict[str, SampleGT] = field(default_factory=dict)  # token -> ground truth, scene order

    def __len__(self) -> int:
        return len(self.samples)

    def scene_names(self) -> list[str]:
        return list(dict.fromkeys(s.scene_name for s in self.samples.values()))


# ----------------------------------------------------------------------------------------------------
# Building from nuscenes-devkit
# ----------------------------------------------------------------------------------------------------
def _open_nuscenes(dataroot: Path, version: str):
    check_layout(dataroot, version)
    from nuscenes.nuscenes import NuScenes  # imported here: slow import, only needed to build

    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, KeyError, ValueError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"nuscenes-devkit could not load {version} from {dataroot}: {e!r}") from e


def _keyframe_pose(nusc, sample: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(world_from_ego, ego_from_lidar or None) of a keyframe."""
    data = sample["data"]
    channel = "LIDAR_TOP" if "LIDAR_TOP" in data else sorted(data)[0]
    sd = nusc.get("sample_data", data[channel])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    world_from_ego = pose_to_matrix(pose["translation"], pose["rotation"])
    ego_from_lidar = None
    if channel == "LIDAR_TOP":
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ego_from_lidar = pose_to_matrix(cs["translation"], cs["rotation"])
    return world_from_ego, ego_from_lidar


def _sample_gt(nusc, sample: dict, scene_name: str, frame_idx: int, poses: dict) -> SampleGT:
    world_from_ego, ego_from_lidar = poses[sample["token"]]
    ego_from_world = invert_transform(world_from_ego)

    # the next 6 keyframes of the same scene
    future: list[str] = []
    nxt = sample["next"]
    while nxt and len(future) < FUT_STEPS:
        future.append(nxt)
        nxt = nusc.get("sample", nxt)["next"]
    ego_fut = np.zeros((FUT_STEPS, 2))
    ego_fut_yaw = np.zeros(FUT_STEPS)
    ego_fut_mask = np.zeros(FUT_STEPS, dtype=bool)
    lidar_fut = np.zeros((FUT_STEPS, 2))
    for i, tok in enumerate(future):
        rel = ego_from_world @ poses[tok][0]
        ego_fut[i] = rel[:2, 3]
        ego_fut_yaw[i] = yaw_of(rel)
        ego_fut_mask[i] = True
        fut_lidar = poses[tok][1]
        if ego_from_lidar is not None and fut_lidar is not None:  # full 3-D, as VAD's converter does
            lidar_fut[i] = ((rel @ fut_lidar)[:3, 3] - ego_from_lidar[:3, 3])[:2]

    # agents of the detection classes, followed along their next pointers (step 0 = now)
    step_of = {tok: i + 1 for i, tok in enumerate(future)}
    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    anns = [a for a in anns if detection_label(a["category_name"]) >= 0]
    n = len(anns)
    xyz = np.zeros((n, FUT_STEPS + 1, 3))
    yaw = np.zeros((n, FUT_STEPS + 1))
    mask = np.zeros((n, FUT_STEPS + 1), dtype=bool)
    for a, ann in enumerate(anns):
        rec, step = ann, 0
        while True:
            xyz[a, step] = rec["translation"]
            yaw[a, step] = yaw_of(ego_from_world[:3, :3] @ quat_to_rotmat(rec["rotation"]))
            mask[a, step] = True
            if not rec["next"]:
                break
            rec = nusc.get("sample_annotation", rec["next"])
            step = step_of.get(rec["sample_token"], -1)
            if step < 0:  # beyond the horizon
                break
    xyz = world_to_ego(world_from_ego, xyz) if n else xyz
    xyz[~mask] = 0.0  # steps without an annotation carry no position
    size = np.array([a["size"] for a in anns], dtype=np.float64).reshape(n, 3)  # nuScenes: w, l, h
    box = np.concatenate([xyz[:, 0], size[:, [1, 0, 2]], yaw[:, :1]], axis=1) if n else np.zeros((0, 7))
    return SampleGT(
        token=sample["token"], scene_name=scene_name, frame_idx=frame_idx, world_from_ego=world_from_ego,
        ego_from_lidar=ego_from_lidar, ego_fut=ego_fut, ego_fut_mask=ego_fut_mask, ego_fut_yaw=ego_fut_yaw,
        lidar_fut=lidar_fut,
        agent_box=box, agent_label=np.array([detection_label(a["category_name"]) for a in anns], np.int64),
        agent_fut_xy=xyz[:, 1:, :2].copy(), agent_fut_yaw=yaw[:, 1:].copy(),
        agent_fut_mask=mask[:, 1:].copy(),
    )


def build_ground_truth(dataroot: str | Path, version: str, progress: bool = True) -> GroundTruth:
    """Read every keyframe's ground truth through nuscenes-devkit (no cache)."""
    root = Path(dataroot).expanduser().resolve()
    nusc = _open_nuscenes(root, version)
    gt = GroundTruth(dataroot=str(root), version=version)
    poses = {s["token"]: _keyframe_pose(nusc, s) for s in nusc.sample}
    bar = tqdm(total=len(nusc.sample), desc="ground truth", unit="sample", disable=not progress)
    for scene in nusc.scene:
        tok, idx = scene["first_sample_token"], 0
        while tok:
            sample = nusc.get("sample", tok)
            gt.samples[tok] = _sample_gt(nusc, sample, scene["name"], idx, poses)
            tok, idx = sample["next"], idx + 1
            bar.update(1)
    bar.close()
    return gt


# ----------------------------------------------------------------------------------------------------
# Caching
# ----------------------------------------------------------------------------------------------------
_MEMO: dict[tuple[str, str], GroundTruth] = {}


def _fingerprint(root: Path, version: str) -> dict:
    """Sizes and modification times of the table files: a changed dataset invalidates the cache."""
    out = {"format": CACHE_FORMAT, "version": version}
    for t in CORE_TABLES:
        st = os.stat(root / version / f"{t}.json")
        out[t] = [st.st_size, st.st_mtime_ns]
    return out


def cache_file(cache_dir: str | Path, dataroot: str | Path, version: str) -> Path:
    """Where the on-disk cache of (dataroot, version) lives inside `cache_dir`."""
    root = str(Path(dataroot).expanduser().resolve())
    return Path(cache_dir) / f"openloop_gt_{version}_{sha256_bytes(root.encode())[:12]}.npz"


def save_cache(gt: GroundTruth, path: str | Path, fingerprint: dict) -> None:
    """Write `gt` as one npz of flat arrays (agents concatenated, with per-sample offsets); atomic."""
    s = list(gt.samples.values())
    counts = [len(x.agent_box) for x in s]
    eye_nan = np.full((4, 4), np.nan)
    meta = {"dataroot": gt.dataroot, "version": gt.version, "fingerprint": fingerprint,
            "tokens": [x.token for x in s], "scenes": [x.scene_name for x in s],
            "frame_idx": [x.frame_idx for x in s]}

    def cat(name: str, shape: tuple) -> np.ndarray:
        parts = [getattr(x, name) for x in s]
        return np.concatenate(parts) if parts else np.zeros((0, *shape))

    arrays = {
        "meta": np.array(json.dumps(meta)),
        "world_from_ego": np.stack([x.world_from_ego for x in s]) if s else np.zeros((0, 4, 4)),
        "ego_from_lidar": np.stack([eye_nan if x.ego_from_lidar is None else x.ego_from_lidar for x in s])
        if s else np.zeros((0, 4, 4)),
        "ego_fut": np.stack([x.ego_fut for x in s]) if s else np.zeros((0, FUT_STEPS, 2)),
        "ego_fut_mask": np.stack([x.ego_fut_mask for x in s]) if s else np.zeros((0, FUT_STEPS), bool),
        "ego_fut_yaw": np.stack([x.ego_fut_yaw for x in s]) if s else np.zeros((0, FUT_STEPS)),
        "lidar_fut": np.stack([x.lidar_fut for x in s]) if s else np.zeros((0, FUT_STEPS, 2)),
        "agent_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "agent_box": cat("agent_box", (7,)),
        "agent_label": cat("agent_label", ()).astype(np.int64),
        "agent_fut_xy": cat("agent_fut_xy", (FUT_STEPS, 2)),
        "agent_fut_yaw": cat("agent_fut_yaw", (FUT_STEPS,)),
        "agent_fut_mask": cat("agent_fut_mask", (FUT_STEPS,)).astype(bool),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_cache(path: str | Path, fingerprint: dict | None = None) -> GroundTruth | None:
    """Read a cache written by `save_cache`; None when absent, unreadable or stale."""
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        meta = json.loads(str(a["meta"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return None
    gt = GroundTruth(dataroot=meta["dataroot"], version=meta["version"])
    off = a["agent_offsets"]
    for i, tok in enumerate(meta["tokens"]):
        sl = slice(off[i], off[i + 1])
        lid = a["ego_from_lidar"][i]
        gt.samples[tok] = SampleGT(
            token=tok, scene_name=meta["scenes"][i], frame_idx=int(meta["frame_idx"][i]),
            world_from_ego=a["world_from_ego"][i], ego_from_lidar=None if np.isnan(lid).any() else lid,
            ego_fut=a["ego_fut"][i], ego_fut_mask=a["ego_fut_mask"][i].astype(bool),
            ego_fut_yaw=a["ego_fut_yaw"][i], lidar_fut=a["lidar_fut"][i], agent_box=a["agent_box"][sl],
            agent_label=a["agent_label"][sl],
            agent_fut_xy=a["agent_fut_xy"][sl],
            agent_fut_yaw=a["agent_fut_yaw"][sl], agent_fut_mask=a["agent_fut_mask"][sl].astype(bool))
    return gt


def load_ground_truth(dataroot: str | Path, version: str, cache_dir: str | Path | None = None,
                      progress: bool = True) -> GroundTruth:
    """Ground truth of (dataroot, version): memoised in the process, cached in `cache_dir` when given."""
    root = Path(dataroot).expanduser().resolve()
    key = (str(root), version)
    if key in _MEMO:
        return _MEMO[key]
    if cache_dir is None:
        gt = build_ground_truth(root, version, progress)
    else:
        check_layout(root, version)
        fp = _fingerprint(root, version)
        path = cache_file(cache_dir, root, version)
        gt = load_cache(path, fp)
        if gt is None:
            gt = build_ground_truth(root, version, progress)
            save_cache(gt, path, fp)
    _MEMO[key] = gt
    return gt
