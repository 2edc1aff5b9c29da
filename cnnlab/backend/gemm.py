"""Matrix products of conv and linear layers: cnnlab's GEMM, or NumPy's BLAS.

Training splits each batch over threads with BLAS held to one thread per shard
(cnnlab/backend/parallel.py). One thread of OpenBLAS is then the speed limit of the
convolution, and OpenBLAS may run AVX2 kernels on an AVX-512 CPU (its choice, or
``OPENBLAS_CORETYPE``). ``cnnlab.backend._sgemm`` (native/sgemm.c) is a blocked GEMM with
a micro-kernel per level, measured 1.4-1.8x faster than one-thread OpenBLAS with its
AVX2 kernel on the convolution's shapes (AVX-512 machine).

:func:`matmul` and :func:`matmul_batched` use it for float32 operands whose rows are
contiguous: on one thread while :func:`one_thread_blas` is active in the calling thread
(a data-parallel shard), and elsewhere split over the cores the thread policy grants
(cnnlab/backend/threads.py) when a product has at least :data:`SPLIT_FLOPS`; the split
gives the same bits as one thread. Other dtypes and layouts, and the "numpy" level, use
NumPy's BLAS.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from cnnlab.backend import dispatch, threads as thread_policy

_local = threading.local()  # .depth: one_thread_blas nesting of this thread


def describe() -> str:
    """For benchmarks and bug reports: which GEMM the conv and linear layers use."""
    if dispatch.sgemm() is None:
        return f"NumPy's BLAS (level {dispatch.level()})"
    return (f"cnnlab GEMM, {dispatch.level()} (one thread per data-parallel shard, else split "
            "over the cores)")


@contextlib.contextmanager
def one_thread_blas():
    """Marks a region where this thread's products run on one thread (a data-parallel shard)."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def in_one_thread_region() -> bool:
    return getattr(_local, "depth", 0) > 0


#: Products smaller than this (FLOPs) run on one thread: waking a second costs ~40 us.
SPLIT_FLOPS = 16e6


def _threads_for(flops: float) -> int:
    """Threads for one product: one inside a shard or for small products, else the cores
    the thread policy grants now."""
    if flops < SPLIT_FLOPS or in_one_thread_region():
        return 1
    return thread_policy.product_threads()


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
    module = dispatch.sgemm()
    if (module is not None and a.dtype == b.dtype == out.dtype == np.float32
            and a.ndim == b.ndim == out.ndim == 3 and out.flags.c_contiguous and a.size and b.size):
        left, right = _as_row_major_batch(a), _as_row_major_batch(b)
        if left is not None and right is not None:
            (a_rows, trans_a, lda, stride_a), (b_rows, trans_b, ldb, stride_b) = left, right
            threads = _threads_for(2.0 * a.size * b.shape[2])
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
    module = dispatch.sgemm()
    if (module is not None and a.dtype == b.dtype == np.float32 and a.ndim == b.ndim == 2
            and a.size and b.size
            and (out is None or (out.dtype == np.float32 and out.flags.c_contiguous))):
        left, right = _as_row_major(a), _as_row_major(b)
        if left is not None and right is not None:
            if out is None:
                out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
            (a_rows, trans_a, lda), (b_rows, trans_b, ldb) = left, right
            threads = _threads_for(2.0 * a.size * b.shape[1])
            module.gemm(trans_a, trans_b, a.shape[0], b.shape[1], a.shape[1],
                        a_rows, lda, b_rows, ldb, out, out.shape[1], accumulate, 1, 0, 0, 0, threads)
            return out
    return _numpy_product(a, b, out, accumulate)
