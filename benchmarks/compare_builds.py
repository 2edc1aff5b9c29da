"""Two builds of cnnlab side by side: the lecture models' training step and inference, alternating.

    python benchmarks/compare_builds.py OLD_CHECKOUT NEW_CHECKOUT [--level avx2] [--rounds 4]

Each checkout needs its native code built in place (``python setup.py build_ext --inplace``).
A round runs one short process per checkout, one after the other, so a machine whose speed
wanders slows both alike; each process times 7 blocks of 10 training steps (``DataParallel``
+ Adam, batch 128, as ``cnnlab train`` runs them), then 7 of 10 inference batches, and
reports the medians. The table gives, per model, the median with min and max over the
rounds and the ratio new / old. Both checkouts need cnnlab.tools.bench with its helpers
(_batch, _lecture_model, _data_parallel, _cnnlab_train_step), which build the models, shards
and steps. Run it before landing a change to the native code: a whole step shows what
per-kernel timings (benchmarks/native_kernels.py) can miss. Rebuild both checkouts first; a
stale in-place build once made a checkout's AVX2 step look 35% slower than the same source
freshly built.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

# Runs inside each checkout's own process (its cnnlab first on sys.path).
STEP_TIMER = r"""
import os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from cnnlab.optim import Adam
from cnnlab.tools.bench import _batch, _cnnlab_train_step, _data_parallel, _lecture_model
x, y = _batch(128)
def median_rate(function):
    for _ in range(5):
        function()
    blocks = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(10):
            function()
        blocks.append((time.perf_counter() - start) / 10)
    return 128 / statistics.median(blocks)
for name in sys.argv[2].split(","):
    model = _lecture_model(name, seed=0)
    parallel = _data_parallel(model, os.cpu_count() or 1, 128)  # the shards cnnlab train uses
    print(name, "step", median_rate(_cnnlab_train_step(parallel, Adam(model.parameters(), lr=1e-3), x, y)))
    model.eval()
    print(name, "inference", median_rate(lambda: parallel.forward(x)))
    parallel.close()
"""


def run_once(checkout: str, models: str, level: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if level:
        env["CNNLAB_KERNELS"] = level
    output = subprocess.run([sys.executable, "-c", STEP_TIMER, os.path.abspath(checkout), models],
                            env=env, capture_output=True, text=True, check=True).stdout
    return {f"{name} {kind}": float(rate)
            for name, kind, rate in (line.split() for line in output.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--level", help="CNNLAB_KERNELS for both (default: each build's best)")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    rates: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for _ in range(args.rounds):
        for side in ("old", "new"):
            for name, rate in run_once(getattr(args, side), args.models, args.level).items():
                rates[side].setdefault(name, []).append(rate)
    print(f"batch 128, img/s over {args.rounds} alternating rounds "
          f"(level {args.level or 'best'}): median [min-max]")
    for name in rates["old"]:
        old, new = rates["old"][name], rates["new"][name]
        print(f"{name:14s} old {statistics.median(old):8,.0f} [{min(old):,.0f}-{max(old):,.0f}]   "
              f"new {statistics.median(new):8,.0f} [{min(new):,.0f}-{max(new):,.0f}]   "
              f"new/old {statistics.median(new) / statistics.median(old):.2f}")


if __name__ == "__main__":
    main()
