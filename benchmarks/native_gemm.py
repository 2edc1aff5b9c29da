"""cnnlab's native GEMM at each compiled level against NumPy's OpenBLAS, on the lecture CNN's shapes.

    python benchmarks/native_gemm.py [--rounds 7] [--levels avx2,avx512]

Benchmark NumPy's BLAS with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset in that command only
(``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/native_gemm.py``).
Every round times each (shape, implementation) once, interleaved, so a busy neighbour slows all
of them alike; the table gives GFLOP/s medians with min and max over the rounds, and the
ratio of each to one-thread OpenBLAS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from cnnlab.backend import _sgemm

# (name, trans_a, trans_b, m, n, k, count): one 64-image shard of the lecture CNN
# (Conv(1->32)-Pool-Conv(32->64)-Pool-Linear(3136->10)); conv2 as the wide im2col GEMM
# (14 rows of 16 padded columns per image) and as Winograd's 16 products over 49 tiles.
SHAPES = [
    ("conv2 forward  W @ cols", False, False, 64, 64 * 14 * 16, 288, 1),
    ("conv2 dW  dY @ cols^T", False, True, 64, 288, 64 * 14 * 16, 1),
    ("conv2 dcols  W^T @ dY", True, False, 288, 64 * 14 * 16, 64, 1),
    ("winograd forward 16x U @ V", False, False, 64, 64 * 49, 32, 16),
    ("winograd dU 16x Yhat @ V^T", False, True, 64, 32, 64 * 49, 16),
    ("winograd dV 16x U^T @ Yhat", True, False, 32, 64 * 49, 64, 16),
    ("linear forward  x @ W^T", False, True, 64, 10, 3136, 1),
    ("linear dW  dY^T @ x", True, False, 10, 3136, 64, 1),
]


def operands(ta, tb, m, n, k, count, rng):
    a = rng.standard_normal((count,) + ((k, m) if ta else (m, k)), dtype=np.float32)
    b = rng.standard_normal((count,) + ((n, k) if tb else (k, n)), dtype=np.float32)
    return a, b, np.empty((count, m, n), np.float32)


def native_call(ta, tb, m, n, k, count, a, b, c, threads):
    lda, ldb = a.shape[2], b.shape[2]
    return lambda: _sgemm.gemm(ta, tb, m, n, k, a, lda, b, ldb, c, n, False, count,
                               a.shape[1] * lda, b.shape[1] * ldb, m * n, threads)


def blas_call(ta, tb, a, b, c, threads):
    opa = a.transpose(0, 2, 1) if ta else a
    opb = b.transpose(0, 2, 1) if tb else b

    def run():
        with threadpool_limits(threads, user_api="blas"):
            np.matmul(opa, opb, out=c)
    return run


def seconds(call, repeat):
    call()
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--levels", default=None, help="comma-separated levels (default: all runnable)")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    levels = args.levels.split(",") if args.levels else list(getattr(_sgemm, "cpu_levels", lambda: ("native",))())
    thread_counts = [int(t) for t in args.threads.split(",")]
    blas = [(info.get("internal_api"), info.get("version"), info.get("architecture"))
            for info in threadpool_info() if info.get("user_api") == "blas"]
    print(f"CPU: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores usable; "
          f"BLAS: {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    rng = np.random.default_rng(0)
    restore = _sgemm.get_level() if hasattr(_sgemm, "get_level") else None
    for name, ta, tb, m, n, k, count in SHAPES:
        a, b, c = operands(ta, tb, m, n, k, count, rng)
        flops = 2.0 * m * n * k * count
        repeat = max(1, int(3e8 / flops))
        calls = {f"OpenBLAS {t}t": blas_call(ta, tb, a, b, c, t) for t in thread_counts}
        for level in levels:
            for t in thread_counts:
                def call(level=level, inner=native_call(ta, tb, m, n, k, count, a, b, c, t)):
                    if restore is not None:
                        _sgemm.set_level(level)
                    inner()
                calls[f"{level} {t}t"] = call
        samples = {label: [] for label in calls}
        for _ in range(args.rounds):
            for label, call in calls.items():
                samples[label].append(flops / seconds(call, repeat) / 1e9)
        base = statistics.median(samples[f"OpenBLAS {thread_counts[0]}t"])
        print(f"\n{name}: m={m} n={n} k={k} x{count} ({flops / 1e6:.0f} MFLOP)")
        for label, values in samples.items():
            middle = statistics.median(values)
            print(f"  {label:<16} {middle:7.1f} GFLOP/s  (min {min(values):6.1f}, max {max(values):6.1f})"
                  f"  {middle / base:5.2f}x")
    if restore is not None:
        _sgemm.set_level(restore)


if __name__ == "__main__":
    main()
