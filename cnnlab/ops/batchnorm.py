"""Batch normalisation over (N, C) or (N, C, H, W) inputs, as ``F.batch_norm``.

y = (x - mean) / sqrt(var + eps) * weight + bias, per channel C. In training the
mean and (biased) variance come from the batch, over N (and H, W), and the running
statistics are updated in place with the unbiased variance; in evaluation the
running statistics are used.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.utils.validation import check_input, optional_float_array


def _check_input(x: np.ndarray, num_channels: int) -> None:
    if x.ndim not in (2, 4):
        raise ShapeError(f"batch norm expects input of shape (N, C) or (N, C, H, W), "
                         f"got {x.shape}")
    if x.shape[1] != num_channels:
        raise ShapeError(f"batch norm over {num_channels} channels got input with "
                         f"{x.shape[1]} channels (shape {x.shape})")


def _channel_sum(array: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """Per-channel sum of ``array`` (or of ``array * other``) in one pass, no temporary."""
    subscripts = "nc" if array.ndim == 2 else "nchw"
    if other is None:
        return np.einsum(f"{subscripts}->c", array)
    return np.einsum(f"{subscripts},{subscripts}->c", array, other)


def _as_channels(vector: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) -> (1, C) or (1, C, 1, 1), to broadcast against the input."""
    return vector.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_forward(x, weight, bias, running_mean, running_var, training,
                       momentum=0.1, eps=1e-5):
    """Normalise each channel, then scale by ``weight`` and shift by ``bias``.

    y = (x - E[x]) / sqrt(Var[x] + eps) * gamma + beta

    Args:
        x: the input.
        weight, bias: gamma and beta, or None (``affine=False``).
        running_mean, running_var: float arrays updated in place when ``training``
            (running = (1 - momentum) * running + momentum * batch statistic, the
            variance unbiased); used instead of batch statistics when not training.
            May be None in training (no tracking).
        training: use batch statistics (True) or the running statistics (False).
        momentum: weight of the new batch statistic in the running average.
        eps: added to the variance for numerical stability.

    Shape:
        - x: (N, C) or (N, C, H, W)
        - weight, bias, running_mean, running_var: (C,)
        - y: same shape as x

    Returns:
        ``(y, cache)``; pass the cache to :func:`batch_norm_backward`.
    """
    check_input(x, "batch_norm")
    weight = optional_float_array(weight, "batch_norm", "weight", like=x)
    bias = optional_float_array(bias, "batch_norm", "bias", like=x)
    num_channels = x.shape[1] if x.ndim >= 2 else -1
    _check_input(x, num_channels)
    count = x.size // num_channels
    if training:
        if count <= 1:
            raise ShapeError(f"batch norm in training needs more than 1 value per channel, "
                             f"got input of shape {x.shape}; use a batch size above 1")
        mean = _channel_sum(x) / np.asarray(count, dtype=x.dtype)
        centered = x - _as_channels(mean, x.ndim)
        variance = _channel_sum(centered, centered) / np.asarray(count, dtype=x.dtype)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += (momentum * count / (count - 1)) * variance
        inverse_std = 1 / np.sqrt(variance + np.asarray(eps, dtype=x.dtype))
        normalized = np.multiply(centered, _as_channels(inverse_std, x.ndim), out=centered)
        y = normalized * _as_channels(weight, x.ndim) if weight is not None else normalized.copy()
        if bias is not None:
            y += _as_channels(bias, x.ndim)
        return y, (True, normalized, inverse_std, weight, bias is not None)
    if running_mean is None or running_var is None:
        raise ShapeError("batch norm in evaluation mode needs running_mean and running_var")
    inverse_std = (1 / np.sqrt(running_var + eps)).astype(x.dtype, copy=False)
    scale = inverse_std * weight if weight is not None else inverse_std
    shift = -running_mean.astype(x.dtype, copy=False) * scale
    if bias is not None:
        shift = shift + bias
    y = x * _as_channels(scale, x.ndim)
    y += _as_channels(shift, x.ndim)
    cache = (False, x, inverse_std, weight, bias is not None,
             running_mean.astype(x.dtype), scale)
    return y, cache


def batch_norm_backward(dy, cache):
    """Gradients of batch normalisation.

    Training (batch statistics depend on x), with x_hat the normalised input and
    M the values per channel:
        dx = gamma / sqrt(var + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat))
        dgamma = sum(dy * x_hat),  dbeta = sum(dy)
    Evaluation (running statistics are constants): dx = dy * gamma / sqrt(var + eps).

    Shape:
        - dy: same shape as x; dx: same shape as x
        - dweight, dbias: (C,), or None when the forward had no weight / bias
    """
    training = cache[0]
    if training:
        _, normalized, inverse_std, weight, has_bias = cache
        count = dy.size // dy.shape[1]
        dbias = _channel_sum(dy)
        dweight_full = _channel_sum(dy, normalized)
        scale = inverse_std * weight if weight is not None else inverse_std
        ndim = dy.ndim
        dx = normalized * _as_channels(dweight_full / np.asarray(-count, dtype=dy.dtype), ndim)
        dx += dy
        dx -= _as_channels(dbias / np.asarray(count, dtype=dy.dtype), ndim)
        dx *= _as_channels(scale, ndim)
    else:
        _, x, inverse_std, weight, has_bias, running_mean, scale = cache
        dbias = _channel_sum(dy)
        # x_hat = (x - running_mean) * inverse_std, summed against dy without forming x_hat.
        dweight_full = (_channel_sum(dy, x) - running_mean * dbias) * inverse_std
        dx = dy * _as_channels(scale, dy.ndim)
    dweight = dweight_full if weight is not None else None
    return dx, dweight, (dbias if has_bias else None)
