"""A small pool of reusable scratch buffers for the backend's fast paths.

Big temporaries allocated fresh on every training step cost
page faults (glibc hands large blocks straight to and from the kernel with mmap), so the
fast paths borrow their scratch arrays here and give them back when done.

Rule that keeps results correct: a buffer taken with :func:`take` belongs to the taker
until it calls :func:`give`; nothing handed to a caller (an op's output or gradient) ever
comes from this pool.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np


_LOCK = threading.Lock()
# key -> free buffers; least recently used keys first, so eviction drops stale shapes.
_FREE: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()
_MAX_FREE_PER_KEY = 2
_MAX_FREE_BYTES = 512 * 2**20


def _free_bytes() -> int:
    return sum(array.nbytes for arrays in _FREE.values() for array in arrays)


def take(tag: str, shape: tuple[int, ...], dtype, init: Callable[[np.ndarray], None] | None = None,
         variant: tuple = ()) -> np.ndarray:
    """Borrow a C-contiguous buffer; ``init`` runs only when one is newly allocated.

    ``variant`` separates buffers whose never-overwritten parts differ (for example the
    zero border of a padded copy), so such parts keep what ``init`` wrote.
    """
    key = (tag, tuple(shape), np.dtype(dtype).str, variant)
    with _LOCK:
        arrays = _FREE.get(key)
        if arrays:
            _FREE.move_to_end(key)
            return arrays.pop()
    array = np.empty(shape, dtype=dtype)
    if init is not None:
        init(array)
    return array


def give(array: np.ndarray, tag: str, variant: tuple = ()) -> None:
    """Return a buffer taken with the same ``tag``/``variant``; do not use it afterwards."""
    key = (tag, array.shape, array.dtype.str, variant)
    with _LOCK:
        arrays = _FREE.setdefault(key, [])
        _FREE.move_to_end(key)
        if len(arrays) < _MAX_FREE_PER_KEY and all(other is not array for other in arrays):
            arrays.append(array)
        while _free_bytes() > _MAX_FREE_BYTES and len(_FREE) > 1:
            _FREE.popitem(last=False)


class Borrowed:
    """Scratch arrays borrowed for one call and given back together at its end::

        with Borrowed() as borrowed:
            for chunk in chunks:
                cols = borrowed.get("conv-cols", shape, dtype)   # the same array each chunk

    ``get`` takes an array the first time a (tag, shape) is asked for, and returns that
    array again afterwards.
    """

    def __init__(self) -> None:
        self._taken: dict[tuple, np.ndarray] = {}

    def get(self, tag: str, shape: tuple[int, ...], dtype,
            init: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        key = (tag, tuple(shape), np.dtype(dtype).str)
        if key not in self._taken:
            self._taken[key] = take(tag, shape, dtype, init=init)
        return self._taken[key]

    def __enter__(self) -> Borrowed:
        return self

    def __exit__(self, *exc) -> None:
        for (tag, _, _), array in self._taken.items():
            give(array, tag)
        self._taken = {}


class Reservation:
    """Keeps at least ``count`` free buffers of each shape pooled until :meth:`release`
    (threads running the same op at once each borrow one); the limit then comes back down."""

    def __init__(self, count: int) -> None:
        self.count = int(count)
        with _LOCK:
            _RESERVATIONS.append(self)
            _apply_limit()

    def release(self) -> None:
        with _LOCK:
            if self in _RESERVATIONS:
                _RESERVATIONS.remove(self)
                _apply_limit()


_RESERVATIONS: list[Reservation] = []
_DEFAULT_FREE_PER_KEY = _MAX_FREE_PER_KEY


def _apply_limit() -> None:
    """The per-key limit is the largest live reservation (caller holds _LOCK)."""
    global _MAX_FREE_PER_KEY
    _MAX_FREE_PER_KEY = max([_DEFAULT_FREE_PER_KEY] + [r.count for r in _RESERVATIONS])
    for arrays in _FREE.values():
        del arrays[_MAX_FREE_PER_KEY:]


def keep_per_key(count: int) -> Reservation:
    """Pool at least ``count`` free buffers of each shape until the returned reservation's
    ``release()``."""
    return Reservation(count)


def clear() -> None:
    """Drop every pooled buffer (frees the memory; later calls allocate afresh)."""
    with _LOCK:
        _FREE.clear()


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process instead of handing it back.

    A training step allocates and frees the same large arrays (layer outputs, gradients)
    every step. glibc gives blocks above a moving threshold their own mmap and trims free
    memory at the top of its heaps, so each step touched fresh pages again: hundreds to
    thousands of page faults per step with data-parallel shards, about 8% of the cnn's
    step here (``cnnlab bench`` shows it). Fixing the mmap threshold at 32 MB (the most
    glibc's moving threshold would reach) and the trim threshold at 1 GB keeps those pages
    mapped; the peak memory stays what it was.

    A process-wide setting, so the library never applies it by itself: ``cnnlab train``
    and ``cnnlab bench`` opt in (a notebook keeps glibc's defaults unless it calls this).
    Done once per process, on Linux with glibc only, and not when the user tuned malloc
    (a ``MALLOC_*`` or ``GLIBC_TUNABLES`` environment variable). Returns True if applied.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if any(name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (AttributeError elsewhere)
        m_trim_threshold, m_mmap_threshold = -1, -3
        _MALLOC_TUNED = bool(libc.mallopt(m_mmap_threshold, ctypes.c_int(32 << 20))
                             and libc.mallopt(m_trim_threshold, ctypes.c_int(1 << 30)))
    except (OSError, AttributeError):
        return False
    return _MALLOC_TUNED
