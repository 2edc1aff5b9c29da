"""Exports of a trained model for other tools: ONNX graphs and safetensors weights.

    from cnnlab.export import export
    export("runs/cnn-fashion-mnist-...", "onnx")          # -> runs/.../model.onnx
    export("runs/cnn-fashion-mnist-...", "safetensors")   # -> runs/.../model.safetensors

``cnnlab export RUN --format onnx|safetensors [--out FILE]`` is this function; docs/export.md
shows how each file is used in onnxruntime and PyTorch. The onnx and safetensors packages are
imported only when a file is written (``pip install 'cnnlab[onnx,safetensors]'``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import ConfigError

FORMATS = ("onnx", "safetensors")
SUFFIXES = {"onnx": ".onnx", "safetensors": ".safetensors"}
# what an exported safetensors file keeps of the checkpoint's meta (enough to evaluate it)
EXPORTED_META = ("model", "input_shape", "num_classes", "classes", "normalization", "preprocess",
                 "dataset", "epoch")


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    path: Path
    format: str
    description: str   # one line for the command line: what the file holds


def default_output(source: str | os.PathLike, format: str) -> Path:
    """``RUN/model.onnx`` for a run folder, ``NAME.onnx`` next to a ``NAME.npz`` file."""
    source = Path(source)
    if source.is_dir():
        return source / f"model{SUFFIXES[format]}"
    return source.with_suffix(SUFFIXES[format])


def export(source: str | os.PathLike, format: str, out: str | os.PathLike | None = None,
           model: str | None = None, opset: int | None = None) -> ExportResult:
    """Write the model of ``source`` (a run folder, checkpoint or safetensors file) as ``format``.

    Args:
        source: what ``cnnlab evaluate`` takes: a run folder, a ``.npz`` checkpoint or a
            ``.safetensors`` file (with ``model`` when it has no cnnlab metadata).
        format: ``"onnx"`` or ``"safetensors"``.
        out: the file to write (default :func:`default_output`), atomically.
        model: the model spec of a safetensors file saved by PyTorch.
        opset: the ONNX opset (default :data:`cnnlab.export.onnx.OPSET`).

    Raises:
        ConfigError: unknown format, ``out`` is the source itself or a folder, or a layer the
            format cannot express. CheckpointError: the source cannot be read.
    """
    from cnnlab.training.checkpoint import load_weights, model_from_checkpoint

    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}': use onnx or safetensors")
    path = Path(out) if out is not None else default_output(source, format)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder: give the file to write, e.g. "
                          f"{path / ('model' + SUFFIXES[format])}")
    checkpoint = load_weights(source, model)
    if Path(checkpoint.path).resolve() == path.resolve():
        raise ConfigError(f"--out {path} is the file being exported: give another --out")
    network = model_from_checkpoint(checkpoint)
    meta = {key: checkpoint.meta[key] for key in EXPORTED_META if key in checkpoint.meta}
    if format == "onnx":
        from cnnlab.export.onnx import OPSET, save_onnx

        return save_onnx(network, meta, path, opset or OPSET)
    from cnnlab.export.safetensors import save_model_safetensors

    return save_model_safetensors(network, meta, path)
