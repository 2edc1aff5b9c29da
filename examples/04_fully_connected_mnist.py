"""Lecture 003: a 784-500-10 fully connected network on MNIST, hand-written SGD, then Adam.

The lecture's network, fixed: no ReLU on the output logits, cross_entropy on the
logits (not on softmax(logits)), shuffled batches that cover every sample. Weights
start from the lecture's truncated normal (sigma 0.1, cut at +-2 sigma), with no biases
as in the notes. It logs train and test accuracy (to Weights & Biases with --wandb;
WANDB_MODE=offline works without an account) and saves the weight images as PNG.

By default it runs on cnnlab's NumPy engine; --torch runs the notes' PyTorch code
with cnnlab.lecture's helpers instead (GPU(), randn_trunc, gradient_step, ...).

Data: MNIST when found in --data-dir, else Fashion-MNIST (same sizes), else MNIST is
downloaded. Run:  python examples/04_fully_connected_mnist.py [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from cnnlab.lecture import Batches, acc, load_lecture_data, montage_plot, plot, randn_trunc
from cnnlab.nn.layers import Flatten, Linear, ReLU
from cnnlab.nn.module import Sequential
from cnnlab.ops.loss import cross_entropy
from cnnlab.optim import Adam

LAYER_SIZES = [784, 500, 10]  # the lecture's c.f_n


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ or fashion-mnist/")
    parser.add_argument("--quick", action="store_true",
                        default=bool(os.environ.get("CNNLAB_EXAMPLES_QUICK")),
                        help="a small slice and few steps (also: CNNLAB_EXAMPLES_QUICK=1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per phase (SGD, then Adam)")
    parser.add_argument("--batch-size", type=int, default=100, help="the lecture's c.b")
    parser.add_argument("--sgd-lr", type=float, default=0.05,
                        help="hand-written SGD step size (the lecture's 0.001 needs 100,000 steps)")
    parser.add_argument("--adam-lr", type=float, default=0.001, help="Adam learning rate (c.h)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="lecture-output/04", help="where the PNGs go")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    parser.add_argument("--torch", action="store_true",
                        help="run the notes' PyTorch version with cnnlab.lecture helpers")
    return parser.parse_args()


def load_data(args):
    train_limit, test_limit = (2000, 1000) if args.quick else (20000, 10000)
    name, (X, Y, X_test, Y_test) = load_lecture_data(args.data_dir, train_limit=train_limit,
                                                     test_limit=test_limit)
    print(f"data: {name}, {len(X)} train / {len(X_test)} test images {X.shape[1:]} "
          f"in [{X.min():.0f}, {X.max():.0f}]")
    return X, Y, X_test, Y_test


class Logger:
    """Print the accuracies, and mirror them to W&B when asked."""

    def __init__(self, args):
        self.run = None
        if args.wandb:
            from cnnlab.training.wandb_log import WandbLogger

            out_dir = Path(args.out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            self.run = WandbLogger(vars(args), out_dir, project="Simple Fully Connected MNIST",
                                   name="cnnlab-lecture-003")

    def log(self, phase: str, step: int, total_step: int, acc_train: float,
            acc_test: float) -> None:
        """``step`` counts within the phase; W&B's axis is ``total_step`` over both phases."""
        print(f"  {phase:<4} step {step:>5}  acc_train {acc_train:.3f}  acc_test {acc_test:.3f}")
        if self.run is not None:
            self.run.log({"kind": "step", "step": total_step, "acc_train": acc_train,
                          "acc_test": acc_test})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def train_numpy(args, X, Y, X_test, Y_test, logger: Logger) -> list[np.ndarray]:
    rng = np.random.default_rng(args.seed)
    model = Sequential(Flatten(), Linear(784, 500, bias=False), ReLU(),
                       Linear(500, 10, bias=False))  # logits out: no ReLU here (a lecture bug)
    for layer, (fan_in, fan_out) in zip((model[1], model[3]), zip(LAYER_SIZES, LAYER_SIZES[1:])):
        # the lecture's w[j] is (in, out) for x @ w; cnnlab's Linear stores (out, in)
        layer.weight.data[...] = randn_trunc((fan_in, fan_out), rng).T
    batches = Batches(X, Y, args.batch_size, seed=args.seed)
    test_batches = Batches(X_test, Y_test, 1000, seed=args.seed)
    log_every = max(1, args.steps // 5)

    def train_step(update) -> float:
        x, y = batches.next()
        logits = model(x)
        _, dlogits = cross_entropy(logits, y)
        model.zero_grad()
        model.backward(dlogits)
        update()
        return acc(logits, y)

    def hand_written_sgd_step() -> None:
        for parameter in model.parameters():  # the lecture's gradient_step: w <- w - h * dL/dw
            parameter.data -= np.asarray(args.sgd_lr, parameter.dtype) * parameter.grad

    adam = Adam(model.parameters(), lr=args.adam_lr)
    phases = (("SGD", hand_written_sgd_step), ("Adam", adam.step))
    for phase_index, (phase, update) in enumerate(phases):
        for step in range(1, args.steps + 1):
            acc_train = train_step(update)
            if step % log_every == 0 or step == args.steps:
                x_test, y_test = test_batches.next()
                logger.log(phase, step, phase_index * args.steps + step, acc_train,
                           acc(model(x_test), y_test))
    print(f"final accuracy: train {acc(model(X), Y):.3f}, test {acc(model(X_test), Y_test):.3f}")
    return [model[1].weight.data.T, model[3].weight.data.T]


def train_torch(args, X, Y, X_test, Y_test, logger: Logger) -> list[np.ndarray]:
    import torch

    from cnnlab.lecture import GPU, GPU_data, cross_entropy as lecture_cross_entropy
    from cnnlab.lecture import device, gradient_step

    torch.manual_seed(args.seed)
    print(f"torch on {device}")
    X, X_test = GPU_data(X.reshape(-1, 784)), GPU_data(X_test.reshape(-1, 784))
    Y, Y_test = GPU_data(Y), GPU_data(Y_test)
    rng = np.random.default_rng(args.seed)
    w = [GPU(randn_trunc((LAYER_SIZES[i], LAYER_SIZES[i + 1]), rng)) for i in range(2)]

    def model(x, w):
        return torch.relu(x @ w[0]) @ w[1]  # logits: no ReLU on the output

    batches = Batches(X, Y, args.batch_size, seed=args.seed)
    test_batches = Batches(X_test, Y_test, 1000, seed=args.seed)
    log_every = max(1, args.steps // 5)
    optimizer = torch.optim.Adam(w, lr=args.adam_lr)
    phases = (("SGD", lambda: gradient_step(w, args.sgd_lr)),
              ("Adam", lambda: (optimizer.step(), optimizer.zero_grad())))
    for phase_index, (phase, update) in enumerate(phases):
        for step in range(1, args.steps + 1):
            x, y = batches.next()
            out = model(x, w)
            loss = lecture_cross_entropy(out, y)  # logits in: softmax happens inside
            loss.backward()
            update()
            if step % log_every == 0 or step == args.steps:
                x_test, y_test = test_batches.next()
                logger.log(phase, step, phase_index * args.steps + step, acc(out, y),
                           acc(model(x_test, w), y_test))
    print(f"final accuracy: train {acc(model(X, w), Y):.3f}, "
          f"test {acc(model(X_test, w), Y_test):.3f}")
    return [weight.detach().cpu().numpy() for weight in w]


def save_weight_images(weights: list[np.ndarray], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, weight in enumerate(weights):  # the lecture's plt.imshow(w[i])
        plot(weight, path=out_dir / f"w{index}.png", size_inches=6)
    # Each hidden unit's 784 incoming weights, seen as the 28x28 image it responds to.
    first_units = weights[0][:, :64].T.reshape(64, 28, 28)
    montage_plot(first_units, path=out_dir / "w0_units.png")
    print(f"weight images: {', '.join(sorted(p.name for p in out_dir.glob('*.png')))} in {out_dir}")


def main() -> int:
    args = parse_arguments()
    if args.steps is None:
        args.steps = 60 if args.quick else 600
    X, Y, X_test, Y_test = load_data(args)
    logger = Logger(args)
    train = train_torch if args.torch else train_numpy
    print(f"784-500-10 network, batch {args.batch_size}: {args.steps} steps of hand-written SGD "
          f"(h={args.sgd_lr}), then {args.steps} of Adam (lr={args.adam_lr})")
    weights = train(args, X, Y, X_test, Y_test, logger)
    logger.finish()
    save_weight_images(weights, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
