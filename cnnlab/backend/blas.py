"""NumPy's BLAS: which library and kernel it runs, and its thread count (via threadpoolctl)."""

from __future__ import annotations

import contextlib
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


_controller = None


def _threadpools():
    """threadpoolctl's controller of the loaded libraries (scanned once), or None without it."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _controller = ThreadpoolController()
    return _controller


_blas_libraries = None


def _libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded (found once), [] without it."""
    global _blas_libraries
    if _blas_libraries is None:
        controller = _threadpools()
        _blas_libraries = [] if controller is None else list(
            controller.select(user_api="blas").lib_controllers)
    return _blas_libraries


@contextlib.contextmanager
def threads_for_call(threads: int):
    """BLAS at ``threads`` threads for one product, then as it was: ~2 us where the count
    differs (one call into the library each way), nothing where it is already right.

    For the calling thread's products outside data-parallel shards; the shards run while
    :func:`limit` holds BLAS to one thread, and this leaves that setting alone.
    """
    changed = []
    for library in _libraries():
        before = library.get_num_threads()
        if before != threads:
            library.set_num_threads(threads)
            changed.append((library, before))
    try:
        yield
    finally:
        for library, before in changed:
            library.set_num_threads(before)


@contextlib.contextmanager
def limit(threads: int):
    """Holds BLAS to ``threads`` threads inside the ``with`` block, then restores it.

    Process-wide (BLAS has one setting); without threadpoolctl BLAS keeps its threads
    (correct, only slower).
    """
    controller = _threadpools()
    if controller is None:
        yield
        return
    limiter = controller.limit(limits=int(threads), user_api="blas")
    try:
        yield
    finally:
        limiter.restore_original_limits()
