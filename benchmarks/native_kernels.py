"""cnnlab's native kernels at each compiled level, on one 64-image shard of the lecture CNN.

The GEMM against NumPy's OpenBLAS (one and two threads), then the loops, the fused first
conv block and the Winograd transforms against the portable level.

    python benchmarks/native_kernels.py [--rounds 7] [--levels avx2,avx512] [--only gemm|loops]

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
from threadpoolctl import threadpool_info

from cnnlab.backend import _loops, _sgemm, blas, winograd

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
        # cnnlab's limit: ~2 us; threadpoolctl's threadpool_limits scans the libraries at every
        # call (~0.5 ms), which made the small products look 5-30x slower on OpenBLAS
        with blas.limit(threads):
            np.matmul(opa, opb, out=c)
    return run


def seconds(call, repeat):
    call()
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def loops_calls(rng):
    """(name, function of no arguments) for the loops and transforms of one shard; the
    Winograd transforms on one chunk of it, as cnnlab/backend/winograd.py cuts the batch
    (its transformed arrays stay in L2: a whole shard's would time DRAM instead)."""
    batch = 64
    chunk = max(1, min(batch, winograd.CHUNK_BYTES // (16 * 7 * 7 * (32 + 64) * 4)))
    images = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    weight1 = rng.standard_normal((32, 1, 3, 3), dtype=np.float32)
    bias1 = rng.standard_normal(32, dtype=np.float32)
    pooled1 = np.empty((batch, 32, 14, 14), np.float32)
    code1 = np.empty(pooled1.shape, np.uint8)
    dweight1, dbias1 = np.zeros((32, 1, 3, 3)), np.zeros(32)
    x2 = rng.standard_normal((chunk, 32, 14, 14), dtype=np.float32)
    tiles = chunk * 7 * 7
    v = np.empty((16, 32, tiles), np.float32)
    m = rng.standard_normal((16, 64, tiles), dtype=np.float32)
    bias2 = rng.standard_normal(64, dtype=np.float32)
    pooled2 = np.empty((chunk, 64, 7, 7), np.float32)
    code2 = np.empty(pooled2.shape, np.uint8)
    yhat = np.empty((16, 64, tiles), np.float32)
    dbias2 = np.zeros(64)
    dx2 = np.empty_like(x2)
    dv = rng.standard_normal((16, 32, tiles), dtype=np.float32)
    conv1 = rng.standard_normal((batch, 32, 28, 28), dtype=np.float32)
    index = np.empty((batch, 32, 14, 14), np.uint8)
    dconv1 = np.empty_like(conv1)
    mask = np.empty(conv1.shape, bool)
    params = [rng.standard_normal(n, dtype=np.float32) for n in (32 * 9 + 32 + 64 * 288 + 64 + 31370,)] * 4
    return [
        ("conv1+relu+pool forward (fused)",
         lambda: _loops.conv_relu_pool_forward(images, weight1, bias1, pooled1, code1, 1, 1, 30, 30)),
        ("conv1+relu+pool backward (fused)",
         lambda: _loops.conv_relu_pool_backward(images, pooled1, code1, dweight1, dbias1, 1, 1, 30, 30)),
        ("winograd input (conv2)", lambda: _loops.winograd_input(x2, v, 1, 1, 14, 14)),
        ("winograd output+relu+pool", lambda: _loops.winograd_output_relu_pool(m, bias2, pooled2, code2, 14, 14)),
        ("winograd grad output (pooled)",
         lambda: _loops.winograd_grad_output_pooled(pooled2, code2, yhat, dbias2, 14, 14)),
        ("winograd grad input", lambda: _loops.winograd_grad_input(dv, dx2, 1, 1, 14, 14)),
        ("max pool 2x2 forward", lambda: _loops.max_pool_2x2_forward(conv1, pooled1, index)),
        ("max pool 2x2 backward", lambda: _loops.max_pool_2x2_backward(pooled1, index, dconv1)),
        ("relu forward", lambda: _loops.relu_forward(conv1, dconv1, mask)),
        ("adam step (the CNN's 50k weights)",
         lambda: _loops.adam_step(*params, 0.0, 1.0, 0.9, 0.999, 1.0, 1e-8, 1e-3)),
    ]


def bench_loops(levels, rounds):
    rng = np.random.default_rng(1)
    restore = _loops.get_level()
    print("\nloops and transforms, one 64-image shard (the Winograd transforms: one chunk of it), "
          "microseconds per call (ratio to portable)")
    for name, call in loops_calls(rng):
        samples = {level: [] for level in levels}
        for _ in range(rounds):
            for level in levels:
                _loops.set_level(level)
                samples[level].append(seconds(call, 5) * 1e6)
        base = statistics.median(samples["portable"]) if "portable" in samples else None
        cells = []
        for level, values in samples.items():
            middle = statistics.median(values)
            ratio = f" {base / middle:4.2f}x" if base else ""
            cells.append(f"{level} {middle:7.0f} ({min(values):.0f}-{max(values):.0f}){ratio}")
        print(f"  {name:<36} " + "  ".join(cells))
    _loops.set_level(restore)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--levels", default=None, help="comma-separated levels (default: all runnable)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--only", choices=("gemm", "loops"), default=None)
    args = parser.parse_args()
    levels = args.levels.split(",") if args.levels else list(_sgemm.cpu_levels())
    thread_counts = [int(t) for t in args.threads.split(",")]
    blas = [(info.get("internal_api"), info.get("version"), info.get("architecture"))
            for info in threadpool_info() if info.get("user_api") == "blas"]
    print(f"CPU: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores usable; "
          f"BLAS: {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    print(f"load average before: {os.getloadavg()[0]:.1f} (a busy machine slows every column alike)")
    if args.only != "gemm":
        bench_loops(levels, args.rounds)
    if args.only == "loops":
        return
    rng = np.random.default_rng(0)
    restore = _sgemm.get_level()
    for name, ta, tb, m, n, k, count in SHAPES:
        a, b, c = operands(ta, tb, m, n, k, count, rng)
        flops = 2.0 * m * n * k * count
        repeat = max(1, int(3e8 / flops))
        calls = {f"OpenBLAS {t}t": blas_call(ta, tb, a, b, c, t) for t in thread_counts}
        for level in levels:
            for t in thread_counts:
                def call(level=level, inner=native_call(ta, tb, m, n, k, count, a, b, c, t)):
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
    _sgemm.set_level(restore)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
