"""The README's Python API against `cnnlab train`'s step, interleaved in one process (issue 13).

One Adam step of the lecture CNN at batch 128, two ways on the same weights and batch:

- train: the data-parallel step `cnnlab train` runs (``DataParallel.forward_backward``);
- api:   the README's snippet, ``logits = model(x)``, ``ops.cross_entropy``,
         ``model.backward(dlogits)``, ``optimizer.step()``.

Both go through the backend's shards (Sequential runs a batch big enough for several cores
over replicas, as the trainer does), so the API's throughput should be within 10% of train's.
Prints the median images/s of each with min and max, the ratio, the kernel level and the BLAS.

    python benchmarks/api_vs_train.py --repeats 15
"""

from __future__ import annotations

import argparse

import numpy as np

from cnnlab import backend, nn, ops, optim
from cnnlab.backend.parallel import DataParallel, threads_for
from cnnlab.tools.bench import busy_note, is_noisy, machine_load, time_interleaved
from cnnlab.backend import threads as thread_policy


def lecture_cnn(seed: int = 0) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 10, rng=rng))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    x = rng.random((args.batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)

    train_model, api_model = lecture_cnn(), lecture_cnn()
    train_optimizer = optim.Adam(train_model.parameters(), lr=1e-3)
    api_optimizer = optim.Adam(api_model.parameters(), lr=1e-3)
    parallel = DataParallel(train_model, threads_for(train_model, (1, 28, 28), args.batch))

    def train_step():
        train_optimizer.zero_grad()
        parallel.forward_backward(x, y)
        train_optimizer.step()

    def api_step():
        api_optimizer.zero_grad()
        logits = api_model(x)
        _, dlogits = ops.cross_entropy(logits, y)
        api_model.backward(dlogits)
        api_optimizer.step()

    start = thread_policy.Sample()
    timings = time_interleaved({"train": train_step, "api": api_step}, args.repeats)
    load = machine_load(start, thread_policy.Sample())
    parallel.close()
    info = backend.info()
    print(f"lecture CNN, Adam step, batch {args.batch}; {info['cpu']}, level {info['level']}, "
          f"BLAS {info['blas'].get('library')} {info['blas'].get('kernel')}, "
          f"{parallel.threads} shards")
    entries = {}
    for name, timing in timings.items():
        entries[name] = timing.as_dict()
        rates = [args.batch / sample for sample in timing.samples]
        print(f"  {name:5s} {args.batch / timing.median:7.0f} img/s  [{min(rates):.0f}-{max(rates):.0f}]")
    ratio = timings["train"].median / timings["api"].median
    print(f"  api / train throughput: {ratio:.2f} (target >= 0.90)")
    note = busy_note({"ops": {"step": entries}, "models": {}, "load": load})
    if note or is_noisy(entries):
        print(note or "warning: samples spread by more than 2x")


if __name__ == "__main__":
    main()
