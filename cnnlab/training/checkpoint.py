"""Checkpoints: one ``.npz`` file with the model, the optimizer, the last gradients and meta.

Keys (docs/architecture.md)::

    model/<state_dict key>     parameters and buffers, PyTorch's names ("0.weight", ...)
    optim/state/<i>/<name>     optimizer state per parameter index (ints as 0-d arrays)
    optim/param_groups/<g>/<name>
    optim/layout               uint8 JSON: which leaves were Python scalars, tuples, lists, None
    grad/<param name>          the gradient of each parameter after the last step
    extra/<name>               any additional arrays
    meta                       uint8 array holding UTF-8 JSON (format, version, model spec, ...)

Nothing is pickled: saving refuses object arrays and loading uses ``allow_pickle=False``
after checking every member's header, so a hostile file can neither run code nor make us
allocate more memory than its size justifies. Every problem is a one-line
:class:`CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.utils.fileio import atomic_write, read_start
# the one comparison of a state with a model, for checkpoints and safetensors files alike
from cnnlab.training.interop import cast_to_model, check_state_fits  # noqa: F401 (check_state_fits re-exported)

FORMAT = "cnnlab-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
_SECTIONS = ("model/", "optim/", "grad/", "extra/")
# a stored (uncompressed) member cannot claim more bytes than the file has; a deflated one at
# most ~1032 times its compressed size
_MAX_DEFLATE_RATIO = 1100


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        model_state: state_dict key -> array (load with ``model.load_state_dict``).
        optimizer_state: the optimizer's ``state_dict()`` as saved, or None.
        meta: the JSON meta dict (format, version, model, input_shape, classes, ...).
        extra: name -> array given as ``extra`` when saving.
        grads: parameter name -> gradient of the last step.
        path: the file that was read.
    """

    model_state: dict
    optimizer_state: dict | None
    meta: dict
    extra: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    path: str = ""


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder's ``checkpoint.npz``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / CHECKPOINT_NAME
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without {CHECKPOINT_NAME}: give a run "
                                  "folder that finished at least one epoch, or a .npz file")
        return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    return path


# saving

def save_checkpoint(path: str | os.PathLike, model, optimizer=None, meta: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``model`` (and optionally ``optimizer``, ``meta``, ``extra``) to ``path`` atomically.

    Args:
        path: the ``.npz`` file, or an existing run folder (writes ``checkpoint.npz`` in it).
        model: the network; its ``state_dict()`` and each parameter's ``.grad`` are saved.
        optimizer: anything with ``state_dict()`` (SGD, Adam, AdamW), or None.
        meta: JSON-able dict; ``format`` and ``version`` are filled in, and ``model``,
            ``input_shape``, ``num_classes`` from the model's attributes when missing.
        extra: name -> array, saved as ``extra/<name>``.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    arrays = {}
    for key, value in model.state_dict().items():
        arrays[f"model/{key}"] = np.asarray(value)
    for name, parameter in model.named_parameters():
        if getattr(parameter, "grad", None) is not None:
            arrays[f"grad/{name}"] = np.asarray(parameter.grad)
    if optimizer is not None:
        arrays.update(flatten_optimizer_state(optimizer.state_dict()))
    for name, value in (extra or {}).items():
        arrays[f"extra/{name}"] = np.asarray(value)
    arrays["meta"] = _encode_json(_complete_meta(model, meta), "meta")
    for key, array in arrays.items():
        if array.dtype.hasobject:
            raise CheckpointError(f"cannot save '{key}': object arrays would need pickle; "
                                  "convert it to a numeric array")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as stream:
        np.savez(stream, **arrays)
    return path


def _complete_meta(model, meta: dict | None) -> dict:
    meta = dict(meta or {})
    meta["format"] = FORMAT
    meta.setdefault("version", VERSION)
    for key, attribute in (("model", "spec"), ("input_shape", "input_shape"),
                           ("num_classes", "num_classes")):
        value = getattr(model, attribute, None)
        if key not in meta and value is not None:
            meta[key] = list(value) if isinstance(value, tuple) else value
    return meta


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode_json(data, what: str) -> np.ndarray:
    try:
        text = json.dumps(data, default=_json_default)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"cannot save {what}: {error}") from None
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def flatten_optimizer_state(state: dict) -> dict[str, np.ndarray]:
    """``optimizer.state_dict()`` -> ``optim/...`` arrays plus ``optim/layout``.

    Arrays are kept; Python ints, floats and bools become 0-d arrays; tuples and lists of
    numbers 1-d arrays; None is only recorded in the layout. The layout remembers the Python
    type of every leaf so :func:`unflatten_optimizer_state` gives back an equal state_dict.
    """
    arrays, layout = {}, {}

    def add(key: str, value) -> None:
        if value is None:
            layout[key] = "none"
            return
        if isinstance(value, np.ndarray):
            arrays[f"optim/{key}"] = value
            return
        if isinstance(value, (bool, np.bool_)):
            kind = "bool"
        elif isinstance(value, (int, np.integer)):
            kind = "int"
        elif isinstance(value, (float, np.floating)):
            kind = "float"
        elif isinstance(value, str):
            kind = "str"
        elif isinstance(value, (tuple, list)):
            kind = "tuple" if isinstance(value, tuple) else "list"
        else:
            raise CheckpointError(f"cannot save optimizer state '{key}' of type "
                                  f"{type(value).__name__}")
        layout[key] = kind
        if kind == "str":
            arrays[f"optim/{key}"] = np.frombuffer(value.encode("utf-8"), dtype=np.uint8).copy()
        else:
            arrays[f"optim/{key}"] = np.asarray(value)

    for index, parameter_state in state.get("state", {}).items():
        for name, value in parameter_state.items():
            add(f"state/{int(index)}/{name}", value)
    for group_index, group in enumerate(state.get("param_groups", [])):
        layout[f"param_groups/{group_index}"] = "group"
        for name, value in group.items():
            add(f"param_groups/{group_index}/{name}", value)
    arrays["optim/layout"] = _encode_json(layout, "optimizer layout")
    return arrays


def unflatten_optimizer_state(arrays: dict[str, np.ndarray]) -> dict:
    """The inverse of :func:`flatten_optimizer_state` (``arrays`` without the ``optim/`` prefix)."""
    arrays = dict(arrays)
    layout = _decode_json(arrays.pop("layout"), "optim/layout") if "layout" in arrays else {}
    if not isinstance(layout, dict):
        raise CheckpointError("optim/layout is not a JSON object: the file is corrupt")
    state: dict = {"state": {}, "param_groups": []}
    groups: dict[int, dict] = {}
    # the layout keeps the saved order; arrays without a layout entry come after, sorted
    for key in list(layout) + sorted(set(arrays) - set(layout), key=_natural_key):
        kind = layout.get(key, "array")
        parts = key.split("/")
        if kind == "group" and len(parts) == 2 and parts[0] == "param_groups":
            groups.setdefault(_index(parts[1], key), {})
            continue
        if len(parts) != 3 or parts[0] not in ("state", "param_groups"):
            raise CheckpointError(f"unexpected optimizer key 'optim/{key}': the file is corrupt")
        value = None if kind == "none" else _leaf(arrays.get(key), kind, key)
        if parts[0] == "state":
            state["state"].setdefault(_index(parts[1], key), {})[parts[2]] = value
        else:
            groups.setdefault(_index(parts[1], key), {})[parts[2]] = value
    state["param_groups"] = [groups[index] for index in sorted(groups)]
    return state


def _natural_key(key: str):
    return [int(part) if part.isdigit() else part for part in key.split("/")]


def _index(text: str, key: str) -> int:
    if not text.isdigit():
        raise CheckpointError(f"optimizer key 'optim/{key}' has a bad index: the file is corrupt")
    return int(text)


def _leaf(array, kind: str, key: str):
    if array is None:
        raise CheckpointError(f"optimizer value 'optim/{key}' is missing: the file is corrupt")
    try:
        if kind == "array":
            return array
        if kind == "str":
            return array.astype(np.uint8).tobytes().decode("utf-8")
        if kind in ("tuple", "list"):
            items = [item.item() if isinstance(item, np.generic) else item
                     for item in array.tolist()]
            return tuple(items) if kind == "tuple" else items
        converter = {"int": int, "float": float, "bool": bool}[kind]
        return converter(array.item())
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, AttributeError):
        raise CheckpointError(f"optimizer value 'optim/{key}' does not match its recorded "
                              f"type {kind!r}: the file is corrupt") from None


# loading

def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint (a ``.npz`` file or a run folder).

    Raises:
        CheckpointError: missing file, not a zip/npz, truncated or corrupt, pickled or
            object content (refused, never unpickled), no ``meta``, wrong format tag or
            version, bad JSON. The message names the file and what to do.
    """
    path = resolve_checkpoint_path(path)
    arrays = _read_arrays(path)
    if "meta" not in arrays:
        raise CheckpointError(f"{path} has no 'meta' entry: it is not a cnnlab checkpoint "
                              "(cnnlab saves checkpoints with save_checkpoint / cnnlab train)")
    meta = _decode_json(arrays.pop("meta"), f"{path}: meta")
    _check_meta(meta, path)
    sections: dict[str, dict] = {prefix: {} for prefix in _SECTIONS}
    for key, array in arrays.items():
        prefix = next((prefix for prefix in _SECTIONS if key.startswith(prefix)), None)
        if prefix is not None:
            sections[prefix][key[len(prefix):]] = array
    optimizer = sections["optim/"]
    return Checkpoint(
        model_state=sections["model/"],
        optimizer_state=unflatten_optimizer_state(optimizer) if optimizer else None,
        meta=meta,
        extra=sections["extra/"],
        grads=sections["grad/"],
        path=str(path),
    )


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the npz at ``path``, after checking each member's header."""
    size, start = read_start(path, 4, CheckpointError)
    if not start.startswith(b"PK"):
        raise CheckpointError(_not_npz_message(path, start, size))
    try:
        _check_members(path, size)
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except CnnlabError:
        raise
    except ValueError as error:
        if "pickle" in str(error).lower() or "object" in str(error).lower():
            raise CheckpointError(f"{path} holds pickled objects: refused (cnnlab never "
                                  "unpickles); it was not written by cnnlab") from None
        raise CheckpointError(f"{path} is corrupt ({_short(error)}): save it again or use "
                              "another checkpoint") from None
    except MemoryError:
        raise CheckpointError(f"{path} is corrupt: an array claims more memory than "
                              "is available") from None
    except Exception as error:  # zipfile, zlib and numpy's format readers raise many kinds
        raise CheckpointError(f"{path} is truncated or corrupt ({type(error).__name__}: "
                              f"{_short(error)}): save it again or use another checkpoint") from None


def _not_npz_message(path: Path, start: bytes, size: int) -> str:
    if size == 0:
        return f"{path} is empty: the checkpoint was not written completely"
    if start.startswith(b"\x93NUM"):
        return f"{path} is a single .npy array, not a cnnlab checkpoint (.npz with meta)"
    if start[:1] == b"\x80":
        return f"{path} is a Python pickle: refused (cnnlab never unpickles)"
    return f"{path} is not a .npz (zip) file: is it a checkpoint written by cnnlab?"


def _check_members(path: Path, size: int) -> None:
    """Refuse object arrays and sizes the file cannot hold, before NumPy reads anything."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise CheckpointError(f"{path}: unexpected member '{info.filename}' "
                                      "(not a NumPy array): not a cnnlab checkpoint")
            limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED
                                          else _MAX_DEFLATE_RATIO)
            if info.compress_size > size or info.file_size > limit:
                raise CheckpointError(f"{path}: member '{info.filename}' claims more bytes than "
                                      "the file holds: the file is truncated or corrupt")
            with archive.open(info) as member:
                shape, dtype, header_size = _read_npy_header(member)
            if dtype.hasobject:
                raise CheckpointError(f"{path}: '{info.filename[:-4]}' is an object array "
                                      "(pickled Python objects): refused, cnnlab never unpickles")
            expected = header_size + math.prod(shape) * dtype.itemsize
            if expected != info.file_size:
                raise CheckpointError(f"{path}: '{info.filename[:-4]}' should hold {expected} "
                                      f"bytes but holds {info.file_size}: the file is corrupt")


def _read_npy_header(stream):
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    header_length = stream.tell()
    return shape, dtype, header_length


def _decode_json(array: np.ndarray, what: str):
    if array.dtype != np.uint8 or array.ndim != 1:
        raise CheckpointError(f"{what} is not a uint8 JSON byte array: the file is corrupt")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{what} is not valid UTF-8 JSON ({_short(error)}): "
                              "the file is corrupt") from None


def _check_meta(meta, path: Path) -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta is not a JSON object: the file is corrupt")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format tag is {meta.get('format')!r}, not '{FORMAT}': "
                              "not a cnnlab checkpoint")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not an integer")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is newer than this cnnlab "
                              f"reads ({VERSION}): upgrade cnnlab")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:120] + ("..." if len(text) > 120 else "")


# rebuilding the model

def load_model(path: str | os.PathLike):
    """Rebuild the model a checkpoint was saved from and load its weights (eval mode).

    Returns:
        (model, meta)

    Raises:
        CheckpointError: unreadable file, meta without a model spec, or a state that does not
            fit the model the spec builds (lists the mismatched keys and shapes).
    """
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint)
    return model, checkpoint.meta


def model_from_checkpoint(checkpoint: Checkpoint):
    """Build the model described by ``checkpoint.meta`` and load ``checkpoint.model_state``."""
    from cnnlab.models import build_model

    meta = checkpoint.meta
    spec = meta.get("model")
    if not isinstance(spec, str):
        raise CheckpointError(f"{checkpoint.path}: meta has no model spec ('model'): "
                              "cannot rebuild the network")
    try:
        model = build_model(spec, np.random.default_rng(0),
                            input_shape=tuple(meta.get("input_shape", (1, 28, 28))),
                            num_classes=meta.get("num_classes", 10))
    except (CnnlabError, TypeError) as error:
        raise CheckpointError(f"{checkpoint.path}: cannot rebuild model '{spec}' from meta: "
                              f"{error}") from None
    check_state_fits(model, checkpoint.model_state, f"{checkpoint.path} (model '{spec}')")
    model.load_state_dict(cast_to_model(model, checkpoint.model_state))
    model.eval()
    return model


# weights from any file: a checkpoint, or a safetensors file (exported, or saved by PyTorch)

def load_weights(path: str | os.PathLike, model: str | None = None) -> Checkpoint:
    """A checkpoint (``.npz`` or run folder) or a ``.safetensors`` file, as a :class:`Checkpoint`.

    Args:
        path: the file or run folder.
        model: the model spec the weights belong to. A safetensors file exported by cnnlab
            names its own; one saved by PyTorch needs it. Given with a checkpoint, it must be
            the checkpoint's own spec.

    Returns:
        A Checkpoint whose meta has at least ``model``, ``input_shape`` and ``num_classes``
        (for a plain PyTorch file: input (1, 28, 28), the classes from the last linear
        layer, ``x / 255`` inputs as in the lecture notes); load it with
        :func:`model_from_checkpoint`.

    Raises:
        CheckpointError: unreadable or unsafe file, no model spec, or weights that do not fit
            the spec (every mismatched key listed).
    """
    from cnnlab.training.interop import is_safetensors, load_safetensors

    if not is_safetensors(path):
        checkpoint = load_checkpoint(path)
        saved = checkpoint.meta.get("model")
        if model is not None and saved is not None and model.strip() != str(saved).strip():
            raise CheckpointError(f"{checkpoint.path} holds model '{saved}', not '{model}': drop "
                                  "--model (a checkpoint names its own model)")
        return checkpoint
    state, meta = load_safetensors(path)
    meta = dict(meta)
    if model is not None:
        meta["model"] = model.strip()
    if not isinstance(meta.get("model"), str):
        raise CheckpointError(f"{path} does not say which model it holds (no cnnlab metadata): "
                              "give the architecture with --model SPEC (mlp, cnn, cnn-bn or a "
                              "spec, docs/export.md)")
    meta.setdefault("format", FORMAT)
    meta.setdefault("version", VERSION)
    meta.setdefault("input_shape", [1, 28, 28])
    meta.setdefault("normalization", {"kind": "unit"})   # the lecture notes' X / 255
    if "num_classes" not in meta:
        meta["num_classes"] = _classifier_width(state, path)
    return Checkpoint(model_state=state, optimizer_state=None, meta=meta, path=str(path))


def _classifier_width(state: dict, path) -> int:
    """The output width of the last 2-D weight: the classifier Linear(features, K)."""
    weights = [key for key, value in state.items()
               if key.endswith("weight") and np.ndim(value) == 2]
    if not weights:
        raise CheckpointError(f"{path} has no linear layer weight (a 2-D '...weight'): it does "
                              "not hold a classifier cnnlab can build")
    return int(np.shape(state[max(weights, key=_natural_key)])[0])


def input_preparation(meta: dict) -> dict:
    """How a raw image becomes the model's input, from a checkpoint's meta (JSON-able).

    The one description exports carry (ONNX metadata_props, safetensors metadata):
    ``{"input_shape": [1, 28, 28], "layout": "NCHW", "dtype": "float32", "pixels":
    "uint8 0..255, grayscale", "normalization": {"kind": "standard", "mean": m, "std": s},
    "formula": "x = (pixel / 255 - mean) / std"}``, plus the preparation of image files
    (``meta["preprocess"]``) when the checkpoint records one.
    """
    normalization = dict(meta.get("normalization") or {"kind": "unit"})
    normalization = {key: value for key, value in normalization.items() if value is not None}
    if normalization.get("kind") == "standard":
        formula = (f"x = (pixel / 255 - {normalization.get('mean')}) / "
                   f"{normalization.get('std')}")
    else:
        formula = "x = pixel / 255"
    input_shape = [int(size) for size in meta.get("input_shape", (1, 28, 28))]
    preparation = {
        "input_shape": input_shape,
        "layout": "NCHW",
        "dtype": "float32",
        "pixels": _pixels_text(input_shape[0], meta.get("preprocess")),
        "normalization": normalization,
        "formula": formula,
    }
    if meta.get("preprocess") is not None:
        preparation["preprocess"] = meta["preprocess"]
    return preparation


def _pixels_text(channels: int, preprocess: dict | None) -> str:
    """What the input's pixels are, in words: "uint8 0..255, RGB, on a dark background"."""
    colour = "RGB (channels R, G, B)" if channels == 3 else "grayscale"
    record = preprocess or {}
    polarity = record.get("polarity")
    if record.get("kind") == "digit" or (preprocess is None and channels == 1):
        return f"uint8 0..255, {colour}, light ink on a dark background (MNIST's polarity)"
    if polarity in ("dark", "light"):
        return f"uint8 0..255, {colour}, on a {polarity} background as in training"
    return f"uint8 0..255, {colour}"


def class_names(meta: dict) -> list[str]:
    """The checkpoint's class names, or "0".."K-1" when it has none that fit."""
    num_classes = int(meta.get("num_classes", 10))
    classes = [str(name) for name in (meta.get("classes") or [])]
    return classes if len(classes) == num_classes else [str(index) for index in range(num_classes)]


# PyTorch interchange

def import_torch_state_dict(state: dict) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` (tensors or arrays) -> NumPy arrays with the same keys."""
    return {key: value.detach().cpu().numpy().copy() if hasattr(value, "detach")
            else np.array(value) for key, value in state.items()}


def export_torch_state_dict(state: dict) -> dict:
    """NumPy arrays -> torch tensors with the same keys (for ``torch_model.load_state_dict``)."""
    import torch

    return {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
