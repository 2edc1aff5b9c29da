"""Matrix products of conv and linear layers: cnnlab's AVX-512 GEMM, or NumPy's BLAS.

Training splits each batch over threads with BLAS held to one thread per shard
(cnnlab/parallel.py). One thread of OpenBLAS is then the speed limit of the convolution,
and OpenBLAS may run AVX2 kernels on an AVX-512 CPU (its choice, or ``OPENBLAS_CORETYPE``).
``cnnlab._sgemm`` (cnnlab/backend/native/sgemm.c, built by ``pip install`` when a C compiler is
there) is a blocked GEMM with an AVX-512 micro-kernel, measured 1.4-1.8x faster than
one-thread OpenBLAS with its AVX2 kernel on the convolution's shapes here.

:func:`matmul` and :func:`matmul_batched` use it for float32 operands whose rows are
contiguous: on one thread while :func:`one_thread_blas` is active (inside a data-parallel
step), and elsewhere split over the cores (``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS``
cap them) when a product has at least :data:`SPLIT_FLOPS`; the split gives the same bits
as one thread. Other dtypes and layouts, and CPUs without AVX-512, use NumPy's BLAS.
``CNNLAB_KERNELS=numpy`` turns cnnlab's GEMM off.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from cnnlab.ops import _kernels

_native = None
_tried = False
_one_thread_depth = 0
_lock = threading.Lock()  # guards _one_thread_depth and the one-time import


def native():
    """The compiled module when it is built, the CPU has AVX-512 and it is not turned off."""
    global _native, _tried
    if _kernels._turned_off():
        return None
    if not _tried:
        # As in _kernels.get: a shard thread must not see "tried" before the import finished
        # (it would run that step's products in OpenBLAS: other rounding, a flaky run).
        with _lock:
            if not _tried:
                try:
                    from cnnlab.backend import _sgemm
                    _native = _sgemm if _sgemm.avx512() else None
                except ImportError:
                    pass
                _tried = True
    return _native


def describe() -> str:
    """For benchmarks and bug reports: which GEMM the training step's conv and linear layers use."""
    if _kernels._turned_off():
        return "NumPy's BLAS (CNNLAB_KERNELS=numpy)"
    if native() is None:
        return "NumPy's BLAS (cnnlab._sgemm not built, or no AVX-512)"
    return "cnnlab AVX-512 GEMM (one thread per data-parallel shard, else split over the cores)"


@contextlib.contextmanager
def one_thread_blas():
    """Marks a region where BLAS runs one thread per caller (data-parallel shards)."""
    global _one_thread_depth
    with _lock:
        _one_thread_depth += 1
    try:
        yield
    finally:
        with _lock:
            _one_thread_depth -= 1


#: Products smaller than this (FLOPs) run on one thread: waking a second costs ~40 us.
SPLIT_FLOPS = 16e6
_cores: int | None = None


def _threads_for(flops: float) -> int:
    """Threads for a product outside data-parallel shards: the cores (as OPENBLAS_NUM_THREADS
    or OMP_NUM_THREADS limit them) for big products, else one."""
    global _cores
    if flops < SPLIT_FLOPS:
        return 1
    if _cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            value = os.environ.get(name, "")
            if value.strip().isdigit() and int(value) > 0:
                cores = min(cores or 1, int(value))
        _cores = max(1, cores or 1)
    return _cores


def _as_row_major(matrix: np.ndarray):
    """(array whose rows are contiguous, transposed?, leading dimension) or None."""
    if matrix.flags.c_contiguous:
        return matrix, False, matrix.shape[1]
    if matrix.flags.f_contiguous:
        return matrix.T, True, matrix.shape[0]
    return None


def _as_row_major_batch(stack: np.ndarray):
    """(C-contiguous array, transposed?, leading dimension, stride) for a stack of matrices, or None."""
    if stack.flags.c_contiguous:
        return stack, False, stack.shape[2], stack.shape[1] * stack.shape[2]
    swapped = stack.transpose(0, 2, 1)
    if swapped.flags.c_contiguous:
        return swapped, True, stack.shape[1], stack.shape[1] * stack.shape[2]
    return None


def matmul_batched(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False) -> np.ndarray:
    """``out[i] = a[i] @ b[i]`` (or ``+=`` with ``accumulate``) for stacks of matrices (3-D arrays).

    Each stack is C-contiguous, or the swapaxes view of a C-contiguous one (a stack of
    transposes); ``out`` is C-contiguous.
    """
    module = native()
    if (module is not None and a.dtype == b.dtype == out.dtype == np.float32
            and a.ndim == b.ndim == out.ndim == 3 and out.flags.c_contiguous and a.size and b.size):
        left, right = _as_row_major_batch(a), _as_row_major_batch(b)
        if left is not None and right is not None:
            (a_rows, trans_a, lda, stride_a), (b_rows, trans_b, ldb, stride_b) = left, right
            threads = 1 if _one_thread_depth else _threads_for(2.0 * a.size * b.shape[2])
            module.gemm(trans_a, trans_b, a.shape[1], b.shape[2], a.shape[2], a_rows, lda,
                        b_rows, ldb, out, out.shape[2], accumulate, a.shape[0], stride_a,
                        stride_b, out.shape[1] * out.shape[2], threads)
            return out
    return _numpy_product(a, b, out, accumulate)


def _numpy_product(a: np.ndarray, b: np.ndarray, out: np.ndarray | None, accumulate: bool) -> np.ndarray:
    """NumPy's BLAS for what cnnlab's GEMM does not take: ``out (+)= a @ b``."""
    if accumulate:
        out += np.matmul(a, b)
        return out
    return np.matmul(a, b, out=out)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           accumulate: bool = False) -> np.ndarray:
    """``a @ b`` for 2-D arrays, into ``out`` when given (as ``np.matmul(a, b, out=out)``);
    ``accumulate=True`` adds the product to ``out`` instead (``out += a @ b``)."""
    if accumulate and out is None:
        raise ValueError("matmul(accumulate=True) needs out, the array to add the product to")
    module = native()
    if (module is not None and a.dtype == b.dtype == np.float32 and a.ndim == b.ndim == 2
            and a.size and b.size
            and (out is None or (out.dtype == np.float32 and out.flags.c_contiguous))):
        left, right = _as_row_major(a), _as_row_major(b)
        if left is not None and right is not None:
            if out is None:
                out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
            (a_rows, trans_a, lda), (b_rows, trans_b, ldb) = left, right
            threads = 1 if _one_thread_depth else _threads_for(2.0 * a.size * b.shape[1])
            module.gemm(trans_a, trans_b, a.shape[0], b.shape[1], a.shape[1],
                        a_rows, lda, b_rows, ldb, out, out.shape[1], accumulate, 1, 0, 0, 0, threads)
            return out
    return _numpy_product(a, b, out, accumulate)
