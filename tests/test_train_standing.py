"""training.data.standing_samples / kept_samples: the `standing_keep` rebalancing switch (default: all)."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import kept_samples, standing_samples
from vlmad.errors import UserError


def _rec(speed: float, travel: float, mask=(True,) * 6) -> dict:
    fut = np.stack([np.linspace(travel / 6, travel, 6), np.zeros(6)], -1)
    return {"ego_speed": speed, "ego_fut": fut, "ego_fut_mask": np.array(mask)}


def test_standing_means_slow_and_staying():
    recs = [_rec(0.0, 0.2), _rec(0.0, 5.0), _rec(3.0, 0.5), _rec(0.4, 0.9), _rec(0.0, 0.0, (False,) * 6)]
    # pulling away from a stop (future leaves the 1 m disc) is not standing; no valid future is not either
    assert standing_samples(recs).tolist() == [True, False, False, True, False]


def test_kept_samples_keep_every_moving_one_and_a_seeded_share_of_the_standing():
    recs = [_rec(0.0, 0.1) if i % 2 else _rec(5.0, 12.0) for i in range(200)]
    assert kept_samples(recs, 1.0, 0) == list(range(200))  # the default visits everything, in order
    kept = kept_samples(recs, 0.1, 0)
    assert all(i in kept for i in range(0, 200, 2))
    assert sum(i % 2 for i in kept) == 10  # 10 % of the 100 standing ones
    assert kept == kept_samples(recs, 0.1, 0) and kept != kept_samples(recs, 0.1, 1)  # seeded
    assert kept_samples(recs, 0.0, 0) == list(range(0, 200, 2))


def test_standing_keep_must_be_a_share():
    with pytest.raises(UserError, match="standing_keep"):
        TrainConfig(standing_keep=1.5)
