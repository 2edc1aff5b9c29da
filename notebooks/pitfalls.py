# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The lecture code's pitfalls, measured
#
# The notes' 784-500-10 network trained with and without each of their bugs, from the same
# initial weights, changing one thing at a time (`docs/pitfalls.md` has the full-size numbers):
#
# - **double softmax**: `cross_entropy(softmax(out), y)` with a `cross_entropy` that applies
#   softmax itself;
# - **ReLU on the logits**: `out = relu(relu(x @ w0) @ w1)`;
# - **contiguous batches**: the notes' `get_batch`, a random contiguous window each step;
# - **CUDA hard-coded**: the notes' `GPU()` on a machine without CUDA.

# %% [markdown]
# **Setup.** The next cell installs cnnlab into this notebook's kernel when it is missing: from
# this repository when the notebook sits in a clone of it (`pip install -e '..[plot]'`),
# otherwise `pip install 'cnnlab[plot]'`. In a hosted notebook service, run it first; everything
# else runs on the CPU (a GPU is used where the cell says so and there is one).

# %%
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("cnnlab") is None:
    clone = next((folder for folder in (Path.cwd(), *Path.cwd().parents)
                  if (folder / "pyproject.toml").is_file() and (folder / "cnnlab").is_dir()), None)
    target = ["-e", f"{clone}[plot]"] if clone else ["cnnlab[plot]"]
    print("cnnlab is not installed in this kernel; installing it: pip install", *target)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *target])
    importlib.invalidate_caches()
print("cnnlab", importlib.import_module("cnnlab").__version__)

# %%
import os
import warnings

import numpy as np

QUICK = os.environ.get("CNNLAB_EXAMPLES_QUICK") == "1"   # CI runs every notebook on a slice
STEPS = 60 if QUICK else 1000

if importlib.util.find_spec("torch") is None:
    raise SystemExit("this notebook runs the notes' PyTorch code: pip install torch")
from cnnlab.lecture import *  # noqa: F403 - the notes' first line, fixed

name, (X, Y, X_test, Y_test) = load_lecture_data(names=("fashion-mnist", "mnist"),
                                                 train_limit=5000 if QUICK else None,
                                                 test_limit=1000 if QUICK else None)
X, X_test = torch.from_numpy(X.reshape(-1, 784)), torch.from_numpy(X_test.reshape(-1, 784))
Y, Y_test = torch.from_numpy(Y), torch.from_numpy(Y_test)
print(f"{name}: {len(X)} train / {len(X_test)} test, {STEPS} Adam steps, batch 100, on {device}")


class WindowBatches:
    """The notes' get_batch: a random contiguous window X[r:r+b], r < N - b."""

    def __init__(self, X, Y, batch_size, seed):
        self.X, self.Y, self.batch_size = X, Y, batch_size
        self.rng = np.random.default_rng(seed)

    def next(self):
        start = int(self.rng.integers(len(self.X) - self.batch_size))
        return self.X[start:start + self.batch_size], self.Y[start:start + self.batch_size]


def run(double_softmax=False, relu_logits=False, windows=False):
    rng = np.random.default_rng(0)
    w = [GPU(randn_trunc((784, 500), rng)), GPU(randn_trunc((500, 10), rng))]
    model = lambda x: (torch.relu if relu_logits else (lambda out: out))(torch.relu(x @ w[0]) @ w[1])
    batches = (WindowBatches if windows else Batches)(GPU_data(X), GPU_data(Y), 100, seed=0)
    optimizer = torch.optim.Adam(w, lr=1e-3)
    for _ in range(STEPS):
        x, y = batches.next()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DoubleSoftmaxWarning)   # the bug is on purpose
            out = model(x)
            loss = cross_entropy(softmax(out), y) if double_softmax else cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return acc(model(GPU_data(X_test)), GPU_data(Y_test))


variants = {"fixed (cnnlab.lecture)": {}, "double softmax": {"double_softmax": True},
            "ReLU on the logits": {"relu_logits": True}, "contiguous windows": {"windows": True}}
for label, bugs in variants.items():
    print(f"{label:<24} test accuracy {run(**bugs):.3f}")

# %% [markdown]
# The notes' `GPU()` asks for CUDA whatever the machine has; `cnnlab.lecture.GPU` uses the
# best device there is:

# %%
try:
    torch.tensor(np.zeros(3), device=torch.device("cuda"))
    print("the notes' GPU(): worked (this machine has CUDA)")
except (AssertionError, RuntimeError) as error:
    print("the notes' GPU():", type(error).__name__, str(error).splitlines()[0])
print("cnnlab.lecture.GPU():", GPU(np.zeros(3)).device)
