"""cnnlab: the math of convolutional networks in NumPy, verified against PyTorch.

    import numpy as np
    from cnnlab import nn, ops, optim

    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 14 * 14, 10, rng=rng))
    logits = model(images)                       # images: (N, 1, 28, 28) float32
    loss, dlogits = ops.cross_entropy(logits, labels)
    model.backward(dlogits)
    optim.Adam(model.parameters()).step()

Subpackages (docs/architecture.md): ``ops`` (the lecture math: pure forward/backward
functions), ``backend`` (the speed machinery behind them), ``nn`` (layers with PyTorch's names
and state_dict keys), ``optim`` (SGD, Adam, AdamW, schedules), ``data`` (IDX files, named
datasets, image folders, batches), ``models`` (model specs, summaries), ``training`` (the
trainer, checkpoints, evaluation, run folders), ``viz`` (figures, the report, the explorer),
``export``, ``torch_backend``, ``tools`` (verify, bench), ``cli``. They load on first use, so
that the command line starts fast; importing cnnlab never imports torch, matplotlib or wandb.
The module paths of the flat 0.1 layout (``cnnlab.checkpoint``, ``cnnlab.plots``, ...) still
import the moved modules (cnnlab/_aliases.py).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from cnnlab import _aliases  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402

_aliases.install()

_SUBMODULES = ("ops", "backend", "nn", "optim", "data", "models", "training", "viz", "export",
               "tools", "lecture", "errors",
               # 0.1 paths of moved modules (cnnlab/_aliases.py)
               "checkpoint", "summary", "evaluation", "plots", "report", "train")

__all__ = ["CnnlabError", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    # PEP 562: `cnnlab.nn` imports cnnlab.nn on first access.
    if name in _SUBMODULES:
        return importlib.import_module(f"cnnlab.{name}")
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
