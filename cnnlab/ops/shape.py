"""Flatten: the reshape between the convolutional part and the fully connected part."""

from __future__ import annotations

import math

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.utils.validation import check_input


def flatten_forward(x: np.ndarray, start_dim: int = 1):
    """Merge the dimensions from ``start_dim`` on into one, as ``torch.flatten``.

    Args:
        x: any array with more than ``start_dim`` dimensions.
        start_dim: first dimension to merge (1 keeps the batch dimension).

    Shape:
        - x: (N, C, H, W) (any number of dimensions)
        - y: (N, C * H * W) for ``start_dim=1``

    Returns:
        ``(y, cache)``; y is a view of x when x is contiguous (no copy).
    """
    check_input(x, "flatten")
    y = x.reshape(flatten_output_shape(x.shape, start_dim))
    return y, x.shape


def flatten_output_shape(input_shape: tuple[int, ...], start_dim: int = 1) -> tuple[int, ...]:
    """``input_shape[:start_dim] + (product of the rest,)``: (N, C, H, W) -> (N, C * H * W)."""
    ndim = len(input_shape)
    if not -ndim <= start_dim < max(ndim, 1):
        raise ShapeError(f"flatten start_dim={start_dim} is out of range for an input with "
                         f"{ndim} dimensions")
    start_dim %= max(ndim, 1)
    return tuple(input_shape[:start_dim]) + (math.prod(input_shape[start_dim:]),)


def flatten_backward(dy: np.ndarray, cache) -> np.ndarray:
    """Reshape the gradient back to the input's shape.

    Shape:
        - dy: the forward output's shape
        - dx: the forward input's shape
    """
    return dy.reshape(cache)
