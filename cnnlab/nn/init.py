"""Weight initialisation: the lecture's truncated normal and PyTorch's schemes, in NumPy.

Every function takes the ``rng`` it draws from (``None`` means ``np.random.default_rng()``);
the same generator state gives the same weights. Functions ending in ``_`` fill an array in
place and return it, as ``torch.nn.init`` does.
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.errors import ConfigError

_LINEAR_GAINS = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid")


def _generator(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng() if rng is None else rng


def calculate_fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """Fan-in and fan-out of a weight of ``shape`` as PyTorch counts them.

    A Linear weight (out_features, in_features) has fan_in = in_features; a Conv2d weight
    (C_out, C_in / groups, kH, kW) has fan_in = C_in / groups * kH * kW and
    fan_out = C_out * kH * kW.
    """
    shape = shape.shape if isinstance(shape, np.ndarray) else tuple(shape)
    if len(shape) < 2:
        raise ConfigError(f"fan in and fan out need a weight with at least 2 dimensions, got shape {shape}")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain PyTorch recommends for ``nonlinearity`` (``torch.nn.init.calculate_gain``)."""
    if nonlinearity in _LINEAR_GAINS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        negative_slope = 0.01 if param is None else float(param)
        # gain = sqrt(2 / (1 + a^2))
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ConfigError(
        f"unknown nonlinearity {nonlinearity!r}; use one of linear, sigmoid, tanh, relu, leaky_relu, selu"
    )


def _fan(shape: tuple[int, ...], mode: str) -> int:
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ConfigError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def uniform_(array: np.ndarray, low: float = 0.0, high: float = 1.0, *, rng=None) -> np.ndarray:
    """Fill ``array`` with draws from U(low, high)."""
    array[...] = _generator(rng).uniform(low, high, size=array.shape)
    return array


def normal_(array: np.ndarray, mean: float = 0.0, std: float = 1.0, *, rng=None) -> np.ndarray:
    """Fill ``array`` with draws from N(mean, std^2)."""
    array[...] = _generator(rng).normal(mean, std, size=array.shape)
    return array


def zeros_(array: np.ndarray) -> np.ndarray:
    array.fill(0)
    return array


def ones_(array: np.ndarray) -> np.ndarray:
    array.fill(1)
    return array


def kaiming_uniform_(array: np.ndarray, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", *, rng=None) -> np.ndarray:
    """He initialisation, uniform: U(-bound, bound) with bound = gain * sqrt(3 / fan).

    With PyTorch's layer default ``a = sqrt(5)`` the gain is sqrt(1/3), so
    bound = 1 / sqrt(fan_in).
    """
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(array.shape, mode))
    bound = math.sqrt(3.0) * std  # U(-b, b) has std b / sqrt(3)
    return uniform_(array, -bound, bound, rng=rng)


def kaiming_normal_(array: np.ndarray, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", *, rng=None) -> np.ndarray:
    """He initialisation, normal: N(0, std^2) with std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(array.shape, mode))
    return normal_(array, 0.0, std, rng=rng)


def xavier_uniform_(array: np.ndarray, gain: float = 1.0, *, rng=None) -> np.ndarray:
    """Glorot initialisation, uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(array.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(array, -bound, bound, rng=rng)


def xavier_normal_(array: np.ndarray, gain: float = 1.0, *, rng=None) -> np.ndarray:
    """Glorot initialisation, normal: std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(array.shape)
    return normal_(array, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng=rng)


def trunc_normal(shape, rng=None, std: float = 0.1, bound: float = 2.0,
                 dtype=np.float64) -> np.ndarray:
    """The lecture's ``randn_trunc``: N(0, std^2) with draws outside +-bound*std redrawn.

    The lectures call ``scipy.stats.truncnorm(-2, 2, loc=0, scale=0.1).rvs(shape)``; this
    draws the same distribution with NumPy only, redrawing rejected values (about 4.6% of
    them for bound = 2) until all lie inside.

    Args:
        shape: the output shape, e.g. (784, 500).
        rng: the generator to draw from.
        std: sigma of the untruncated normal (the lecture's 0.1).
        bound: truncation in units of sigma (the lecture's 2).
        dtype: of the result.
    """
    if std <= 0 or bound <= 0:
        raise ConfigError(f"trunc_normal needs std > 0 and bound > 0, got std={std}, bound={bound}")
    rng = _generator(rng)
    values = rng.standard_normal(shape)
    outside = np.flatnonzero(np.abs(values) > bound)
    flat = values.reshape(-1)
    while outside.size:
        flat[outside] = rng.standard_normal(outside.size)
        outside = outside[np.abs(flat[outside]) > bound]
    values *= std
    return values.astype(dtype, copy=False)


def trunc_normal_(array: np.ndarray, std: float = 0.1, bound: float = 2.0, *, rng=None) -> np.ndarray:
    """Fill ``array`` in place with :func:`trunc_normal` draws."""
    array[...] = trunc_normal(array.shape, rng, std=std, bound=bound)
    return array
