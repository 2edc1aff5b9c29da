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
# # 04 · A fully connected network on MNIST: hand-written SGD, then Adam
#
# Lecture 003's 784-500-10 network, with the notes' helpers from `cnnlab.lecture` (change the
# notes' `from mpcr import *` to `from cnnlab.lecture import *`). Fixed compared with the
# notes: no ReLU on the output logits, `cross_entropy` on the logits, shuffled batches that
# cover every sample, and `GPU()` puts tensors on a GPU when there is one and on the CPU otherwise.

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

QUICK = os.environ.get("CNNLAB_EXAMPLES_QUICK") == "1"   # CI runs every notebook on a slice
STEPS = 40 if QUICK else 500

# %% [markdown]
# ## The NumPy version: cnnlab's layers

# %%
import numpy as np

from cnnlab.lecture import Batches, acc, load_lecture_data, montage_plot, randn_trunc
from cnnlab.nn.layers import Flatten, Linear, ReLU
from cnnlab.nn.module import Sequential
from cnnlab.ops.loss import cross_entropy
from cnnlab.optim import Adam

name, (X, Y, X_test, Y_test) = load_lecture_data(train_limit=2000 if QUICK else 20000,
                                                 test_limit=1000 if QUICK else 10000)
print(f"{name}: {len(X)} train / {len(X_test)} test images {X.shape[1:]}")
rng = np.random.default_rng(0)
model = Sequential(Flatten(), Linear(784, 500, bias=False), ReLU(), Linear(500, 10, bias=False))
for layer, shape in ((model[1], (784, 500)), (model[3], (500, 10))):
    layer.weight.data[...] = randn_trunc(shape, rng).T   # the notes' w is (in, out) for x @ w
batches = Batches(X, Y, batch_size=100, seed=0)


def train(update, steps):
    for step in range(1, steps + 1):
        x, y = batches.next()
        logits = model(x)
        _, dlogits = cross_entropy(logits, y)
        model.zero_grad()
        model.backward(dlogits)
        update()
    return acc(model(X_test), Y_test)


def sgd_step(h=0.05):
    for parameter in model.parameters():   # the notes' gradient_step: w <- w - h dL/dw
        parameter.data -= np.float32(h) * parameter.grad


print("test accuracy after hand-written SGD:", round(train(sgd_step, STEPS), 3))
print("test accuracy after Adam as well:    ", round(train(Adam(model.parameters(), lr=1e-3).step, STEPS), 3))

# %% [markdown]
# Each hidden unit's 784 incoming weights, seen as the 28x28 image it responds to:

# %%
montage_plot(model[1].weight.data[:64].reshape(64, 28, 28))

# %% [markdown]
# ## The notes' PyTorch code, with `cnnlab.lecture`
#
# `from cnnlab.lecture import *` gives `torch`, `np`, `plt`, `device` and the notes'
# helpers. `device` is CUDA (or Apple's MPS) when there is one, the CPU otherwise.

# %%
if importlib.util.find_spec("torch") is None:
    print("PyTorch is not installed (pip install torch): skipping the notes' PyTorch version")
else:
    from cnnlab.lecture import *  # noqa: F403 - the notes' own first line, fixed

    print("device:", device)
    Xt, Xt_test = GPU_data(X.reshape(-1, 784)), GPU_data(X_test.reshape(-1, 784))
    Yt, Yt_test = GPU_data(Y), GPU_data(Y_test)
    w = [GPU(randn_trunc((784, 500), 0)), GPU(randn_trunc((500, 10), 1))]
    optimizer = torch.optim.Adam(w, lr=1e-3)
    torch_batches = Batches(Xt, Yt, batch_size=100, seed=0)
    for step in range(STEPS):
        x, y = torch_batches.next()
        loss = cross_entropy(torch.relu(x @ w[0]) @ w[1], y)   # logits in: no softmax first
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print("test accuracy (PyTorch):", round(acc(torch.relu(Xt_test @ w[0]) @ w[1], Yt_test), 3))
