"""Matrix products of conv and linear layers: cnnlab's GEMM, or NumPy's BLAS, per level and shape.

``cnnlab.backend._sgemm`` (native/sgemm.c) is a blocked GEMM with a micro-kernel per level.
Which of the two runs a float32 product is an explicit table, :data:`ROUTES` (level ->
product class -> "cnnlab" or "blas"), set from benchmarks/gemm_routing.py on the products
the lecture CNN and MLP issue, with the figures in docs/architecture.md: NumPy's OpenBLAS
wherever it was as fast, cnnlab's GEMM where it measured faster.

A product's class depends on the product alone (a stack, or one product of at least
:data:`SPLIT_FLOPS` or under), never on where it runs or on the load: a product gives the same
bits in a data-parallel shard, in a torchrun rank and in a plain call. OpenBLAS runs its
products on one thread (its results change with its thread count). cnnlab's GEMM runs the
"large" products: on one thread while :func:`one_thread_blas` is active in the calling thread
(a data-parallel shard, where cnnlab/backend/parallel.py also holds BLAS at one thread),
elsewhere split over the cores the thread policy grants now (cnnlab/backend/threads.py),
with the same bits on any number of threads. Other dtypes and layouts, and the "numpy"
level, use NumPy's BLAS as it is.
"""

from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple

import numpy as np

from cnnlab.backend import blas, dispatch, threads as thread_policy

_local = threading.local()  # .depth: one_thread_blas nesting of this thread


#: A product of this many FLOPs or more is "large": cnnlab's GEMM may split it over threads
#: (waking a sleeping second thread costs ~90 us on this VM; see native/gemm_threads.c).
SPLIT_FLOPS = 16e6

#: One product A B^T (B stored n x k) with at most this many columns is "narrow-bt": cnnlab's
#: GEMM computes it as dot products of rows, unpacked (GEMM_DOT_N in native/kernels.h, which
#: ``_sgemm.DOT_N`` exports; a test holds the two equal).
NARROW_N = 16

#: level -> product class -> the GEMM that runs its float32 products ("cnnlab" or "blas").
#: Classes: "stack" (a stack of products, B as stored: Winograd's 16 forward and dX
#: products), "stack-bt" (a stack with B transposed: Winograd's dW, dM V^T), "narrow-bt"
#: (one product x W^T with at most NARROW_N columns: the classifier layers' forward),
#: "large" (one product of at least SPLIT_FLOPS: the mlp's hidden layer, im2col
#: convolutions), "small" (one product under it: the classifier layers' gradients).
#: Measured by benchmarks/gemm_routing.py on the products the lecture CNN and MLP issue, and
#: by the training step with each choice (docs/architecture.md, "Which GEMM runs a
#: product"): one thread of OpenBLAS beat the C kernel on the small products and the plain
#: stacks at every level (1.1-1.5x at avx2 and avx512, 2-4x at portable); the C kernel beat
#: it on the B-transposed stacks at avx2 and avx512 (1.2-1.4x, the step 10% faster) and on
#: the narrow ones (1.3-2.4x); on the large ones the C kernel tied or beat it on one thread
#: and on two, with a pool that yields where OpenBLAS's workers spin. "neon" has no
#: measurement here (no ARM machine) and follows "portable", where OpenBLAS on one thread
#: beat the C kernel on two.
ROUTES = {
    "portable": {"stack": "blas", "stack-bt": "blas", "narrow-bt": "blas", "large": "blas",
                 "small": "blas"},
    "avx2": {"stack": "blas", "stack-bt": "cnnlab", "narrow-bt": "cnnlab", "large": "cnnlab",
             "small": "blas"},
    "avx512": {"stack": "blas", "stack-bt": "cnnlab", "narrow-bt": "cnnlab", "large": "cnnlab",
               "small": "blas"},
    "neon": {"stack": "blas", "stack-bt": "blas", "narrow-bt": "blas", "large": "blas",
             "small": "blas"},
}


class Product(NamedTuple):
    """One product as :func:`trace` records it: ``out (batch, m, n) = op(a) (m, k) @ op(b) (k, n)``."""

    m: int
    n: int
    k: int
    batch: int
    trans_a: bool
    trans_b: bool
    threads: int   # the threads it ran on
    kind: str      # its class in ROUTES: "stack", "stack-bt", "narrow-bt", "large" or "small"
    path: str      # "cnnlab" (cnnlab's GEMM) or "blas" (NumPy's)


def product_class(m: int, n: int, k: int, batch: int = 1, trans_b: bool = False,
                  trans_a: bool = False) -> str:
    """"stack" for a stack of ``batch`` > 1 products ("stack-bt" when B is transposed), else
    "narrow-bt" for A B^T with at most :data:`NARROW_N` columns, else "large" from
    :data:`SPLIT_FLOPS` FLOPs up, "small" below."""
    if batch > 1:
        return "stack-bt" if trans_b else "stack"
    if trans_b and not trans_a and n <= NARROW_N:
        return "narrow-bt"
    return "large" if 2.0 * m * n * k >= SPLIT_FLOPS else "small"


def path_for(kind: str, level: str | None = None) -> str:
    """The GEMM that runs a float32 product of class ``kind`` at ``level`` (default: the
    level in use): "cnnlab" or "blas"."""
    level = dispatch.level() if level is None else level
    if dispatch.sgemm() is None:
        return "blas"
    return _route(kind, level)


def _route(kind: str, level: str) -> str:
    """ROUTES' GEMM for ``kind`` at ``level``; "blas" at a level without native code (numpy)."""
    return ROUTES[level][kind] if level in ROUTES else "blas"


def describe() -> str:
    """For benchmarks and bug reports: which GEMM the conv and linear layers use."""
    level = dispatch.level()
    if dispatch.sgemm() is None:
        return f"NumPy's BLAS (level {level})"
    routes = ROUTES[level]
    on_cnnlab = [kind for kind, path in routes.items() if path == "cnnlab"]
    if not on_cnnlab:
        return f"NumPy's BLAS for every product, on one thread ({level})"
    return (f"{', '.join(on_cnnlab)} products on cnnlab GEMM (split over the free cores outside "
            f"shards), the others on NumPy's BLAS, one thread ({level})")


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


_trace: list | None = None


@contextlib.contextmanager
def trace():
    """Records every float32 product :func:`matmul` and :func:`matmul_batched` run inside the
    block, from any thread (benchmarks/gemm_routing.py logs those a training step issues)::

        with gemm.trace() as products:
            step()
        # products: [Product(m, n, k, batch, trans_a, trans_b, threads, kind, path), ...]
    """
    global _trace
    outer, _trace = _trace, []
    try:
        yield _trace
    finally:
        _trace = outer


def _plan(m: int, n: int, k: int, batch: int, trans_a: bool, trans_b: bool) -> tuple[int, str]:
    """(threads, path) for one product; recorded when :func:`trace` is active."""
    kind = product_class(m, n, k, batch, trans_b, trans_a)
    # path_for(kind) less its check for native code, which the callers hold already (~3 us a
    # product, dozens of products a shard).
    path = _route(kind, dispatch.level())
    # OpenBLAS always on one thread: its results differ with its thread count (so they would
    # follow the load), and its idle workers spin in the way of a busy machine.
    split = path == "cnnlab" and 2.0 * m * n * k * batch >= SPLIT_FLOPS and not in_one_thread_region()
    threads = thread_policy.product_threads() if split else 1
    if _trace is not None:
        _trace.append(Product(m, n, k, batch, trans_a, trans_b, threads, kind, path))
    return threads, path


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
            m, n, k = a.shape[1], b.shape[2], a.shape[2]
            threads, path = _plan(m, n, k, a.shape[0], trans_a, trans_b)
            if path == "blas":
                return _blas_product(a, b, out, accumulate)
            module.gemm(trans_a, trans_b, m, n, k, a_rows, lda, b_rows, ldb, out, out.shape[2],
                        accumulate, a.shape[0], stride_a, stride_b, out.shape[1] * out.shape[2],
                        threads)
            return out
    return _numpy_product(a, b, out, accumulate)


def _blas_product(a, b, out, accumulate: bool) -> np.ndarray:
    """NumPy's BLAS on one thread (a no-op check inside shards, where DataParallel holds it
    there already)."""
    with blas.limit(1):
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
            (a_rows, trans_a, lda), (b_rows, trans_b, ldb) = left, right
            m, n, k = a.shape[0], b.shape[1], a.shape[1]
            threads, path = _plan(m, n, k, 1, trans_a, trans_b)
            if path == "blas":
                return _blas_product(a, b, out, accumulate)
            if out is None:
                out = np.empty((m, n), dtype=np.float32)
            module.gemm(trans_a, trans_b, m, n, k, a_rows, lda, b_rows, ldb, out, out.shape[1],
                        accumulate, 1, 0, 0, 0, threads)
            return out
    return _numpy_product(a, b, out, accumulate)
