"""Weights shared with PyTorch: state_dict keys and shapes, and safetensors files.

cnnlab's layers have PyTorch's names, so a model's ``state_dict()`` keys and shapes are those of
the same layers in a ``torch.nn.Sequential`` (``"0.weight"`` is the first layer's weight,
``(C_out, C_in, kH, kW)`` for a convolution, ``(out_features, in_features)`` for a linear
layer). This module holds the one rule for comparing a state with a model
(:func:`state_mismatches`, :func:`check_state_fits`) and reads and writes safetensors files,
the format PyTorch users share weights in::

    save_safetensors("cnn.safetensors", model.state_dict(), meta)   # cnnlab export
    state, meta = load_safetensors("cnn.safetensors")               # from PyTorch or cnnlab

A safetensors file is a JSON header (names, dtypes, shapes, byte offsets, and a string-to-string
``__metadata__`` map) followed by raw little-endian bytes: reading one never runs code. cnnlab
puts its checkpoint meta (model spec, input shape, classes, normalization) in ``__metadata__``
under the key ``cnnlab``, so an exported file carries what ``cnnlab evaluate`` needs; a file
saved by PyTorch has no such entry and needs ``--model SPEC``.

The ``safetensors`` package (``pip install 'cnnlab[safetensors]'``) is imported only when a file
is read or written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.utils.formatting import format_shape

SAFETENSORS_SUFFIX = ".safetensors"
META_KEY = "cnnlab"   # the __metadata__ entry holding cnnlab's checkpoint meta as JSON
INSTALL_HINT = "pip install 'cnnlab[safetensors]'"
_HEADER_LIMIT = 100_000_000  # safetensors' own limit on the JSON header


# --------------------------------------------------------------------------- keys and shapes


def state_mismatches(own: dict, state: dict) -> list[str]:
    """Every difference between a model's ``state_dict()`` and a file's state, one phrase each.

    The comparison is :func:`cnnlab.nn.module.state_differences` (the one under
    ``Module.load_state_dict`` too); this lists all of it, in the model's order.

    Returns:
        ``["missing 3.weight", "unexpected fc.weight", "7.weight (10,1568) in file vs
        (10,3136) in model", "0.weight complex64 in file vs float32 in model", ...]``;
        empty when every key is there with its shape and a dtype that casts.
    """
    from cnnlab.nn.module import state_differences

    differences = state_differences(own, state)
    problems = [f"missing {key}" for key in differences.missing]
    problems += [f"unexpected {key}" for key in differences.unexpected]
    problems += [f"{key} {_shape(theirs)} in file vs {_shape(ours)} in model"
                 for key, theirs, ours in differences.shapes]
    problems += [f"{key} {theirs} in file vs {ours} in model"
                 for key, theirs, ours in differences.dtypes]
    return problems


def _shape(shape) -> str:
    return format_shape(shape, ",", brackets=True)


def check_state_fits(model, state: dict, source: str) -> None:
    """Raise one CheckpointError listing every key and shape of ``state`` that ``model`` lacks.

    Args:
        model: the network the state should load into.
        state: key -> array (a checkpoint's ``model/`` arrays, a safetensors file's tensors).
        source: names the file (and spec) in the message.
    """
    problems = state_mismatches(model.state_dict(), state)
    if problems:
        hint = ""
        if any(problem.startswith(("missing", "unexpected")) for problem in problems):
            keys = ", ".join(list(model.state_dict())[:4])
            hint = (f"; the model's keys are those of an nn.Sequential of the same layers "
                    f"({keys}, ...: see 'cnnlab summary SPEC' and docs/export.md)")
            if any(not key.split(".")[0].isdigit() for key in state):
                # named submodules, like the lecture's SimpleCNN(features, classifier)
                hint += ("; for a model built of named parts save torch.nn.Sequential("
                         "*model.features, *model.classifier).state_dict()")
        raise CheckpointError(f"state of {source} does not fit the model "
                              f"({len(problems)} mismatched): {'; '.join(problems)}{hint}")


def cast_to_model(model, state: dict) -> dict[str, np.ndarray]:
    """``state``'s arrays in the dtypes of ``model``'s (a float16 or float64 file loads too)."""
    own = model.state_dict()
    return {key: np.asarray(value).astype(np.asarray(own[key]).dtype, copy=False)
            if key in own else np.asarray(value) for key, value in state.items()}


# --------------------------------------------------------------------------- safetensors files


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a safetensors file (by its suffix; the content is checked on load)."""
    return Path(path).suffix.lower() == SAFETENSORS_SUFFIX


def _safetensors_numpy():
    try:
        from safetensors import numpy as safetensors_numpy
    except ImportError:
        raise CnnlabError(f"reading and writing .safetensors files needs the safetensors "
                          f"package: {INSTALL_HINT}") from None
    return safetensors_numpy


def save_safetensors(path: str | os.PathLike, state: dict, meta: dict | None = None) -> Path:
    """Write ``state`` (key -> array) to ``path`` atomically, ``meta`` as JSON in its metadata.

    The keys and shapes are kept as they are (PyTorch's for a cnnlab model), so
    ``safetensors.torch.load_file(path)`` gives a state_dict ``torch_model.load_state_dict``
    takes.
    """
    from cnnlab.training.checkpoint import _json_default
    from cnnlab.utils.fileio import atomic_write

    safetensors_numpy = _safetensors_numpy()
    # (np.ascontiguousarray would turn the 0-d num_batches_tracked into shape (1,))
    tensors = {key: np.asarray(value, order="C") for key, value in state.items()}
    metadata = {"format": "pt"}  # what transformers and safetensors.torch expect to find
    if meta is not None:
        metadata[META_KEY] = json.dumps(meta, default=_json_default)
    data = safetensors_numpy.save(tensors, metadata=metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as stream:
        stream.write(data)
    return path


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a safetensors file: (key -> NumPy array, cnnlab meta or {}).

    Raises:
        CheckpointError: missing or unreadable file, a pickle (a ``torch.save`` file renamed),
            a header that is not safetensors, a dtype NumPy has no type for (bfloat16), or data
            cut short. The message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such safetensors file")
    _check_safetensors_header(path)
    safetensors_numpy = _safetensors_numpy()
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
        state = safetensors_numpy.load_file(str(path))
    except Exception as error:  # safetensors raises SafetensorError and TypeError alike
        text = " ".join(str(error).split())[:160]
        if "bf16" in text.lower() or "bfloat16" in text.lower():
            raise CheckpointError(f"{path} holds bfloat16 tensors, which NumPy cannot hold: "
                                  "save them as float32 (model.float()) before "
                                  "safetensors.torch.save_file") from None
        raise CheckpointError(f"{path} is not a valid safetensors file ({text}): write it "
                              "again with safetensors.torch.save_file") from None
    return state, _meta_from(metadata, path)


def _check_safetensors_header(path: Path) -> None:
    """A one-line reason for the commonest wrong files, before safetensors sees them."""
    from cnnlab.utils.fileio import read_start

    size, start = read_start(path, 9, CheckpointError)
    if start[:1] == b"\x80" or start.startswith(b"PK"):
        raise CheckpointError(f"{path} is a PyTorch pickle (torch.save), not safetensors: refused "
                              "(cnnlab never unpickles); in PyTorch, save it with "
                              "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
    header_length = int.from_bytes(start[:8], "little") if len(start) >= 8 else -1
    if header_length < 2 or header_length > min(_HEADER_LIMIT, size - 8) or start[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file (no JSON header at its start; "
                              f"{size} bytes): write it with safetensors.torch.save_file")


def _meta_from(metadata: dict, path: Path) -> dict:
    text = metadata.get(META_KEY)
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except ValueError:
        raise CheckpointError(f"{path}: its '{META_KEY}' metadata is not JSON: the file is "
                              "corrupt; export it again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its '{META_KEY}' metadata is not a JSON object: the "
                              "file is corrupt; export it again")
    return meta
