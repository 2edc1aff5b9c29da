"""The lecture code's pitfalls, measured: train the notes' MLP with and without each bug.

Every variant trains the notes' 784-500-10 network (truncated-normal init, no biases,
Adam lr 0.001 as in the notes' second run, or --optimizer sgd for the hand-written step)
for the same number of steps from the same initial weights, and changes ONE thing:

- double softmax:   loss = cross_entropy(softmax(out), y) with a cross_entropy that
                    applies softmax itself (the notes' code)
- ReLU on logits:   out = relu(relu(x @ w0) @ w1) (the notes' model)
- contiguous batches: the notes' get_batch, a random contiguous window per step
- CUDA hard-coded:  the notes' GPU() on a machine without CUDA

It prints final loss / accuracy for each, the gradient size for double softmax, sample
coverage for the batches, and the CUDA error. docs/pitfalls.md quotes its output.

Run:  python examples/pitfalls.py [--data-dir DIR] [--steps 1000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

from cnnlab import lecture
from cnnlab.lecture import (GPU, TORCH_INSTALL_HINT, Batches, DoubleSoftmaxWarning, acc,
                            cross_entropy, load_lecture_data, randn_trunc, softmax)

try:
    import torch
except ImportError:  # said in one line by main(), as 03_tiny_network_gradients.py does
    torch = None

LAYER_SIZES = (784, 500, 10)


class WindowBatches:
    """The notes' get_batch: a random contiguous window ``X[r:r+b]``, ``r < N - b``."""

    def __init__(self, X, Y, batch_size: int, seed: int):
        self.X, self.Y, self.batch_size = X, Y, batch_size
        self.rng = np.random.default_rng(seed)

    def next(self):
        start = int(self.rng.integers(len(self.X) - self.batch_size))
        return self.X[start:start + self.batch_size], self.Y[start:start + self.batch_size]


def train(X, Y, X_test, Y_test, args, double_softmax=False, relu_logits=False,
          batching="shuffled") -> dict:
    """Train the notes' MLP with the given bugs switched on; return its final numbers."""
    rng = np.random.default_rng(args.seed)
    w = [GPU(randn_trunc((LAYER_SIZES[i], LAYER_SIZES[i + 1]), rng)) for i in range(2)]

    def model(x):
        out = torch.relu(x @ w[0]) @ w[1]
        return torch.relu(out) if relu_logits else out

    if batching == "shuffled":
        batches = Batches(X, Y, args.batch_size, seed=args.seed)
    else:
        batches = WindowBatches(X, Y, args.batch_size, seed=args.seed)
    optimizer = (torch.optim.Adam(w, lr=args.lr) if args.optimizer == "adam"
                 else torch.optim.SGD(w, lr=args.lr))
    losses, gradient_norms = [], []
    for _ in range(args.steps):
        x, y = batches.next()
        out = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DoubleSoftmaxWarning)  # the bug is on purpose here
            loss = cross_entropy(softmax(out), y) if double_softmax else cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        gradient_norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in w))))
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        test_out = model(X_test)
        # the honest test loss: the network's outputs taken as logits
        test_loss = cross_entropy(test_out, Y_test).item()
        dead = float((test_out == 0).float().mean())
    tail = max(1, args.steps // 10)
    return {"train_loss": float(np.mean(losses[-tail:])), "test_loss": test_loss,
            "test_acc": acc(test_out, Y_test), "grad_first": gradient_norms[0],
            "grad_mean": float(np.mean(gradient_norms)), "zero_outputs": dead}


def window_coverage(num_samples: int, batch_size: int, steps: int, seed: int) -> tuple[float, int]:
    """Fraction of samples the notes' windows touch in ``steps`` steps; times the last is drawn."""
    rng = np.random.default_rng(seed)
    seen = np.zeros(num_samples, dtype=np.int64)
    for _ in range(steps):
        start = int(rng.integers(num_samples - batch_size))
        seen[start:start + batch_size] += 1
    return float(np.mean(seen > 0)), int(seen[-1])


def print_header() -> None:
    print(f"{'variant':<34} {'train loss':>10} {'test loss':>9} {'test acc':>8} "
          f"{'|grad| step 1':>13} {'mean |grad|':>11} {'outputs = 0':>11}")


def print_row(name: str, result: dict) -> None:
    print(f"{name:<34} {result['train_loss']:>10.3f} {result['test_loss']:>9.3f} "
          f"{result['test_acc']:>8.3f} {result['grad_first']:>13.3f} "
          f"{result['grad_mean']:>11.3f} {result['zero_outputs']:>11.1%}", flush=True)


def show_cuda_pitfall() -> None:
    def notes_gpu(data):  # the notes' GPU(), as written
        return torch.tensor(data, requires_grad=True, dtype=torch.float,
                            device=torch.device("cuda"))

    print("\n4. CUDA hard-coded")
    try:
        tensor = notes_gpu(np.zeros(3))
        print(f"   notes' GPU(): worked, tensor on {tensor.device} (this machine has CUDA)")
    except (AssertionError, RuntimeError) as error:
        print(f"   notes' GPU():  {type(error).__name__}: {str(error).splitlines()[0]}")
    tensor = GPU(np.zeros(3))
    print(f"   cnnlab.lecture.GPU(): tensor on {tensor.device}, "
          f"requires_grad={tensor.requires_grad} (device = {lecture.device})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true",
                        default=bool(os.environ.get("CNNLAB_EXAMPLES_QUICK")),
                        help="small slice, few steps (for tests)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--lr", type=float, default=None,
                        help="default 0.001 for adam (the notes' c.h), 0.1 for sgd")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if torch is None:
        print(f"PyTorch is not installed: these pitfalls are in the notes' PyTorch code, so "
              f"there is nothing to measure ({TORCH_INSTALL_HINT})")
        return 0
    args.steps = args.steps or (20 if args.quick else 1000)
    args.lr = args.lr or (0.001 if args.optimizer == "adam" else 0.1)
    limits = (2000, 500) if args.quick else (None, None)
    torch.manual_seed(args.seed)
    name, (X, Y, X_test, Y_test) = load_lecture_data(
        args.data_dir, names=("fashion-mnist", "mnist"), train_limit=limits[0],
        test_limit=limits[1])
    X, X_test = torch.from_numpy(X.reshape(-1, 784)), torch.from_numpy(X_test.reshape(-1, 784))
    Y, Y_test = torch.from_numpy(Y), torch.from_numpy(Y_test)
    print(f"{name}: {len(X)} train / {len(X_test)} test; {args.steps} steps of {args.optimizer} "
          f"(lr {args.lr}), batch {args.batch_size}, seed {args.seed}\n")

    print("1-3. one bug at a time (same initial weights)")
    print_header()
    variants = [
        ("fixed (cnnlab.lecture)", {}),
        ("double softmax", {"double_softmax": True}),
        ("ReLU on the output logits", {"relu_logits": True}),
        ("contiguous windows", {"batching": "window"}),
        ("all three (the notes' code)", {"double_softmax": True, "relu_logits": True,
                                         "batching": "window"}),
    ]
    for label, bugs in variants:
        print_row(label, train(X, Y, X_test, Y_test, args, **bugs))

    print("\n3. contiguous windows: which samples get used")
    epoch_steps = len(X) // args.batch_size
    coverage, last_drawn = window_coverage(len(X), args.batch_size, epoch_steps, args.seed)
    print(f"   in one epoch's worth of steps ({epoch_steps}): windows touch {coverage:.1%} of the "
          f"samples, the last sample {last_drawn} times (it never can: r < N - b); "
          f"shuffled batches touch 100.0%, each once")
    order = torch.from_numpy(np.argsort(Y.numpy(), kind="stable"))
    X_sorted, Y_sorted = X[order], Y[order]
    print("   on data stored sorted by label (as many datasets on disk are):")
    print_header()
    print_row("shuffled, sorted data", train(X_sorted, Y_sorted, X_test, Y_test, args))
    print_row("contiguous windows, sorted data",
              train(X_sorted, Y_sorted, X_test, Y_test, args, batching="window"))
    show_cuda_pitfall()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
