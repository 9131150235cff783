"""FeatureStore: round trip, lookup of known/unknown tokens, validation and corrupt files."""

from __future__ import annotations

import pytest
import torch

from teacher.feature_store import FeatureStore
from vlmad.errors import UserError


def _store(tmp_path, n=4, c=8):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(n, 3, c, generator=g)
    mask = torch.ones(n, 3, dtype=torch.bool)
    mask[1, 2] = False
    actions = torch.tensor([[0, 3, 4], [1, 0, -1], [2, 1, 0], [3, 2, 3]])[:n]
    tokens = [f"tok{i}" for i in range(n)]
    path = FeatureStore.save(tmp_path / "train.safetensors", tokens, text, mask, actions,
                             {"encoder": "minilm", "teacher": "rule", "prompt_version": "v"})
    return path, tokens, text, mask, actions


def test_round_trip_and_lookup(tmp_path):
    path, tokens, text, mask, actions = _store(tmp_path)
    fs = FeatureStore.load(path)
    assert fs.dim == 8 and fs.encoder == "minilm" and fs.teacher == "rule" and len(fs) == 4
    t, m, a = fs.lookup(["tok2", "nope", "tok1"])
    assert t.shape == (3, 3, 8) and t.dtype == torch.float32
    assert m.dtype == torch.bool and a.dtype == torch.int64
    torch.testing.assert_close(t[0], text[2])
    assert torch.equal(a[0], actions[2]) and torch.equal(a[2], actions[1])
    # unknown token: fully masked
    assert not m[1].any() and (a[1] == -1).all() and (t[1] == 0).all()
    # masked entry zeroed on save
    assert not m[2, 2] and (t[2, 2] == 0).all()
    assert m[2, :2].all()


def test_save_validates(tmp_path):
    text = torch.zeros(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="outside"):
        FeatureStore.save(tmp_path / "a", ["a", "b"], text, mask, torch.tensor([[0, 0, 5], [0, 0, 0]]),
                          {"encoder": "x"})
    with pytest.raises(ValueError, match="duplicate"):
        FeatureStore.save(tmp_path / "a", ["a", "a"], text, mask, torch.zeros(2, 3), {"encoder": "x"})
    bad = text.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        FeatureStore.save(tmp_path / "a", ["a", "b"], bad, mask, torch.zeros(2, 3), {"encoder": "x"})
    # NaN where masked is fine (zeroed)
    mask[0, 0] = False
    FeatureStore.save(tmp_path / "a", ["a", "b"], bad, mask, torch.zeros(2, 3), {"encoder": "x"})
    assert (FeatureStore.load(tmp_path / "a").text[0, 0] == 0).all()


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        FeatureStore.load(tmp_path / "missing.safetensors")
    path, *_ = _store(tmp_path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt"):
        FeatureStore.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(UserError, match="corrupt"):
        FeatureStore.load(tmp_path / "junk.safetensors")
