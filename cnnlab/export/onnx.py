"""A cnnlab ``nn.Sequential`` as an ONNX graph, built with the ``onnx`` package's helpers.

One ONNX node per layer, in the model's order, each weight an initializer named by its
state_dict key, so a model viewer (Netron) shows the network as the lecture draws it::

    input (batch, 1, 28, 28) -> Conv -> Relu -> MaxPool -> Conv -> Relu -> MaxPool
                             -> Flatten -> Gemm -> logits (batch, 10)

=================  =========================================================================
cnnlab layer       ONNX operator (opset :data:`OPSET`)
=================  =========================================================================
Conv2d             Conv (pads, also 'same' with an even kernel's extra zero at the
                   bottom/right, strides, dilations, group; the bias as third input)
Linear             Gemm with transB=1: y = x W^T + b, W kept in PyTorch's (out, in) layout
MaxPool2d          MaxPool (padding never wins the max, as in PyTorch)
AvgPool2d          AveragePool with count_include_pad=1 (PyTorch's default)
BatchNorm1d/2d     BatchNormalization in inference mode: running mean and variance
ReLU, LeakyReLU    Relu, LeakyRelu(alpha)
Sigmoid, Tanh      Sigmoid, Tanh
Flatten            Flatten(axis=1)
Dropout            Identity (evaluation does not drop)
=================  =========================================================================

The input is float32 ``(batch, C, H, W)`` (or ``(batch, F)``), already prepared as the model
was trained (``metadata_props["cnnlab.input_preparation"]`` says how); the output is the logits
``(batch, K)``. The batch dimension is symbolic, so any batch size runs. ``onnx`` is imported
only here (``pip install 'cnnlab[onnx]'``).
"""

from __future__ import annotations

import json

import numpy as np

from cnnlab.errors import CnnlabError, ConfigError

OPSET = 17
# the IR version onnx assigns to opset 17: older runtimes refuse a newer IR than they know
IR_VERSION = 8
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INSTALL_HINT = "pip install 'cnnlab[onnx]'"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise CnnlabError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def _pair(value) -> list[int]:
    return [int(value), int(value)] if np.isscalar(value) else [int(size) for size in value]


def _pads(padding) -> list[int]:
    """A pool's symmetric (pad_h, pad_w) as ONNX's [top, left, bottom, right]."""
    pad_h, pad_w = _pair(padding)
    return [pad_h, pad_w, pad_h, pad_w]


class _GraphBuilder:
    """Collects nodes and initializers while walking the layers."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes = []
        self.initializers = []
        self.current = INPUT_NAME

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(
            np.ascontiguousarray(array, dtype=np.float32), name=name))
        return name

    def node(self, op_type: str, layer_name: str, inputs: list[str], **attributes) -> None:
        output = f"{layer_name}_{op_type.lower()}"
        self.nodes.append(self.helper.make_node(op_type, [self.current, *inputs], [output],
                                                name=f"{layer_name}_{op_type}", **attributes))
        self.current = output


def _add_layer(builder: _GraphBuilder, name: str, layer) -> None:
    """The ONNX node of one cnnlab layer (see the table in the module docstring)."""
    from cnnlab.ops.conv import conv2d_padding
    kind = type(layer).__name__
    if kind == "Conv2d":
        inputs = [builder.constant(f"{name}.weight", layer.weight.data)]
        if layer.bias is not None:
            inputs.append(builder.constant(f"{name}.bias", layer.bias.data))
        top, bottom, left, right = conv2d_padding(layer.padding, layer.kernel_size, layer.stride,
                                                  layer.dilation)
        builder.node("Conv", name, inputs, kernel_shape=list(layer.kernel_size),
                     strides=list(layer.stride), pads=[top, left, bottom, right],
                     dilations=list(layer.dilation), group=int(layer.groups))
    elif kind == "Linear":
        inputs = [builder.constant(f"{name}.weight", layer.weight.data)]
        if layer.bias is not None:
            inputs.append(builder.constant(f"{name}.bias", layer.bias.data))
        builder.node("Gemm", name, inputs, transB=1)
    elif kind in ("MaxPool2d", "AvgPool2d"):
        attributes = {"kernel_shape": _pair(layer.kernel_size), "strides": _pair(layer.stride),
                      "pads": _pads(layer.padding)}
        if kind == "MaxPool2d":
            builder.node("MaxPool", name, [], **attributes)
        else:
            builder.node("AveragePool", name, [], count_include_pad=1, **attributes)
    elif kind in ("BatchNorm1d", "BatchNorm2d"):
        if not layer.track_running_stats:
            raise ConfigError(f"layer {name} ({kind}) keeps no running statistics, so it "
                              "normalizes with each batch's own: ONNX inference cannot do that; "
                              "train with track_running_stats=True to export it")
        channels = layer.num_features
        weight = layer.weight.data if layer.weight is not None else np.ones(channels)
        bias = layer.bias.data if layer.bias is not None else np.zeros(channels)
        builder.node("BatchNormalization", name, [
            builder.constant(f"{name}.weight", weight), builder.constant(f"{name}.bias", bias),
            builder.constant(f"{name}.running_mean", layer.running_mean),
            builder.constant(f"{name}.running_var", layer.running_var)], epsilon=layer.eps)
    elif kind in ("ReLU", "Sigmoid", "Tanh"):
        builder.node({"ReLU": "Relu"}.get(kind, kind), name, [])
    elif kind == "LeakyReLU":
        builder.node("LeakyRelu", name, [], alpha=layer.negative_slope)
    elif kind == "Flatten":
        if layer.start_dim != 1:
            raise ConfigError(f"layer {name}: Flatten(start_dim={layer.start_dim}) has no ONNX "
                              "Flatten equivalent; only start_dim=1 (after the batch) exports")
        builder.node("Flatten", name, [], axis=1)
    elif kind == "Dropout":
        builder.node("Identity", name, [])
    else:
        raise ConfigError(f"layer {name} ({kind}) has no ONNX export: cnnlab exports Conv2d, "
                          "Linear, pooling, batch norm, activations, Flatten and Dropout")


def to_onnx(model, meta: dict | None = None, opset: int = OPSET):
    """The ONNX ``ModelProto`` of ``model`` (an ``nn.Sequential``) in evaluation mode.

    Args:
        model: a cnnlab Sequential (as ``build_model`` or ``load_model`` return).
        meta: the checkpoint's meta; its classes, model spec, dataset and input preparation
            (:func:`cnnlab.training.checkpoint.input_preparation`) go into ``metadata_props``.
        opset: the ONNX operator set (17 or newer).

    Returns:
        An ``onnx.ModelProto`` that passes ``onnx.checker.check_model(full_check=True)``.

    Raises:
        ConfigError: a layer ONNX cannot express (listed in the message).
    """
    from cnnlab import __version__
    from cnnlab.training.checkpoint import class_names, input_preparation

    onnx = _onnx()
    if opset < OPSET:
        raise ConfigError(f"--opset {opset} is older than cnnlab exports: give --opset {OPSET} "
                          "or newer")
    meta = dict(meta or {})
    meta.setdefault("model", getattr(model, "spec", None))
    meta.setdefault("input_shape", list(getattr(model, "input_shape", (1, 28, 28))))
    meta.setdefault("num_classes", getattr(model, "num_classes", 10))
    builder = _GraphBuilder(onnx)
    for name, layer in model.named_children():
        _add_layer(builder, name, layer)
    builder.nodes[-1].output[0] = OUTPUT_NAME
    float_type = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        builder.nodes, f"cnnlab {meta.get('model')}",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, float_type,
                                            ["batch", *[int(s) for s in meta["input_shape"]]])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, float_type,
                                            ["batch", int(meta["num_classes"])])],
        initializer=builder.initializers)
    preparation = input_preparation(meta)
    onnx_model = onnx.helper.make_model(
        graph, producer_name="cnnlab", producer_version=__version__,
        ir_version=IR_VERSION if opset == OPSET else onnx.helper.find_min_ir_version_for(
            [onnx.helper.make_opsetid("", opset)]),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        doc_string=(f"cnnlab model '{meta.get('model')}': input '{INPUT_NAME}' "
                    f"(batch, {', '.join(map(str, meta['input_shape']))}) float32 prepared as "
                    f"{preparation['formula']}; output '{OUTPUT_NAME}' (batch, "
                    f"{meta['num_classes']}), softmax gives the class probabilities"))
    properties = {
        "cnnlab.model": str(meta.get("model")),
        "cnnlab.classes": json.dumps(class_names(meta)),
        "cnnlab.input_preparation": json.dumps(preparation),
        "cnnlab.dataset": json.dumps(meta.get("dataset")),
        "cnnlab.epoch": json.dumps(meta.get("epoch")),
    }
    onnx.helper.set_model_props(onnx_model, properties)
    return onnx_model


def check_onnx(onnx_model) -> None:
    """``onnx.checker`` with the full check (shape inference too); a failure is a CnnlabError."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as error:
        text = " ".join(str(error).split())[:200]
        raise CnnlabError(f"the exported ONNX graph fails onnx.checker ({text}): please report "
                          "this as a cnnlab bug") from None


def save_onnx(model, meta: dict, path, opset: int = OPSET):
    """Build, check and write the ONNX file of ``model`` atomically; returns an ExportResult."""
    from pathlib import Path

    from cnnlab.export import ExportResult
    from cnnlab.utils.fileio import atomic_write

    onnx_model = to_onnx(model, meta, opset)
    check_onnx(onnx_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as stream:
        stream.write(onnx_model.SerializeToString())
    operators = [node.op_type for node in onnx_model.graph.node]
    size = path.stat().st_size
    return ExportResult(path, "onnx", f"opset {opset}, {len(operators)} nodes "
                        f"({' -> '.join(operators)}), dynamic batch, {size / 1e6:.2f} MB")
