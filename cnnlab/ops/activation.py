"""Activation functions (lecture 003: a_j = f(z_j)) and the softmax family.

Each activation has a forward returning ``(y, cache)`` and a backward taking
``(dy, cache)``; both keep the input's dtype (float32 stays float32). Softmax and
log-softmax are plain functions: the losses in :mod:`cnnlab.ops.loss` use them and
supply the combined gradient.
"""

from __future__ import annotations

import numpy as np

from cnnlab.utils.validation import check_input


def relu_forward(x: np.ndarray):
    """ReLU(x) = max(0, x), elementwise.

    Shape:
        - x: any shape, e.g. (N, C, H, W) or (N, F)
        - y: same shape as x
    """
    check_input(x, "relu")
    return np.maximum(x, 0), x > 0


def relu_backward(dy: np.ndarray, cache) -> np.ndarray:
    """dReLU/dx = 1 where x > 0, else 0 (0 at exactly x = 0, as PyTorch)."""
    return np.multiply(dy, cache)


def leaky_relu_forward(x: np.ndarray, negative_slope: float = 0.01):
    """LeakyReLU(x) = x if x > 0 else negative_slope * x, elementwise.

    Args:
        negative_slope: slope for negative inputs (PyTorch's default 0.01).

    Shape:
        - x: any shape; y: same shape as x
    """
    check_input(x, "leaky_relu")
    positive = x > 0
    y = np.where(positive, x, x * np.asarray(negative_slope, dtype=x.dtype))
    return y, (positive, negative_slope)


def leaky_relu_backward(dy: np.ndarray, cache) -> np.ndarray:
    """Gradient 1 where x > 0, ``negative_slope`` elsewhere (x = 0 included, as PyTorch)."""
    positive, negative_slope = cache
    return np.where(positive, dy, dy * np.asarray(negative_slope, dtype=dy.dtype))


def sigmoid_forward(x: np.ndarray):
    """sigma(x) = 1 / (1 + exp(-x)), computed without overflow for large |x|.

    With e = exp(-|x|) <= 1: sigma(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0,
    so exp never sees a large positive argument.

    Shape:
        - x: any shape; y: same shape as x
    """
    check_input(x, "sigmoid")
    e = np.exp(-np.abs(x))
    denominator = 1 + e
    y = np.where(x >= 0, 1, e)
    y /= denominator
    return y, y


def sigmoid_backward(dy: np.ndarray, cache) -> np.ndarray:
    """dsigma/dx = sigma(x) (1 - sigma(x))."""
    y = cache
    return dy * y * (1 - y)


def tanh_forward(x: np.ndarray):
    """tanh(x), elementwise.

    Shape:
        - x: any shape; y: same shape as x
    """
    check_input(x, "tanh")
    y = np.tanh(x)
    return y, y


def tanh_backward(dy: np.ndarray, cache) -> np.ndarray:
    """dtanh/dx = 1 - tanh(x)^2."""
    y = cache
    return dy * (1 - y * y)


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """softmax(x)_k = exp(x_k - max x) / sum_j exp(x_j - max x) along ``axis``.

    Lecture 000's stable softmax: subtracting the row maximum changes nothing
    mathematically but keeps exp from overflowing, so huge logits give finite
    probabilities that sum to 1.

    Shape:
        - x: (N, C) with the classes along ``axis`` (any shape works)
        - output: same shape as x
    """
    check_input(x, "softmax")
    shifted = x - x.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def log_softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """log softmax(x)_k = (x_k - max x) - log sum_j exp(x_j - max x) along ``axis``.

    Computed directly (not as ``log(softmax(x))``), so it stays finite where a
    probability underflows to 0.

    Shape:
        - x: (N, C) with the classes along ``axis``; output: same shape as x
    """
    check_input(x, "log_softmax")
    shifted = x - x.max(axis=axis, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted
