"""training.data standing / restart samples: the `standing_keep` and `restart_repeat` rebalancing switches
(defaults: every sample once, as VAD)."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import kept_samples, restart_samples, standing_samples
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


def test_restart_samples_are_repeated_and_nothing_else_changes():
    # moving, standing, restart (slow now, leaves the 1 m disc), slow but no valid future, restart
    recs = [_rec(5.0, 12.0), _rec(0.0, 0.2), _rec(0.1, 4.0), _rec(0.0, 3.0, (False,) * 6), _rec(0.4, 1.5)]
    assert restart_samples(recs).tolist() == [False, False, True, False, True]
    assert kept_samples(recs, 1.0, 0, restart_repeat=1) == [0, 1, 2, 3, 4]  # the default: once each
    assert kept_samples(recs, 1.0, 0, restart_repeat=3) == [0, 1, 2, 2, 2, 3, 4, 4, 4]
    assert kept_samples(recs, 0.0, 0, restart_repeat=2) == [0, 2, 2, 3, 4, 4]  # with standing_keep


def test_restart_repeat_must_be_at_least_one():
    with pytest.raises(UserError, match="restart_repeat"):
        TrainConfig(restart_repeat=0)
