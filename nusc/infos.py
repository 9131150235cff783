"""Build (or reuse) the per-keyframe record index of a nuScenes-format dataset.

`build_or_load_infos(dataroot, version)` loads the dataset with the real devkit (`NuScenes`, and
`NuScenesCanBus` / `NuScenesMap` when the CAN bus / map expansions are present), builds the records of
`nusc.records`, and caches them as JSON keyed by a fingerprint of the inputs (table sizes and mtimes, CAN
bus and map files) and of this code. Bad input becomes one `UserError` line that names the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from nusc import classes, records
from nusc.classes import TABLES
from nusc.records import CanBusSource, MapIndex, build_records, record_from_json, record_to_json
from vlmad.errors import UserError
from vlmad.io import atomic_write_text

CACHE_FORMAT = 1  # bump when the cache file layout changes


def _versions_in(dataroot: Path) -> list[str]:
    return sorted(p.name for p in dataroot.iterdir() if p.is_dir() and (p / "sample.json").is_file())


def check_layout(dataroot: str | Path, version: str) -> Path:
    """Raise a one-line UserError unless `dataroot/version` holds the 13 nuScenes tables; returns it."""
    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise UserError(
            f"dataroot {dataroot} does not exist; pass --dataroot pointing at the folder that holds "
            "the nuScenes version folders (e.g. v1.0-mini/) and samples/"
        )
    table_dir = dataroot / version
    if not table_dir.is_dir():
        found = _versions_in(dataroot)
        hint = (
            f"found {', '.join(found)}; pass --version {found[0]}"
            if found
            else "no version folder found there"
        )
        raise UserError(f"version {version!r} not found in {dataroot} ({hint})")
    missing = [t for t in TABLES if not (table_dir / f"{t}.json").is_file()]
    if missing:
        raise UserError(
            f"{table_dir / (missing[0] + '.json')} is missing (all missing: {missing}); the devkit needs "
            "all 13 tables: re-extract the nuScenes metadata archive there"
        )
    return table_dir


def _load_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {what}") from None


def _code_hash() -> str:
    h = hashlib.sha256(str(CACHE_FORMAT).encode())
    for mod in (classes, records, sys.modules[__name__]):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def fingerprint(dataroot: str | Path, version: str) -> str:
    """Hash of the input files' names, sizes and mtimes (tables, privileged, CAN bus, maps) and this code."""
    dataroot = Path(dataroot)
    files = [dataroot / version / f"{t}.json" for t in TABLES] + [dataroot / version / "privileged.json"]
    for sub, pattern in (("can_bus", "*_pose.json"), ("maps/expansion", "*.json")):
        if (dataroot / sub).is_dir():
            files += sorted((dataroot / sub).glob(pattern))
    h = hashlib.sha256(_code_hash().encode())
    h.update(version.encode())
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(dataroot)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_nuscenes(dataroot: str | Path, version: str, verbose: bool = False):
    """`NuScenes(version, dataroot)` with layout checks first and corrupt tables reported by file name."""
    from nuscenes.nuscenes import NuScenes

    table_dir = check_layout(dataroot, version)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext():
            return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
    except json.JSONDecodeError:
        for t in TABLES:  # find which table is broken (only on the error path: parsing twice is slow)
            _load_json(table_dir / f"{t}.json", "re-extract the nuScenes metadata archive")
        raise
    except (KeyError, AssertionError, TypeError) as e:
        raise UserError(
            f"the nuScenes tables in {table_dir} are inconsistent ({type(e).__name__}: {e}); "
            "re-extract the nuScenes metadata archive"
        ) from None


def _can_bus_sources(dataroot: Path, scene_names: list[str]) -> dict[str, CanBusSource | None]:
    """Pose messages per scene from the CAN bus expansion via NuScenesCanBus (empty dict if absent)."""
    if not (dataroot / "can_bus").is_dir():
        return {}
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    api = NuScenesCanBus(dataroot=str(dataroot))
    out: dict[str, CanBusSource | None] = {}
    for name in scene_names:
        path = dataroot / "can_bus" / f"{name}_pose.json"
        if not path.is_file():
            out[name] = None
            continue
        try:
            msgs = api.get_messages(name, "pose", print_warnings=False)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} is not valid JSON ({e.msg}); re-extract the CAN bus expansion or delete "
                "the file (the CAN bus is then derived from ego poses)"
            ) from None
        except Exception:  # scenes the devkit blacklists as having no CAN bus data, bad names
            out[name] = None
            continue
        if not msgs:
            out[name] = None
            continue
        try:
            msgs = sorted(msgs, key=lambda m: m["utime"])
            out[name] = CanBusSource(
                utime=np.array([m["utime"] for m in msgs], dtype=np.int64),
                accel=np.array([m["accel"] for m in msgs], dtype=np.float64).reshape(-1, 3),
                rotation_rate=np.array([m["rotation_rate"] for m in msgs], dtype=np.float64).reshape(-1, 3),
                vel=np.array([m["vel"] for m in msgs], dtype=np.float64).reshape(-1, 3),
            )
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{path}: pose messages need utime, accel, rotation_rate and vel; re-extract the CAN "
                "bus expansion"
            ) from None
    return out


def _map_indices(dataroot: Path, locations: set[str]) -> dict[str, MapIndex]:
    """MapIndex per location whose map expansion json exists (via NuScenesMap)."""
    from nuscenes.map_expansion.map_api import NuScenesMap

    out = {}
    for loc in sorted(locations):
        path = dataroot / "maps" / "expansion" / f"{loc}.json"
        if not path.is_file():
            continue
        try:
            out[loc] = MapIndex(NuScenesMap(dataroot=str(dataroot), map_name=loc))
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} is not valid JSON ({e.msg}); re-extract the map expansion or delete the file "
                "(records then have no map vectors)"
            ) from None
        except (KeyError, AssertionError) as e:
            raise UserError(
                f"{path} is not a usable map expansion v1.3 ({type(e).__name__}: {e}); re-extract the "
                "map expansion (nuScenes-map-expansion-v1.3)"
            ) from None
    return out


def build_infos(dataroot: str | Path, version: str, progress: bool = True) -> list[dict]:
    """Build the records (no cache) through the devkit."""
    dataroot = Path(dataroot)
    nusc = load_nuscenes(dataroot, version)
    priv_path = dataroot / version / "privileged.json"
    privileged = (
        _load_json(priv_path, "rewrite the dataset or delete the file") if priv_path.is_file() else {}
    )
    can_bus = _can_bus_sources(dataroot, [s["name"] for s in nusc.scene])
    maps = _map_indices(dataroot, {log["location"] for log in nusc.log})
    return build_records(nusc, dataroot, can_bus=can_bus, maps=maps, privileged=privileged, progress=progress)


def default_cache_path(dataroot: str | Path, version: str) -> Path:
    return Path(dataroot) / f"vlmad_infos_{version}.json"


def build_or_load_infos(
    dataroot: str | Path, version: str, cache: str | Path | None = None, progress: bool = True
) -> list[dict]:
    """The record list of `dataroot/version` (array fields as numpy arrays), cached in JSON.

    The cache (default `<dataroot>/vlmad_infos_<version>.json`) is reused when its fingerprint matches the
    current inputs and code; otherwise the records are rebuilt and the cache rewritten atomically.
    """
    dataroot = Path(dataroot)
    check_layout(dataroot, version)
    cache = Path(cache) if cache is not None else default_cache_path(dataroot, version)
    fp = fingerprint(dataroot, version)
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if data.get("fingerprint") == fp and data.get("format") == CACHE_FORMAT:
                return [record_from_json(r) for r in data["records"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            pass  # a corrupt or foreign cache is simply rebuilt (it is only a cache)
    as_json = [record_to_json(r) for r in build_infos(dataroot, version, progress=progress)]
    payload = {
        "format": CACHE_FORMAT,
        "fingerprint": fp,
        "version": version,
        "dataroot": str(dataroot.resolve()),
        "num_records": len(as_json),
        "records": as_json,
    }
    try:
        atomic_write_text(cache, json.dumps(payload, separators=(",", ":")))
    except OSError as e:
        raise UserError(
            f"cannot write the infos cache {cache} ({e.strerror}); pass another path (--out)"
        ) from None
    # returned through the JSON form so that a fresh build and a cache hit give identical records
    return [record_from_json(r) for r in as_json]


def is_cached(dataroot: str | Path, version: str, cache: str | Path | None = None) -> bool:
    """True when the cache exists and matches the current inputs (no rebuild would happen)."""
    cache = Path(cache) if cache is not None else default_cache_path(dataroot, version)
    if not cache.is_file():
        return False
    try:
        with open(cache) as f:
            head = f.read(4096)
        return f'"fingerprint":"{fingerprint(dataroot, version)}"' in head
    except OSError:
        return False


__all__ = [
    "build_or_load_infos",
    "build_infos",
    "load_nuscenes",
    "check_layout",
    "fingerprint",
    "is_cached",
    "default_cache_path",
]
