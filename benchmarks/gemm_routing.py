"""Which GEMM should run each product: cnnlab's at each level against NumPy's OpenBLAS.

The products are the ones the lecture CNN's and MLP's training steps and inference actually
issue at batch 128 (logged by ``cnnlab.backend.gemm.trace`` from a step run as `cnnlab train`
and `cnnlab evaluate` run it: the data-parallel shards of the CNN, the MLP's one shard), with
their class (gemm.product_class). Each is timed on the one thread it runs on inside a shard,
and one that ran outside shards with at least gemm.SPLIT_FLOPS also on every core (what
cnnlab's GEMM gets on an idle machine); OpenBLAS is held to the same count
(cnnlab.backend.blas.limit). Every round times each (product, implementation) once,
interleaved; the table gives microseconds per call, medians with min and max, and
OpenBLAS / cnnlab (> 1: cnnlab faster), plus the route ``gemm.ROUTES`` takes now.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/gemm_routing.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import numpy as np
from native_kernels import native_call, operands, seconds
from threadpoolctl import threadpool_info

from cnnlab.backend import _sgemm, blas, gemm
from cnnlab.backend.parallel import DataParallel
from cnnlab.tools.bench import SETTLE_SECONDS, _batch, _data_parallel, _lecture_model, _settle
from cnnlab.optim import Adam


def issued_products(batch_size: int) -> dict:
    """{(model, step, m, n, k, batch, trans_a, trans_b, kind, outside a shard): calls per step}
    for the two lecture models' training steps and inference (kind: gemm.product_class)."""
    x, y = _batch(batch_size)
    found: dict = {}
    for name in ("cnn", "mlp"):
        model = _lecture_model(name, seed=0)
        parallel = _data_parallel(model, len(os.sched_getaffinity(0)), batch_size)
        optimizer = Adam(model.parameters(), lr=1e-3)
        parallel.forward_backward(x, y)  # first call: workspaces, replicas
        with gemm.trace() as train:
            parallel.forward_backward(x, y)
        optimizer.step()
        model.eval()
        inference = DataParallel(model, parallel.threads)
        with gemm.trace() as infer:
            inference.forward(x)
        for step, products in (("train", train), ("inference", infer)):
            for product in products:
                outside = parallel.threads == 1   # one shard: the step's own thread, no shards
                key = (name, step) + tuple(product[:6]) + (product.kind, outside)
                found[key] = found.get(key, 0) + 1
        parallel.close()
        inference.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--levels", default=None, help="comma-separated levels (default: all runnable)")
    args = parser.parse_args()
    levels = args.levels.split(",") if args.levels else list(_sgemm.cpu_levels())
    cores = len(os.sched_getaffinity(0))
    libraries = [(info.get("internal_api"), info.get("version"), info.get("architecture"))
            for info in threadpool_info() if info.get("user_api") == "blas"]
    print(f"CPU: {platform.processor() or platform.machine()}, {cores} cores usable; BLAS: {libraries}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    print(f"load average before: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")
    products = issued_products(args.batch_size)
    # One row per distinct product and thread count (the same shape may come from several steps).
    rows: dict = {}
    for (model, step, m, n, k, batch, trans_a, trans_b, kind, outside), calls in products.items():
        # outside shards a big product may run on the free cores: all, or one on a busy machine
        split = outside and 2.0 * m * n * k * batch >= gemm.SPLIT_FLOPS
        for count in (1, cores) if split else (1,):
            rows.setdefault((m, n, k, batch, trans_a, trans_b, kind, count), []).append(
                f"{model} {step} x{calls}")
    rng = np.random.default_rng(0)
    restore = _sgemm.get_level()
    print(f"\n{'product (m x n x k, batch, op, class)':<48} {'thr':>3} {'OpenBLAS us':>20}  "
          + "  ".join(f"{level + ' us':>22}" for level in levels) + "   used by")
    for (m, n, k, batch, trans_a, trans_b, kind, threads), users in sorted(rows.items()):
        a, b, c = operands(trans_a, trans_b, m, n, k, batch, rng)
        flops = 2.0 * m * n * k * batch
        repeat = max(1, int(5e7 / flops))
        left = a.transpose(0, 2, 1) if trans_a else a
        right = b.transpose(0, 2, 1) if trans_b else b
        calls = {"blas": lambda left=left, right=right, c=c: np.matmul(left, right, out=c)}
        for level in levels:
            calls[level] = native_call(trans_a, trans_b, m, n, k, batch, a, b, c, threads)
        samples = {label: [] for label in calls}
        for _ in range(args.rounds):
            for label, call in calls.items():
                # set_level costs ~15 us, more than a small product: once per sample
                if label != "blas":
                    _sgemm.set_level(label)
                if threads > 1:
                    # OpenBLAS's idle workers spin ~0.1 s after its call: without the pause
                    # cnnlab's second thread shared its core with one of them
                    _settle(SETTLE_SECONDS)
                with blas.limit(threads):
                    samples[label].append(seconds(call, repeat) * 1e6)
        base = statistics.median(samples["blas"])
        cells = [f"{base:8.0f} ({min(samples['blas']):.0f}-{max(samples['blas']):.0f})"]
        for level in levels:
            middle = statistics.median(samples[level])
            route = gemm.ROUTES[level][kind]
            cells.append(f"{middle:7.0f} ({min(samples[level]):.0f}-{max(samples[level]):.0f}) "
                         f"{base / middle:4.2f}x{'*' if route == 'cnnlab' else ' '}")
        op = f"{'A^T' if trans_a else 'A'}{'B^T' if trans_b else 'B'}"
        label = f"{m} x {n} x {k}" + (f", x{batch}" if batch > 1 else "") + f", {op}, {kind}"
        print(f"{label:<48} {threads:>3} {cells[0]:>20}  " + "  ".join(f"{cell:>22}" for cell in cells[1:])
              + "   " + "; ".join(users))
    _sgemm.set_level(restore)
    print("\nratio: OpenBLAS time / cnnlab time (> 1: cnnlab faster); *: gemm.ROUTES sends this "
          "product class to cnnlab's GEMM at that level (else to OpenBLAS)")
    print(f"load average after: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
