"""Dataclass configs with YAML overrides.

Each concern (model, training, teacher, world, agent) has one dataclass with a comment on every field.
This module only knows how to turn YAML / `key.sub=value` overrides into those dataclasses and back, and
how to write the resolved config beside every output. There is no registry and no environment switch:
what a run used is exactly what its `config.yaml` says.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlmad.errors import UserError
from vlmad.io import atomic_write_text

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (YAML/JSON-serialisable) of a dataclass config, tuples turned into lists."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def _resolve_type(tp: Any) -> Any:
    """Strip Optional/Union-with-None so nested dataclasses can be detected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`; unknown keys are a `UserError` that names them."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        tp = _resolve_type(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, where=f"{where}.{f.name}")
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise UserError(f"override {item!r}: {p!r} is not a section of the config")
            node = node[p]
        if parts[-1] not in node:
            raise UserError(f"override {item!r}: unknown field {parts[-1]!r}; valid: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(cls: type[T], base: T | None = None, yaml_path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = (), replace: tuple[str, ...] = ()) -> T:
    """Start from `base` (or `cls()`), merge a YAML file, then `key=value` overrides.

    replace: top-level fields that are free-form mappings (not sections): a YAML value replaces them
    whole instead of being merged key by key."""
    data = to_dict(base if base is not None else cls())
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {e}") from None
        if isinstance(loaded, dict):
            for key in replace:
                if key in loaded:
                    data[key] = loaded.pop(key)
        _deep_merge(data, loaded, str(path))
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def _deep_merge(dst: dict[str, Any], src: dict[str, Any], where: str) -> None:
    if not isinstance(src, dict):
        raise UserError(f"{where}: expected a mapping at the top level")
    for k, v in src.items():
        if k not in dst:
            raise UserError(f"{where}: unknown field {k!r}; valid fields are {sorted(dst)}")
        if isinstance(dst[k], dict) and isinstance(v, dict):
            _deep_merge(dst[k], v, f"{where}.{k}")
        else:
            dst[k] = v


def save_resolved(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML beside an output (atomic)."""
    path = Path(out_dir) / name
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
