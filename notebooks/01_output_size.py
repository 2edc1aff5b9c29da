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
# # 01 · How big is a convolution's output?
#
# Lecture 004, section 3. A convolution with kernel size $k$, stride $s$, padding $p$ and
# dilation $d$ turns an input of height $H_{in}$ into
#
# $$H_{out} = \left\lfloor \frac{H_{in} + 2p - d(k - 1) - 1}{s} + 1 \right\rfloor$$
#
# (the same for the width). This is PyTorch's formula, and the one cnnlab uses everywhere.

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
import math

from cnnlab.errors import CnnlabError
from cnnlab.ops.conv import conv2d_output_size


def lecture_conv2d_out(h_in, w_in, k=3, s=1, p=0, d=1):
    """The notes' own helper, as written."""
    h_out = math.floor((h_in + 2 * p - d * (k - 1) - 1) / s + 1)
    w_out = math.floor((w_in + 2 * p - d * (k - 1) - 1) / s + 1)
    return h_out, w_out


# %% [markdown]
# The lecture's three examples on a 28x28 MNIST image with a 3x3 kernel, and dilation, which
# spreads the kernel (3x3 with $d = 2$ covers 5x5):

# %%
cases = [("p=0, s=1", {}), ("p=1, s=1", {"padding": 1}), ("p=1, s=2", {"stride": 2, "padding": 1}),
         ("p=0, s=1, d=2", {"dilation": 2}), ("p=2, s=1, d=2", {"padding": 2, "dilation": 2})]
for label, options in cases:
    ours = conv2d_output_size((28, 28), 3, **options)
    notes = lecture_conv2d_out(28, 28, k=3, s=options.get("stride", 1),
                               p=options.get("padding", 0), d=options.get("dilation", 1))
    assert tuple(ours) == notes
    print(f"{label:<14} -> {ours[0]} x {ours[1]}")

# %% [markdown]
# `padding="same"` keeps the size, which only works when the kernel moves one pixel at a time:

# %%
print("padding='same', s=1 ->", conv2d_output_size((28, 28), 3, padding="same"))
try:
    conv2d_output_size((28, 28), 3, stride=2, padding="same")
except CnnlabError as error:
    print("padding='same', s=2 -> error:", error)

# %% [markdown]
# The lecture CNN applies the formula layer by layer: conv k3 p1 keeps 28, pooling 2 halves it,
# so 28 -> 14 -> 7 and the classifier sees $64 \cdot 7 \cdot 7 = 3136$ features.
# `cnnlab summary cnn` prints the same table from the command line.

# %%
from cnnlab.models import build_model
from cnnlab.models.summary import format_summary, summarize
import numpy as np

print(format_summary(summarize(build_model("cnn", np.random.default_rng(0)), (1, 28, 28))))
