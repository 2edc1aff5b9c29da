"""Compiled loops for the memory-bound steps: cnnlab._loops (cnnlab/_native/loops.c).

NumPy runs an elementwise op over a strided view one short row at a time, and every op is
one more pass over memory: the 2x2 max pool costs NumPy a copy into four tap planes and
about ten passes, an Adam update twelve. A compiled loop reads each input once and writes
each output once. Every kernel computes exactly what the NumPy code next to its caller
computes, bit for bit (same float operations in the same order); tests/test_kernels.py
checks each against that fallback.

``pip install`` builds the module when a C compiler and Python's headers are there; when
they are not, the NumPy code runs instead. ``CNNLAB_KERNELS=numpy`` in the environment
turns the compiled loops (and cnnlab's GEMM, cnnlab/ops/_gemm.py) off.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType

_module: ModuleType | None = None
_tried = False
_load_lock = threading.Lock()


def _turned_off() -> bool:
    return os.environ.get("CNNLAB_KERNELS", "").strip().lower() == "numpy"


def get() -> ModuleType | None:
    """The compiled loops, or None (not built, or turned off)."""
    global _module, _tried
    if _turned_off():
        return None
    if not _tried:
        # Shards call this from several threads at once: until the import has finished,
        # another thread must wait, not see "tried, nothing there" and take the NumPy path.
        with _load_lock:
            if not _tried:
                try:
                    from cnnlab.backend import _loops
                    _module = _loops
                except ImportError:
                    pass
                _tried = True
    return _module


def enabled() -> bool:
    """True when cnnlab._loops is built and ``CNNLAB_KERNELS`` does not say ``numpy``."""
    return get() is not None


def describe() -> str:
    """For benchmarks and bug reports: which code runs the memory-bound steps."""
    if _turned_off():
        return "numpy (CNNLAB_KERNELS=numpy)"
    if get() is None:
        return "numpy (cnnlab._loops not built: reinstall with a C compiler and Python headers)"
    return "cnnlab._loops (C)"


def reset() -> None:
    """Forget the import attempt (tests switch the module off and on)."""
    global _module, _tried
    _module, _tried = None, False


def contiguous_float(*arrays) -> bool:
    """True when the arrays are C-contiguous and all float32 or all float64 (what the loops take)."""
    dtype = arrays[0].dtype
    return dtype.char in "fd" and all(array.dtype == dtype and array.flags.c_contiguous
                                      for array in arrays)
