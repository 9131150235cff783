"""Training data: scene split, dataset config for a model, deterministic sharding, VLM-AD targets.

Sharding replaces DistributedSampler with something resumable to the sample: epoch e visits the training
samples in the order `randperm(N, seed + e)`; optimiser step s of the epoch consumes the global batch
order[s * G : (s + 1) * G] with G = batch_size x world_size x grad_accum (an incomplete last batch is
dropped); that global batch is cut into world_size x grad_accum chunks of batch_size, and rank r takes
chunk a * world_size + r at micro-step a. The samples a step sees depend only on (seed, epoch, step in the
epoch, G), never on how many processes there are, so one process with grad_accum 2 and two processes with
grad_accum 1 train on the same batches, and a resumed run continues with the exact next samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from models.vad import VADConfig
from nusc.dataset import DatasetConfig
from teacher.feature_store import FeatureStore
from vlmad.errors import UserError

OFFICIAL_SPLITS = {"v1.0-trainval": ("train", "val"), "v1.0-mini": ("mini_train", "mini_val")}


# ----------------------------------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------------------------------
def split_scenes(scene_names: list[str], version: str, split: str = "auto", val_fraction: float = 0.2
                 ) -> tuple[list[str], list[str], str]:
    """(train scenes, val scenes, how) for the dataset's scene names; `how` says which rule was used."""
    names = sorted(set(scene_names))
    if not names:
        raise UserError("the dataset has no scenes")
    if split == "all":
        return names, [], "all scenes (no held-out scenes)"
    official = None
    if version in OFFICIAL_SPLITS:
        from nuscenes.utils.splits import create_splits_scenes

        table = create_splits_scenes()
        tr, va = (set(table[k]) for k in OFFICIAL_SPLITS[version])
        if set(names) <= tr | va:
            official = ([n for n in names if n in tr], [n for n in names if n in va])
    if split == "official" and official is None:
        known = f"its official splits {OFFICIAL_SPLITS[version]}" if version in OFFICIAL_SPLITS else \
            f"an official split (only {sorted(OFFICIAL_SPLITS)} have one)"
        raise UserError(f"split 'official': the scenes of {version} are not all in {known}; use split "
                        "'scenes' (deterministic by scene name) or 'auto'")
    if split in ("official", "auto") and official is not None and official[0]:
        return official[0], official[1], f"official nuScenes {'/'.join(OFFICIAL_SPLITS[version])}"
    # deterministic by name: every k-th scene (sorted) is held out, the last one if that picks none
    k = max(2, round(1.0 / val_fraction))
    val = [n for i, n in enumerate(names) if i % k == k - 1]
    if not val and len(names) >= 2:
        val = [names[-1]]
    train = [n for n in names if n not in set(val)]
    return train, val, f"deterministic scene split (every {k}th scene by name held out)"


STANDING_SPEED_MPS = 0.5  # below this the ego counts as standing
STANDING_TRAVEL_M = 1.0  # ... when its whole future also stays within this distance


def _slow_and_travel(r: dict) -> tuple[bool, float | None]:
    """(ego below STANDING_SPEED_MPS, farthest valid future point in m or None when none is valid)."""
    fut, mask = np.asarray(r["ego_fut"], float), np.asarray(r["ego_fut_mask"], bool)
    travel = float(np.linalg.norm(fut[mask], axis=-1).max()) if mask.any() else None
    return float(r.get("ego_speed", 0.0)) < STANDING_SPEED_MPS, travel


def standing_samples(infos: list[dict]) -> np.ndarray:
    """(N,) bool: records whose ego stands (speed < 0.5 m/s) and stays (every valid future point < 1 m)."""
    flags = [_slow_and_travel(r) for r in infos]
    return np.array([slow and t is not None and t < STANDING_TRAVEL_M for slow, t in flags], bool)


def restart_samples(infos: list[dict]) -> np.ndarray:
    """(N,) bool: records whose ego stands (speed < 0.5 m/s) and pulls away (a valid future point >= 1 m)."""
    flags = [_slow_and_travel(r) for r in infos]
    return np.array([slow and t is not None and t >= STANDING_TRAVEL_M for slow, t in flags], bool)


def kept_samples(infos: list[dict], standing_keep: float, seed: int, restart_repeat: int = 1) -> list[int]:
    """Indices of the training samples a run visits in one pass: all moving ones, a seeded `standing_keep`
    share of the standing ones (the dataset keeps every record, so queues still see their predecessors),
    and each restart sample `restart_repeat` times (repeats follow their original, the order is shuffled
    by the sampler)."""
    standing = standing_samples(infos)
    restart = restart_samples(infos) if restart_repeat > 1 else np.zeros(len(infos), bool)
    idx = np.nonzero(standing)[0]
    n_keep = int(round(standing_keep * len(idx)))
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(idx, size=n_keep, replace=False).tolist()) if n_keep else set()
    out = []
    for i in range(len(infos)):
        if not standing[i] or i in keep:
            out += [i] * (restart_repeat if restart[i] else 1)
    return out


# ----------------------------------------------------------------------------------------------------
# Dataset config for a model
# ----------------------------------------------------------------------------------------------------
def dataset_config(model_cfg: VADConfig, infos: list[dict], queue_length: int | None = None
                   ) -> DatasetConfig:
    """The DatasetConfig that feeds `model_cfg` its configured input size from this dataset's images.

    VAD's img_scale is relative to nuScenes' 1600 x 900 cameras (`img_size_raw`); a dataset rendered at
    another resolution (the project's own small datasets) is rescaled so the model still sees
    `models.features.resized_size(img_size_raw, img_scale)` pixels (same aspect ratio), with the
    intrinsics scaled to match.
    """
    if not infos:
        raise UserError("no samples to build a dataset from")
    front = next(iter(infos[0]["cams"].values()))
    scale = model_cfg.img_size_raw[0] * model_cfg.img_scale / float(front["width"])
    return DatasetConfig(queue_length=queue_length or model_cfg.queue_length, img_scale=scale,
                         pad_divisor=model_cfg.pad_divisor, normalisation=model_cfg.img_norm)


# ----------------------------------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------------------------------
def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch `epoch` (independent of the global RNG)."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(num_samples, generator=g)


def rank_batches(num_samples: int, seed: int, epoch: int, first_step: int, steps: int, batch_size: int,
                 world_size: int, rank: int, grad_accum: int) -> Iterator[list[int]]:
    """Dataset indices of this rank's micro-batches for optimiser steps first_step .. first_step+steps-1 of
    `epoch`, in order (grad_accum micro-batches per step; see the module docstring)."""
    order = epoch_order(num_samples, seed, epoch).tolist()
    g = batch_size * world_size * grad_accum
    for s in range(first_step, first_step + steps):
        chunk = order[s * g:(s + 1) * g]
        for a in range(grad_accum):
            j = a * world_size + rank
            yield chunk[j * batch_size:(j + 1) * batch_size]


# ----------------------------------------------------------------------------------------------------
# VLM-AD targets
# ----------------------------------------------------------------------------------------------------
def load_feature_store(path: str | None, train_tokens: list[str], min_coverage: float = 0.0
                       ) -> tuple[FeatureStore, float]:
    """Load the store for VLM-AD training and check it covers the training set; returns (store, coverage).

    Samples without features are masked by the heads' losses, so partial coverage trains; a store that
    covers none of the training samples (wrong split, other dataset) is an error, and so is coverage
    below `min_coverage`.
    """
    if not path:
        raise UserError("VLM-AD is on (vlm_ad.enabled) but no feature store is given; pass --features "
                        "FEATURES.safetensors (made by `python -m scripts.encode_text`) or train without "
                        "--vlm-ad")
    if not Path(path).is_file():
        raise UserError(f"VLM-AD feature store {path} does not exist; create it with `python -m "
                        "scripts.annotate` then `python -m scripts.encode_text`, or train without --vlm-ad")
    store = FeatureStore.load(path)
    covered = sum(t in store for t in train_tokens)
    coverage = covered / max(len(train_tokens), 1)
    if covered == 0:
        raise UserError(f"feature store {path} ({len(store)} tokens) covers 0 of the {len(train_tokens)} "
                        "training samples: it was made for another dataset or split; annotate and encode "
                        "this dataset's training split")
    if coverage < min_coverage:
        raise UserError(f"feature store {path} covers {covered}/{len(train_tokens)} training samples "
                        f"({100 * coverage:.1f}%), below min_feature_coverage {100 * min_coverage:.1f}%")
    return store, coverage


def add_vlm_targets(batch: dict, store: FeatureStore) -> dict:
    """Add "vlm_text" (B, 3, C), "vlm_text_mask" (B, 3), "vlm_actions" (B, 3) for batch["token"]."""
    text, mask, actions = store.lookup(batch["token"])
    batch["vlm_text"], batch["vlm_text_mask"], batch["vlm_actions"] = text, mask, actions
    return batch


def to_device(obj, device: torch.device, non_blocking: bool = True):
    """Tensors (also inside lists / dicts) moved to `device`; everything else unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device, non_blocking) for v in obj]
    return obj


def unwrap_worker_errors(loader: Iterable) -> Iterator:
    """Iterate a DataLoader; a UserError raised in a worker process (which DataLoader re-raises with the
    worker's traceback in the message) comes out as the worker's own one-line message."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UserError as e:
            last = str(e).strip().splitlines()[-1]
            raise UserError(last.split("UserError: ", 1)[-1]) from None
        yield batch
