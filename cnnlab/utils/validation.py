"""Checks of the arguments a user passes: one function per kind of argument, one message format.

Each check returns the value normalised (``3 -> (3, 3)``, ``np.int64(3) -> 3``) or raises one
line in the same form everywhere::

    Conv2d: kernel_size must be an integer >= 1 or a pair of them, got -3
    batch size must be a positive integer, got 0

``owner`` (a layer or class name) comes first when given. The error class is the caller's:
:class:`~cnnlab.errors.ConfigError` for the settings of a layer, an optimizer or a run,
:class:`~cnnlab.errors.ShapeError` for the arguments of an op (``cnnlab.ops``).

The arrays an op takes (``check_input``, ``float_array``, ``check_image_batch``), the same for
every op of ``cnnlab.ops``, so all say the same thing when one is wrong:

- arrays are NumPy arrays; a weight or bias may be a ``cnnlab.nn`` Parameter (its ``.data``);
- values are float32 or float64 (an int or bool array would give int results or wrap around,
  float16 loses the gradients), and every float argument of one call has the input's dtype;
- an empty batch (N = 0) gives empty results, as in PyTorch; only a mean over the batch (the
  losses, batch norm in training) needs a sample.

An op keeps references to its inputs, not copies, for its backward (as PyTorch's autograd
saves tensors): an input must not change between a forward and its backward.
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


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_of(value, op: str, name: str = "input") -> np.ndarray:
    """``value`` as an ndarray: the array itself, or a Parameter's ``.data``."""
    if isinstance(value, np.ndarray):
        return value
    data = getattr(value, "data", None)
    if isinstance(data, np.ndarray):  # a cnnlab.nn Parameter
        return data
    raise ShapeError(f"{op} expects a NumPy array as {name}, got {type(value).__name__}; "
                     "convert it first, e.g. np.asarray(x, dtype=np.float32)")


def float_array(value, op: str, name: str = "input", like: np.ndarray | None = None) -> np.ndarray:
    """``value`` (see :func:`array_of`) checked to be float32 or float64, and of ``like``'s dtype
    when given (``like`` is the op's input)."""
    array = array_of(value, op, name)
    if like is not None:
        if array.dtype != like.dtype:
            raise ShapeError(f"{op} input is {like.dtype} but {name} is {array.dtype}; use one "
                             f"dtype for both, e.g. x.astype({name}.dtype)")
    elif array.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{op} expects float32 or float64 {name}, got {array.dtype}; "
                         "convert it first, e.g. x.astype(np.float32)")
    return array


def optional_float_array(value, op: str, name: str, like: np.ndarray) -> np.ndarray | None:
    """:func:`float_array` of ``like``'s dtype, or None for None (an optional bias)."""
    return None if value is None else float_array(value, op, name, like)


def check_input(x, op: str, name: str = "input") -> np.ndarray:
    """An op's input (the data, never a Parameter): a float32 or float64 ndarray."""
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{op} expects a NumPy array as {name}, got {type(x).__name__}; "
                         "convert it first, e.g. np.asarray(x, dtype=np.float32)")
    return float_array(x, op, name)


def check_image_batch(x, op: str) -> None:
    """An (N, C, H, W) float32 or float64 array, or a one-line ShapeError naming ``op``."""
    check_input(x, op)
    if x.ndim != 4:
        raise ShapeError(f"{op} expects input of shape (N, C, H, W), got {x.shape}; "
                         "add the missing batch or channel axis, e.g. x[None] or x[:, None]")
