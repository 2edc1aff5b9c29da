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
# # 03 · The tiny network's backward pass, checked against PyTorch autograd
#
# Lecture 002's network on one 4x4 input:
# Conv(1->2, k3, p1) -> ReLU -> MaxPool 2 -> Flatten -> Linear(8->2), MSE loss against [[1, 0]].
# Each cnnlab layer's `backward` takes dL/d(output) and returns dL/d(input), adding its
# weight gradients on the way: bias, the sum of dY; weight, X correlated with dY; input, the full
# convolution of dY with the kernel turned 180 degrees; ReLU, a mask; max pool, routed to the max.

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
import numpy as np

from cnnlab.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from cnnlab.ops.loss import mse_loss

rng = np.random.default_rng(0)
layers = [Conv2d(1, 2, kernel_size=3, padding=1, rng=rng, dtype=np.float64), ReLU(),
          MaxPool2d(2), Flatten(), Linear(8, 2, rng=rng, dtype=np.float64)]
image = rng.standard_normal((1, 1, 4, 4))
target = np.array([[1.0, 0.0]])

activation = image
for layer in layers:                      # forward
    activation = layer(activation)
loss, upstream = mse_loss(activation, target)
for layer in reversed(layers):            # backward: the chain rule, last layer first
    upstream = layer.backward(upstream)
np.set_printoptions(precision=4, suppress=True)
print("output", activation, "loss", round(float(loss), 6))
print("dL/d(conv weight), first kernel:\n", layers[0].weight.grad[0, 0])
print("dL/d(input):\n", upstream[0, 0])

# %% [markdown]
# The lecture's PyTorch version with the same weights (skipped where PyTorch is not installed:
# `pip install torch`):

# %%
if importlib.util.find_spec("torch") is None:
    print("PyTorch is not installed: skipping the comparison")
else:
    import torch

    conv, fc = torch.nn.Conv2d(1, 2, 3, padding=1).double(), torch.nn.Linear(8, 2).double()
    with torch.no_grad():
        for twin, layer in ((conv, layers[0]), (fc, layers[4])):
            twin.weight.copy_(torch.from_numpy(layer.weight.data))
            twin.bias.copy_(torch.from_numpy(layer.bias.data))
    x = torch.from_numpy(image.copy()).requires_grad_(True)
    out = fc(torch.nn.functional.max_pool2d(torch.relu(conv(x)), 2).flatten(1))
    torch.nn.functional.mse_loss(out, torch.from_numpy(target)).backward()
    differences = {"conv weight": np.abs(conv.weight.grad.numpy() - layers[0].weight.grad).max(),
                   "conv bias": np.abs(conv.bias.grad.numpy() - layers[0].bias.grad).max(),
                   "fc weight": np.abs(fc.weight.grad.numpy() - layers[4].weight.grad).max(),
                   "input": np.abs(x.grad.numpy() - upstream).max()}
    for name, difference in differences.items():
        print(f"max |cnnlab - torch| {name:<12} {difference:.1e}")
    assert max(differences.values()) < 1e-10

# %% [markdown]
# `cnnlab verify` runs this check for every op, against finite differences and PyTorch.
