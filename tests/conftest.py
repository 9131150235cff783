"""Shared test set-up: single-threaded torch (CI has 2 cores), paths to the read-only shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_maps() -> Path:
    """`../shared/maps` (real CARLA OpenDRIVE towns); tests that need it skip when it is absent."""
    path = SHARED / "maps"
    if not path.is_dir():
        pytest.skip("../shared/maps is not present beside the checkout")
    return path


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """`../shared/reference` (Town05 route files as published); skip when absent."""
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.skip("../shared/reference is not present beside the checkout")
    return path
