"""Shared fixtures. Tests may use ../shared/data (CI always has it); the product never does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real MNIST test set and full Fashion-MNIST (always present in CI)."""
    assert SHARED_DATA.is_dir(), f"tests need {SHARED_DATA} (see DEVELOPERS.md)"
    return SHARED_DATA
