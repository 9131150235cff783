"""Config loading, overrides and the resolved-config file."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from vlmad.config import from_dict, load_config, save_resolved, to_dict
from vlmad.errors import UserError


@dataclass
class Inner:
    lr: float = 1e-3  # learning rate
    dims: tuple[int, ...] = (1, 2)  # sizes


@dataclass
class Outer:
    name: str = "x"  # run name
    inner: Inner = field(default_factory=Inner)  # nested section


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run1\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, yaml_path=p, overrides=["inner.dims=[3, 4]"])
    assert cfg.name == "run1" and cfg.inner.lr == 0.5 and cfg.inner.dims == (3, 4)
    out = save_resolved(cfg, tmp_path / "run")
    assert yaml.safe_load(out.read_text()) == {"name": "run1", "inner": {"lr": 0.5, "dims": [3, 4]}}
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("overrides", [["inner.nope=1"], ["nope=1"], ["name"], ["name.x=1"]])
def test_bad_overrides_are_user_errors(overrides):
    with pytest.raises(UserError):
        load_config(Outer, overrides=overrides)


def test_bad_yaml_is_user_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner: {lr: 1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Outer, yaml_path=p)
    with pytest.raises(UserError, match="does not exist"):
        load_config(Outer, yaml_path=tmp_path / "missing.yaml")
    p.write_text("extra: 1\n")
    with pytest.raises(UserError, match="unknown field"):
        load_config(Outer, yaml_path=p)
