"""Inverted dropout (lecture 003: a regulariser against overfitting), as ``F.dropout``."""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.utils.validation import check_input


def dropout_forward(x: np.ndarray, p: float, training: bool, rng: np.random.Generator):
    """Zero each element with probability ``p`` and scale the kept ones by 1 / (1 - p).

    Scaling at training time ("inverted" dropout, as PyTorch) keeps the expected
    activation unchanged, so evaluation is the identity. ``p = 1`` drops everything
    and returns zeros, as PyTorch does.

    Args:
        x: input activations.
        p: probability of zeroing an element, in [0, 1].
        training: False makes this the identity (evaluation mode).
        rng: generator drawing the mask; the same seed gives the same mask.

    Shape:
        - x: any shape; y: same shape as x

    Returns:
        ``(y, cache)``; the cache holds the scaled mask (None when nothing was dropped).
    """
    check_input(x, "dropout")
    if not 0 <= p <= 1:
        raise ConfigError(f"dropout probability must be in [0, 1], got p={p}")
    if not training or p == 0:
        return x, None
    if p == 1:
        scaled_mask = np.zeros_like(x)
        return scaled_mask.copy(), scaled_mask
    keep = rng.random(x.shape, dtype=x.dtype if x.dtype == np.float32 else np.float64) >= p
    scaled_mask = np.multiply(keep, np.asarray(1 / (1 - p), dtype=x.dtype), dtype=x.dtype)
    return x * scaled_mask, scaled_mask


def dropout_backward(dy: np.ndarray, cache) -> np.ndarray:
    """dL/dx = dy * mask / (1 - p): gradient flows only through the kept elements."""
    if cache is None:
        return dy
    return dy * cache
