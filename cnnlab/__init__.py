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

Subpackages: ``ops`` (pure forward/backward functions), ``nn`` (layers with
PyTorch's names and state_dict keys), ``optim`` (SGD, Adam, AdamW, schedules),
``data`` (IDX files, named datasets, batches), ``models``, ``checkpoint``,
``plots`` (matplotlib figures). They load on first use, so that the command
line starts fast; importing cnnlab never imports torch, matplotlib or wandb.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from cnnlab.errors import CnnlabError  # noqa: E402

_SUBMODULES = ("ops", "nn", "optim", "data", "models", "checkpoint", "summary", "evaluation",
               "plots", "report", "train", "lecture", "errors")

__all__ = ["CnnlabError", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    # PEP 562: `cnnlab.nn` imports cnnlab.nn on first access.
    if name in _SUBMODULES:
        return importlib.import_module(f"cnnlab.{name}")
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
