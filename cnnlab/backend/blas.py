"""NumPy's BLAS: which library and kernel it runs, and its thread count (via threadpoolctl)."""

from __future__ import annotations

import os

#: The variables that change what BLAS does; reported with it.
ENVIRONMENT = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")


def describe() -> dict:
    """library (openblas, mkl, ...), version, kernel (the core type OpenBLAS chose), threads."""
    import numpy as np

    info: dict = {"numpy": np.__version__, "library": None}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["why_unknown"] = "threadpoolctl is not installed"
        return info
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            info.update(library=pool.get("internal_api"), version=pool.get("version"),
                        kernel=pool.get("architecture"), threads=pool.get("num_threads"),
                        threading_layer=pool.get("threading_layer"))
            break
    info["env"] = {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}
    return info


_blas_libraries = None


def _libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded (found once), [] without it."""
    global _blas_libraries
    if _blas_libraries is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_libraries = []
        else:
            _blas_libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas_libraries


class limit:
    """Holds BLAS to ``threads`` threads inside the ``with`` block, then restores it.

    Process-wide (BLAS has one setting). Cheap enough to wrap a single product: ~2 us where
    the count differs (one call into the library each way), ~1 us where it is already right
    (a class, not a generator: cnnlab wraps every product it sends to BLAS).
    Without threadpoolctl BLAS keeps its threads (correct, only slower).
    """

    __slots__ = ("threads", "changed")

    def __init__(self, threads: int) -> None:
        self.threads = int(threads)
        self.changed: list = []

    def __enter__(self) -> "limit":
        for library in _libraries():
            before = library.get_num_threads()
            if before != self.threads:
                library.set_num_threads(self.threads)
                self.changed.append((library, before))
        return self

    def __exit__(self, *exc_info) -> None:
        for library, before in self.changed:
            library.set_num_threads(before)
        self.changed = []
