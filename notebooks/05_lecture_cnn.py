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
# # 05 · The lecture CNN: train it, look inside, take it to PyTorch and ONNX
#
# Lecture 004 leaves `nn.Sequential()` empty. With the layers it lists (and a ReLU after each
# convolution) the network is Conv(1->32, k3, p1) -> MaxPool 2 -> Conv(32->64, k3, p1) ->
# MaxPool 2 -> Flatten -> Linear(3136 -> 10): `cnnlab train --model cnn`.

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

# %%
import numpy as np

from cnnlab.models import build_model
from cnnlab.models.summary import format_summary, summarize

model = build_model("cnn", np.random.default_rng(0))
print(model)
print(format_summary(summarize(model, (1, 28, 28))))

# %% [markdown]
# ## Train it
#
# The Python form of `cnnlab train`: the same run folder (config, metrics, checkpoint), and
# the progress bar redraws in place in the notebook.

# %%
from cnnlab.training.config import resolve_config
from cnnlab.lecture import load_lecture_data
from cnnlab.training.trainer import print_summary, train

dataset, _ = load_lecture_data(train_limit=1, test_limit=1)   # MNIST, or Fashion-MNIST offline
config = resolve_config(overrides={
    "model": "cnn", "dataset": dataset, "epochs": 2 if QUICK else 3,
    "limit_train": 3000 if QUICK else 20000, "limit_test": 1000 if QUICK else 10000,
    "report": False})
result = train(config, runs_root="runs")
print_summary(result)
run = result.run_dir

# %% [markdown]
# ## Look inside
#
# `cnnlab.viz.plots` draws every figure of the report as a matplotlib figure; a cell ending in one
# shows it.

# %%
from cnnlab.viz import plots

curves = plots.Run(run)
plots.learning_curves(curves.metrics)

# %%
plots.filters(curves.model)

# %%
evaluation = curves.evaluate(limit=1000)
plots.confusion_matrix(plots.confusion_counts(evaluation.labels, evaluation.predictions, 10),
                       curves.classes)

# %% [markdown]
# ## Take it elsewhere
#
# `cnnlab export RUN --format safetensors` writes the weights with PyTorch's state_dict keys;
# `--format onnx` writes the network as an ONNX graph (onnxruntime, Netron). The same in
# Python:

# %%
from cnnlab.export import export

for format in ("safetensors", "onnx"):
    try:
        print(export(run, format).description)
    except Exception as error:   # the optional package is not installed
        print(f"{format}: {error}")

# %% [markdown]
# The safetensors file loads into the lecture's PyTorch model, an `nn.Sequential` of the same
# layers, which then gives the same logits:

# %%
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("safetensors") is None:
    print("PyTorch or safetensors is not installed: pip install torch safetensors")
else:
    import torch
    from safetensors.torch import load_file

    lecture_cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(3136, 10))
    lecture_cnn.load_state_dict(load_file(run / "model.safetensors"))
    x, _ = curves.test_inputs(range(100))
    with torch.no_grad():
        theirs = lecture_cnn(torch.from_numpy(x)).numpy()
    ours = curves.model(x)
    print("largest difference of the logits, PyTorch vs cnnlab:",
          float(np.abs(theirs - ours).max() / np.abs(ours).max()))

# %% [markdown]
# And back: weights trained in PyTorch come into cnnlab from a safetensors file, to evaluate,
# report, predict or fine-tune:
#
# ```
# cnnlab evaluate lecture-cnn.safetensors --model cnn --dataset mnist
# cnnlab train --model cnn --init-from lecture-cnn.safetensors
# ```
