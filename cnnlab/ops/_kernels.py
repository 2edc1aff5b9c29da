"""Compiled loops for the memory-bound steps, when numba is installed (``pip install cnnlab[fast]``).

NumPy runs an elementwise op over a strided view one short row at a time, and every op is
one more pass over memory; the 2x2 max pool, for instance, costs NumPy a copy into four
tap planes and about ten passes. A compiled loop reads each input once and writes each
output once. Every kernel here computes exactly what the NumPy code next to its caller
computes, bit for bit; tests/test_kernels.py checks each against that fallback.

numba is optional and imported on first use only (``import cnnlab`` never loads it).
``CNNLAB_KERNELS=numpy`` in the environment turns the kernels off. The first call of a
kernel compiles it (about a second) and caches the machine code next to this file, or in
numba's user cache folder when that is read-only.
"""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

_kernels: SimpleNamespace | None = None
_tried = False


def enabled() -> bool:
    """True when numba is installed and ``CNNLAB_KERNELS`` does not say ``numpy``."""
    return get() is not None


def _turned_off() -> bool:
    return os.environ.get("CNNLAB_KERNELS", "").strip().lower() == "numpy"


def get() -> SimpleNamespace | None:
    """The compiled kernels, or None (no numba, it failed to compile, or turned off)."""
    global _kernels, _tried
    if _turned_off():
        return None
    if not _tried:
        _tried = True
        try:
            import numba
        except ImportError:
            return None
        try:
            _kernels = _build(numba)
        except Exception as error:  # numba present but unable to compile here: stay correct
            warnings.warn(f"cnnlab: numba could not compile its kernels ({type(error).__name__}: "
                          f"{error}); using the NumPy code instead", RuntimeWarning, stacklevel=2)
    return _kernels


def describe() -> str:
    """For benchmarks and bug reports: which code runs the memory-bound steps."""
    if _turned_off():
        return "numpy (CNNLAB_KERNELS=numpy)"
    if get() is None:
        return "numpy (numba not installed or unable to compile: pip install cnnlab[fast])"
    import numba
    return f"numba {numba.__version__}"


def reset() -> None:
    """Forget the import attempt (tests switch numba off and on)."""
    global _kernels, _tried
    _kernels, _tried = None, False


def _build(numba) -> SimpleNamespace:
    jit = numba.njit(cache=True, nogil=True)

    @jit
    def maximum(a, b):
        # np.maximum's definition: NaN wins, otherwise the larger; a on equality.
        return a if (a >= b or a != a) else b

    @jit
    def max_pool_2x2_forward(x, y, index):
        """y = max over each 2x2 window; index = its first maximum's tap (row-major),
        the NumPy path's rule: tap 1 if x1 > x0, then tap t if x_t > the running max."""
        batch, channels, out_h, out_w = y.shape
        for b in range(batch):
            for c in range(channels):
                for i in range(out_h):
                    top = x[b, c, 2 * i]
                    bottom = x[b, c, 2 * i + 1]
                    for j in range(out_w):
                        x0, x1 = top[2 * j], top[2 * j + 1]
                        x2, x3 = bottom[2 * j], bottom[2 * j + 1]
                        tap = 1 if x1 > x0 else 0
                        best = maximum(x0, x1)
                        if x2 > best:
                            tap = 2
                        best = maximum(best, x2)
                        if x3 > best:
                            tap = 3
                        y[b, c, i, j] = maximum(best, x3)
                        index[b, c, i, j] = tap

    @jit
    def max_pool_2x2_backward(dy, index, dx):
        """dX = dY at each window's recorded tap, 0 at its other three pixels (covered part)."""
        batch, channels, out_h, out_w = dy.shape
        for b in range(batch):
            for c in range(channels):
                for i in range(out_h):
                    top = dx[b, c, 2 * i]
                    bottom = dx[b, c, 2 * i + 1]
                    for j in range(out_w):
                        gradient, tap = dy[b, c, i, j], index[b, c, i, j]
                        # dy * (index == tap), as NumPy computes it (NaN * 0 stays NaN).
                        top[2 * j] = gradient * (tap == 0)
                        top[2 * j + 1] = gradient * (tap == 1)
                        bottom[2 * j] = gradient * (tap == 2)
                        bottom[2 * j + 1] = gradient * (tap == 3)

    kernels = SimpleNamespace(max_pool_2x2_forward=max_pool_2x2_forward,
                              max_pool_2x2_backward=max_pool_2x2_backward)
    _compile_now(kernels)
    return kernels


def _compile_now(kernels: SimpleNamespace) -> None:
    """Compile (or load from the cache) the float32 versions on a tiny input, so a
    failure shows here, where get() can fall back, and not in the middle of training."""
    import numpy as np

    x = np.zeros((1, 1, 2, 2), dtype=np.float32)
    y = np.empty((1, 1, 1, 1), dtype=np.float32)
    index = np.empty(y.shape, dtype=np.uint8)
    kernels.max_pool_2x2_forward(x, y, index)
    kernels.max_pool_2x2_backward(y, index, x)
