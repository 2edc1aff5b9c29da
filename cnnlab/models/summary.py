"""Per-layer output shape, parameter count and FLOPs of a model, without running it.

Output shapes come from each layer's own ``output_shape`` (built on the lecture's formula,
lecture 004, PyTorch's docs)::

    H_out = floor((H_in + 2p - d(k - 1) - 1) / s + 1)

FLOPs are for one image at inference: a multiply-add counts as 2 (conv, linear); ReLU 1 per
element; LeakyReLU 2; Sigmoid and Tanh 4 (exp, add, divide, and a negate or subtract);
BatchNorm 4 (subtract mean, divide by std, scale, shift); max-pool k*k - 1 comparisons per
output; avg-pool k*k (adds and one divide); Dropout and Flatten 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cnnlab.errors import ShapeError
from cnnlab.utils.formatting import format_shape
from cnnlab.utils.validation import int_pair


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
    """(output shape, FLOPs) of ``layer`` for one input of ``shape`` (no batch axis).

    The shape is the layer's own :meth:`~cnnlab.nn.Module.output_shape`.
    """
    shape = tuple(shape)
    try:
        out_shape = tuple(layer.output_shape((1,) + shape)[1:])
    except ShapeError as error:
        raise ShapeError(f"layer {index} {error}") from None
    return out_shape, _flops(layer, shape, out_shape)


def _flops(layer, shape: tuple, out_shape: tuple) -> int:
    """FLOPs of one image through ``layer`` (the counting rules of the module docstring)."""
    kind = type(layer).__name__
    if kind == "Conv2d":
        kernel_h, kernel_w = int_pair(layer.kernel_size, "kernel_size")
        return 2 * math.prod(out_shape) * (layer.in_channels // layer.groups) * kernel_h * kernel_w
    if kind == "Linear":
        return 2 * layer.in_features * layer.out_features
    if kind in ("MaxPool2d", "AvgPool2d"):
        window = math.prod(int_pair(layer.kernel_size, "kernel_size"))
        return math.prod(out_shape) * (window - 1 if kind == "MaxPool2d" else window)
    per_element = {"ReLU": 1, "LeakyReLU": 2, "Sigmoid": 4, "Tanh": 4, "BatchNorm1d": 4,
                   "BatchNorm2d": 4}
    return per_element.get(kind, 0) * math.prod(shape)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shape_text(shape: tuple) -> str:
    return format_shape(shape, ", ", brackets=True)


def _human(count: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f}"


def _megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.2f} MiB"
