"""What --augment costs: each augmentation of a batch against one training step of the
lecture CNN, side by side in one run (the issue's target: under 10% of the step).

    python benchmarks/augment.py [--batch-size 128] [--repeats 30] [--json out.json]

Times, in alternating blocks (cnnlab.tools.bench.time_interleaved): the lecture CNN's training step
on a (128, 1, 28, 28) batch, split over threads as `cnnlab train` does; and the augmentation
of the same batch as uint8 (what the batch loader does before converting it to float32), for
shift:2, flip, rotate:10 and all three. Reports medians with min and max, the ratio to the
step, the CPU, the kernels and BLAS, and whether the machine was busy (load average).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

AUGMENTATIONS = ("shift:2", "flip", "rotate:10", "shift:2,flip,rotate:10")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    from cnnlab.tools import bench
    from cnnlab.data.augment import parse_augment
    from cnnlab.optim import Adam

    load_before = os.getloadavg()[0]
    model = bench._lecture_model("cnn", 0)
    parallel = bench._data_parallel(model, args.threads, args.batch_size)
    optimizer = Adam(model.parameters(), lr=1e-3)
    x, y = bench._batch(args.batch_size)
    pixels = np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)
    functions = {"cnn train step": bench._cnnlab_train_step(parallel, optimizer, x, y)}
    for spec in AUGMENTATIONS:
        augment = parse_augment(spec)
        draws = iter(range(10**9))
        functions[f"augment {spec}"] = (
            lambda augment=augment, draws=draws: augment(pixels, np.random.default_rng([0, next(draws)])))
    with parallel.hold_blas():
        timings = bench.time_interleaved(functions, args.repeats)
    parallel.close()
    load_after = os.getloadavg()[0]

    step = timings["cnn train step"].median
    env = bench.environment()
    cores = os.cpu_count() or 1
    busy = max(load_before, load_after) > 0.5 * cores
    blas = env["blas"]
    print(f"cpu: {env['cpu']}, {cores} cores; kernel level: {env['backend']['level']}; BLAS: "
          f"{blas.get('library')} {blas.get('library_version')}, kernel {blas.get('kernel')}")
    print(f"load average {load_before:.2f} before, {load_after:.2f} after"
          + ("  (the machine was BUSY: other processes shared the cores)" if busy else ""))
    print(f"batch {args.batch_size} x 1 x 28 x 28, {args.repeats} samples each; ratio = "
          "median / the step's median")
    print(f"{'':<32}{'median ms':>10}{'min':>8}{'max':>8}{'of a step':>11}")
    results = {}
    for name, timing in timings.items():
        ratio = timing.median / step
        results[name] = dict(timing.as_dict(), ratio_to_step=ratio)
        print(f"{name:<32}{timing.median * 1e3:>10.2f}{min(timing.samples) * 1e3:>8.2f}"
              f"{max(timing.samples) * 1e3:>8.2f}{ratio:>10.1%}")
    if args.json:
        from cnnlab.utils.fileio import write_json

        write_json(args.json, {"environment": env, "busy": busy, "results": results,
                               "load_average": [load_before, load_after]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
