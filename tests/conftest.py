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


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """Two pytest workers share two cores: torch's thread pool fighting the other worker makes
    tiny ops 100x slower. Benchmarks set their own thread count."""
    import torch

    torch.set_num_threads(1)
    yield
