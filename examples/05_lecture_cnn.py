"""Lecture 004: the lecture's CNN for MNIST, filled in, summarised and trained for a short run.

The lecture leaves ``nn.Sequential()`` empty; with the layers it lists (and ReLU
after each convolution) the PyTorch version reads:

    self.features = nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 14 x 14
        nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
    )
    self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 10))     # 3136 -> 10

Below, the same network in cnnlab (same class names, same state_dict keys), its
summary table, the parameter counts the lecture argues with, and a short training
run with Adam. `cnnlab train --model cnn` trains the same network for real.

Data: MNIST when found in --data-dir, else Fashion-MNIST. Run:
    python examples/05_lecture_cnn.py [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cnnlab.lecture import Batches, acc, load_lecture_data
from cnnlab.models import build_model
from cnnlab.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from cnnlab.nn.module import Sequential
from cnnlab.ops.loss import cross_entropy
from cnnlab.optim import Adam
from cnnlab.models.summary import format_summary, summarize


def lecture_cnn(rng: np.random.Generator) -> Sequential:
    """The lecture's SimpleCNN: features then classifier, flattened into one Sequential."""
    return Sequential(
        Conv2d(1, 32, kernel_size=3, padding=1, rng=rng), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, kernel_size=3, padding=1, rng=rng), ReLU(), MaxPool2d(2),
        Flatten(), Linear(64 * 7 * 7, 10, rng=rng),
    )


def count_parameters(model) -> int:
    return sum(parameter.data.size for parameter in model.parameters())


def show_parameter_counts(model, rng: np.random.Generator) -> None:
    dense = Linear(784, 512, rng=rng)      # the lecture's fully connected hidden layer
    kernel = Conv2d(1, 1, 3, rng=rng)      # one 3x3 kernel on a 1-channel image
    print("parameter counts (lecture 004, section 1):")
    print(f"  dense 784 -> 512: {dense.weight.data.size:,} weights + {dense.bias.data.size} biases")
    print(f"  one 3x3 kernel:   {kernel.weight.data.size} weights + {kernel.bias.data.size} bias, "
          f"whatever the image size (28x28 or 256x256)")
    mlp = Sequential(Flatten(), Linear(784, 512, rng=rng), ReLU(), Linear(512, 10, rng=rng))
    print(f"  the whole lecture CNN: {count_parameters(model):,} parameters; "
          f"an MLP 784-512-10: {count_parameters(mlp):,}")


def train(model, args, X, Y, X_test, Y_test) -> None:
    optimizer = Adam(model.parameters(), lr=args.lr)
    batches = Batches(X, Y, args.batch_size, seed=args.seed)
    started = time.perf_counter()
    log_every = max(1, args.steps // 5)
    for step in range(1, args.steps + 1):
        x, y = batches.next()
        logits = model(x)
        loss, dlogits = cross_entropy(logits, y)
        optimizer.zero_grad()
        model.backward(dlogits)
        optimizer.step()
        if step % log_every == 0 or step == args.steps:
            print(f"  step {step:>4}  loss {loss:.3f}  batch accuracy {acc(logits, y):.3f}")
    seconds = time.perf_counter() - started
    model.eval()
    test_logits = np.concatenate([model(X_test[start:start + 500])
                                  for start in range(0, len(X_test), 500)])
    print(f"test accuracy after {args.steps} steps ({args.steps * args.batch_size} images, "
          f"{seconds:.1f} s): {acc(test_logits, Y_test):.3f} on {len(X_test)} test images")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ or fashion-mnist/")
    parser.add_argument("--quick", action="store_true",
                        default=bool(os.environ.get("CNNLAB_EXAMPLES_QUICK")),
                        help="a few steps on a small slice (also: CNNLAB_EXAMPLES_QUICK=1)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.steps = args.steps or (10 if args.quick else 100)
    rng = np.random.default_rng(args.seed)

    model = lecture_cnn(rng)
    print(model)
    print(format_summary(summarize(model, (1, 28, 28))))
    named = build_model("cnn", np.random.default_rng(args.seed))
    same_shapes = ({k: v.shape for k, v in model.state_dict().items()}
                   == {k: v.shape for k, v in named.state_dict().items()})
    print(f"same layers and state_dict keys as `cnnlab train --model cnn`: {same_shapes}")
    show_parameter_counts(model, rng)

    train_limit, test_limit = (1000, 500) if args.quick else (10000, 2000)
    name, (X, Y, X_test, Y_test) = load_lecture_data(args.data_dir, train_limit=train_limit,
                                                     test_limit=test_limit)
    print(f"\ntraining on {name} ({len(X)} train images), Adam lr {args.lr}, "
          f"batch {args.batch_size}:")
    train(model, args, X, Y, X_test, Y_test)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
