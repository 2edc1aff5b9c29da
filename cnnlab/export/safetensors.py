"""A model's weights as a safetensors file with PyTorch's keys and shapes.

The file holds ``model.state_dict()`` as it is (``"0.weight"`` (32, 1, 3, 3), ...,
BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked``), so in PyTorch::

    from safetensors.torch import load_file
    torch_model.load_state_dict(load_file("model.safetensors"))

loads it into an ``nn.Sequential`` of the same layers. Its ``__metadata__`` holds cnnlab's
meta (model spec, input shape, classes, normalization) under ``"cnnlab"``, so ``cnnlab
evaluate model.safetensors`` needs no ``--model``.
"""

from __future__ import annotations

from pathlib import Path


def save_model_safetensors(model, meta: dict, path: str | Path):
    """Write ``model``'s state_dict and ``meta`` to ``path``; returns an ExportResult."""
    from cnnlab.export import ExportResult
    from cnnlab.training.interop import save_safetensors

    state = model.state_dict()
    path = save_safetensors(path, state, meta)
    tensors = len(state)
    size = path.stat().st_size
    return ExportResult(path, "safetensors", f"{tensors} tensors with PyTorch's keys "
                        f"({', '.join(list(state)[:3])}, ...), {size / 1e6:.2f} MB")
