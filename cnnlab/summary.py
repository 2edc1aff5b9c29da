"""Per-layer output shape, parameter count and FLOPs of a model, without running it.

Output shapes come from the lecture's formula (lecture 004, PyTorch's docs)::

    H_out = floor((H_in + 2p - d(k - 1) - 1) / s + 1)

FLOPs are for one image at inference: a multiply-add counts as 2 (conv, linear); ReLU 1 per
element; LeakyReLU 2; Sigmoid and Tanh 4 (exp, add, divide, and a negate or subtract);
BatchNorm 4 (subtract mean, divide by std, scale, shift); max-pool k*k - 1 comparisons per
output; avg-pool k*k (adds and one divide); Dropout and Flatten 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cnnlab.errors import ShapeError


@dataclass
class SummaryRow:
    """One line of the summary.

    Attributes:
        index: position in the Sequential ("0", "1", ...; "" for the input row).
        kind: the class name ("Conv2d") or "Input".
        description: the layer as PyTorch prints it, e.g. "Conv2d(1, 32, kernel_size=(3, 3), ...)".
        output_shape: per image, without the batch axis: (C, H, W) or (F,).
        parameters: number of trainable values.
        flops: floating-point operations for one image (see the module docstring).
    """

    index: str
    kind: str
    description: str
    output_shape: tuple
    parameters: int
    flops: int

    def to_dict(self) -> dict:
        row = asdict(self)
        row["output_shape"] = list(self.output_shape)
        return row


def summarize(model, input_shape) -> list[SummaryRow]:
    """The input row, then one row per layer of ``model`` (a Sequential or a single layer).

    Args:
        model: ``nn.Sequential`` (or any layer).
        input_shape: (C, H, W) or (F,) of one image.

    Raises:
        ShapeError: a layer does not fit the shape coming into it (names the layer).
    """
    shape = tuple(int(size) for size in input_shape)
    rows = [SummaryRow("", "Input", "input", shape, 0, 0)]
    layers = list(model) if hasattr(model, "__iter__") else [model]
    for index, layer in enumerate(layers):
        out_shape, flops = layer_output(layer, shape, index)
        parameters = sum(int(p.data.size) for p in layer.parameters())
        rows.append(SummaryRow(str(index), type(layer).__name__, _one_line(repr(layer)),
                               out_shape, parameters, int(flops)))
        shape = out_shape
    return rows


def totals(rows: list[SummaryRow]) -> dict:
    """Total parameters and FLOPs, and the parameter memory as float32."""
    parameters = sum(row.parameters for row in rows)
    return {
        "parameters": parameters,
        "flops": sum(row.flops for row in rows),
        "parameter_bytes": 4 * parameters,
        "output_shape": list(rows[-1].output_shape) if rows else [],
    }


def format_summary(rows: list[SummaryRow], title: str | None = None) -> str:
    """A text table of the rows with a totals line."""
    header = ("#", "layer", "output shape", "parameters", "FLOPs")
    body = [(row.index, row.description if row.kind != "Input" else "input",
             _shape_text(row.output_shape), f"{row.parameters:,}", f"{row.flops:,}")
            for row in rows]
    total = totals(rows)
    footer = ("", "total", _shape_text(tuple(total["output_shape"])),
              f"{total['parameters']:,}", f"{total['flops']:,}")
    widths = [max(len(line[column]) for line in [header, *body, footer]) for column in range(5)]
    widths[1] = min(widths[1], 72)

    def render(line) -> str:
        description = line[1] if len(line[1]) <= widths[1] else line[1][:widths[1] - 3] + "..."
        cells = [line[0].rjust(widths[0]), description.ljust(widths[1]),
                 line[2].ljust(widths[2]), line[3].rjust(widths[3]), line[4].rjust(widths[4])]
        return "  ".join(cells).rstrip()

    rule = "-" * len(render(tuple("x" * width for width in widths)))
    lines = ([title] if title else []) + [render(header), rule]
    lines += [render(line) for line in body] + [rule, render(footer)]
    lines.append(f"parameters: {total['parameters']:,} ({_megabytes(total['parameter_bytes'])} "
                 f"as float32); FLOPs per image: {_human(total['flops'])} "
                 f"(multiply-add = 2)")
    return "\n".join(lines)


def layer_output(layer, shape: tuple, index: int = 0) -> tuple[tuple, int]:
    """(output shape, FLOPs) of ``layer`` for one input of ``shape``."""
    kind = type(layer).__name__
    elements = math.prod(shape)
    if kind == "Conv2d":
        return _conv(layer, shape, index)
    if kind == "Linear":
        if shape != (layer.in_features,):
            raise ShapeError(f"layer {index} {kind}: expects {layer.in_features} features, "
                             f"gets shape {shape}")
        return (layer.out_features,), 2 * layer.in_features * layer.out_features
    if kind in ("MaxPool2d", "AvgPool2d"):
        return _pool(layer, shape, index, kind)
    if kind == "Flatten":
        start = max(0, getattr(layer, "start_dim", 1) - 1)
        return shape[:start] + (math.prod(shape[start:]),), 0
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        if shape[0] != layer.num_features:
            raise ShapeError(f"layer {index} {kind}: expects {layer.num_features} channels, "
                             f"gets shape {shape}")
        return shape, 4 * elements
    per_element = {"ReLU": 1, "LeakyReLU": 2, "Sigmoid": 4, "Tanh": 4, "Dropout": 0}
    if kind in per_element:
        return shape, per_element[kind] * elements
    return _by_running(layer, shape), 0


def _conv(layer, shape: tuple, index: int) -> tuple[tuple, int]:
    if len(shape) != 3 or shape[0] != layer.in_channels:
        raise ShapeError(f"layer {index} Conv2d: expects ({layer.in_channels}, H, W) input, "
                         f"gets {shape}")
    from cnnlab.ops.conv import conv2d_output_size

    try:
        out_hw = conv2d_output_size(shape[1:], layer.kernel_size, layer.stride, layer.padding,
                                    layer.dilation)
    except ShapeError as error:
        raise ShapeError(f"layer {index} Conv2d: {error}") from None
    kernel_h, kernel_w = _pair(layer.kernel_size)
    multiply_adds = (layer.out_channels * math.prod(out_hw)
                     * (layer.in_channels // layer.groups) * kernel_h * kernel_w)
    return (layer.out_channels,) + out_hw, 2 * multiply_adds


def _pool(layer, shape: tuple, index: int, kind: str) -> tuple[tuple, int]:
    if len(shape) != 3:
        raise ShapeError(f"layer {index} {kind}: expects (C, H, W) input, gets {shape}")
    out_hw = _output_hw(shape[1:], layer.kernel_size, layer.stride, layer.padding, 1, index, kind)
    window = math.prod(_pair(layer.kernel_size))
    per_output = window - 1 if kind == "MaxPool2d" else window
    return (shape[0],) + out_hw, shape[0] * math.prod(out_hw) * per_output


def _output_hw(input_hw, kernel_size, stride, padding, dilation, index, kind) -> tuple:
    from cnnlab.ops.conv import conv2d_output_size

    kernel, step, pad, dilate = (_pair(v) for v in (kernel_size, stride, padding, dilation))
    try:
        return tuple(int(conv2d_output_size((size, size), kernel[axis], step[axis], pad[axis],
                                            dilate[axis])[0])
                     for axis, size in enumerate(input_hw))
    except ShapeError as error:
        raise ShapeError(f"layer {index} {kind}: {error}") from None


def _by_running(layer, shape: tuple) -> tuple:
    """Unknown layer kinds: push one zero image through (in eval mode) to learn the shape."""
    was_training = layer.training
    layer.eval()
    try:
        output = layer(np.zeros((1,) + shape, dtype=np.float32))
    finally:
        layer.train(was_training)
    return tuple(output.shape[1:])


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(str(size) for size in shape) + ")"


def _human(count: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f}"


def _megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"
