"""Checks of the arguments a user passes: one function per kind of argument, one message format.

Each check returns the value normalised (``3 -> (3, 3)``, ``np.int64(3) -> 3``) or raises one
line in the same form everywhere::

    Conv2d: kernel_size must be an integer >= 1 or a pair of them, got -3
    batch size must be a positive integer, got 0

``owner`` (a layer or class name) comes first when given. The error class is the caller's:
:class:`~cnnlab.errors.ConfigError` for the settings of a layer, an optimizer or a run,
:class:`~cnnlab.errors.ShapeError` for the arguments of an op (``cnnlab.ops``).
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError, ShapeError


def is_int(value) -> bool:
    """True for Python and NumPy integers; False for bools (``True`` is not a size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def positive_int(value, name: str, owner: str | None = None, error=ConfigError) -> int:
    """``value`` as an int >= 1 (a count: channels, features, batch size, epochs)."""
    if not is_int(value) or value < 1:
        raise error(f"{_prefix(owner)}{name} must be a positive integer, got {value!r}")
    return int(value)


def int_pair(value, name: str, minimum: int = 1, owner: str | None = None,
             error=ConfigError) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(3, 5) -> (3, 5)``: an int or a pair of ints, each >= ``minimum``
    (kernel sizes, strides, dilations: 1; paddings: 0)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(is_int(v) and v >= minimum for v in values):
        raise error(f"{_prefix(owner)}{name} must be an integer >= {minimum} or a pair of them, "
                    f"got {value!r}")
    return int(values[0]), int(values[1])


def check_image_batch(x, op: str) -> None:
    """An (N, C, H, W) float32 or float64 array, or a one-line ShapeError naming ``op``."""
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{op} expects a NumPy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ShapeError(f"{op} expects input of shape (N, C, H, W), got {x.shape}; "
                         "add the missing batch or channel axis, e.g. x[None] or x[:, None]")
    if x.dtype not in (np.float32, np.float64):
        raise ShapeError(f"{op} expects float32 or float64 input, got {x.dtype}; "
                         "convert it first, e.g. x.astype(np.float32)")
