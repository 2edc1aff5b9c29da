"""Figures of a network's inside: filters, feature maps, input gradients, weight histograms.

Each function takes an ``nn.Sequential`` (e.g. from :func:`cnnlab.training.checkpoint.load_model`) and
returns a :class:`matplotlib.figure.Figure`. The model is run in eval mode; its training mode
and its parameter gradients are restored afterwards, so a notebook can plot mid-training.
"""

from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import numpy as np

from cnnlab.errors import ConfigError, ShapeError
from cnnlab.utils.formatting import format_shape
from cnnlab.viz.plots._backend import FULL_WIDTH, SMALL_FONT, TITLE_FONT, new_figure, remove_unused
from cnnlab.viz.plots.data_figures import GRAY, show_image
from cnnlab.viz.plots.tiling import normalize_each, normalize_each_image, tile, tile_channels


def _layer_classes():
    from cnnlab.nn import layers

    return layers


@contextlib.contextmanager
def _inspecting(model):
    """Eval mode while inside; afterwards the model's mode and parameter gradients are as before."""
    was_training = getattr(model, "training", False)
    saved_grads = [
        None if parameter.grad is None else parameter.grad.copy() for parameter in model.parameters()
    ]
    model.eval()
    try:
        yield model
    finally:
        for parameter, grad in zip(model.parameters(), saved_grads):
            parameter.grad = grad
        model.train(was_training)


def _as_batch(images) -> np.ndarray:
    """(C, H, W) or (N, C, H, W) -> (N, C, H, W) float32."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ShapeError(f"expected images of shape (C, H, W) or (N, C, H, W), got {images.shape}")
    return images


def _input_image_shape(model, features: int) -> tuple[int, ...]:
    """The (C, H, W) that ``features`` input weights of a first Linear layer come from: the
    model's input shape, or a square grayscale image."""
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if len(shape) == 3 and math.prod(shape) == features:
        return shape
    side = math.isqrt(features)
    if side * side != features:
        raise ConfigError(f"cannot show {features} input weights as a square image")
    return (1, side, side)


def filters(model, max_filters: int = 64):
    """Every conv layer's filters as a grid of grayscale tiles, or an MLP's first-layer weights.

    - First conv layer: one tile per filter, its (k x k) weights (a 1-channel input has exactly
      one k x k kernel per filter; an RGB input's three kernels are shown as one colour tile,
      red, green and blue scaled together; other channel counts, their mean).
    - Deeper conv layers: a filter has one kernel per input channel; each tile shows the MEAN
      over the input channels of that output filter's kernels.
    - No conv layer (an MLP): the first Linear layer's weights, one input-sized image per
      neuron (row j of the (out, C*H*W) weight matrix reshaped; in colour for RGB inputs), as
      the lecture plots its weights.

    Each tile is scaled to its own min (black) .. max (white). At most ``max_filters`` tiles
    per layer are shown; the panel title says how many there are.
    """
    layers = _layer_classes()
    convs = [(index, layer) for index, layer in enumerate(model) if isinstance(layer, layers.Conv2d)]
    panels = []
    for position, (index, layer) in enumerate(convs):
        weight = layer.weight.data
        out_channels, in_channels, kh, kw = weight.shape
        shown = min(out_channels, max_filters)
        if position == 0 and in_channels == 3:
            tiles, how = weight[:shown], "RGB kernels as colour"
        else:
            tiles = weight[:shown].mean(axis=1)
            how = "one tile per filter" if in_channels == 1 else f"mean over {in_channels} input channels"
        prefix = "first conv" if position == 0 else "conv"
        count = f"{out_channels}" if shown == out_channels else f"first {shown} of {out_channels}"
        panels.append((tiles, f"{prefix} (layer {index}): {count} filters {kh}x{kw}, {how}"))
    if not panels:
        linear = next((pair for pair in enumerate(model) if isinstance(pair[1], layers.Linear)), None)
        if linear is None:
            raise ConfigError("the model has no Conv2d or Linear layer whose weights could be shown")
        index, layer = linear
        weight = layer.weight.data
        channels, height, width = _input_image_shape(model, weight.shape[1])
        shown = min(weight.shape[0], max_filters)
        tiles = weight[:shown].reshape(shown, channels, height, width)
        tiles = tiles[:, 0] if channels == 1 else tiles
        count = f"{weight.shape[0]}" if shown == weight.shape[0] else f"first {shown} of {weight.shape[0]}"
        panels.append((tiles, f"first Linear (layer {index}): weights of {count} neurons as "
                              f"{height}x{width} images"))
    figure = new_figure(min(FULL_WIDTH, 7.5 * len(panels)), 7.0)
    images = []
    for position, (tiles, title) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), position + 1)
        grid = tile_channels(normalize_each_image(tiles))
        if grid.ndim == 3:   # colour filters: one RGB tile each, no colour scale
            axes.imshow(grid, interpolation="nearest")
        else:
            images.append(axes.imshow(grid, cmap=GRAY, interpolation="nearest", vmin=0, vmax=1))
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(title, fontsize=SMALL_FONT + 1, wrap=True)
    for image in images:  # after every panel, so figure.axes starts with the panels
        bar = figure.colorbar(image, ax=image.axes, shrink=0.8, pad=0.02)
        bar.set_ticks([0, 1], labels=["tile's min", "tile's max"])
        bar.ax.tick_params(labelsize=SMALL_FONT)
    return figure


def _shown_layer_kinds():
    layers = _layer_classes()
    return (layers.Conv2d, layers.ReLU, layers.MaxPool2d, layers.LeakyReLU, layers.Sigmoid,
            layers.Tanh, layers.AvgPool2d)


def layer_outputs(model, images) -> list[tuple[int, str, np.ndarray]]:
    """Run ``images`` through ``model`` layer by layer; keep the 4-D output of every conv,
    activation and pool layer as ``(layer index, class name, output (N, C, H, W))``."""
    kinds = _shown_layer_kinds()
    x = _as_batch(images)
    kept = []
    with _inspecting(model):
        for index, layer in enumerate(model):
            x = layer(x)
            if x.ndim != 4:
                break
            if isinstance(layer, kinds):
                kept.append((index, type(layer).__name__, x))
    return kept


def feature_maps(model, images, max_channels: int = 16, titles: Sequence[str] | None = None):
    """The feature maps after every conv, activation and pool layer, for one or a few images.

    Args:
        model: an ``nn.Sequential`` taking (N, C, H, W) images.
        images: (C, H, W) or (N, C, H, W), normalized as the model was trained (see
            :meth:`cnnlab.viz.plots.Run.test_inputs`).
        max_channels: the first this many channels of each layer are shown.
        titles: optional label of each image (row), e.g. its class.

    One row per image; columns: the input, then one panel per layer, its channels tiled and each
    channel scaled to its own min..max.
    """
    batch = _as_batch(images)
    outputs = layer_outputs(model, batch)
    columns = 1 + len(outputs)
    side = min(2.6, FULL_WIDTH / columns)  # inches per panel
    height = (side + 0.35) * len(batch) + 0.45
    figure = new_figure(side * columns, height, layout=None)
    grid = figure.subplots(len(batch), columns, squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=1 - 0.6 / height, bottom=0.05 / height,
                           wspace=0.08, hspace=0.35)
    for row in range(len(batch)):
        show_image(grid[row][0], batch[row] if len(batch[row]) == 3 else batch[row].mean(axis=0))
        grid[row][0].set_title(titles[row] if titles else "input", fontsize=SMALL_FONT)
        for column, (index, name, output) in enumerate(outputs, start=1):
            channels = output.shape[1]
            shown = min(channels, max_channels)
            grid[row][column].imshow(tile(normalize_each(output[row, :shown])), cmap="viridis",
                                     interpolation="nearest")
            if row == 0:
                count = f"{channels} ch" if shown == channels else f"{shown} of {channels} ch"
                grid[row][column].set_title(f"{index} {name}\n{count} {output.shape[2]}x{output.shape[3]}",
                                            fontsize=SMALL_FONT)
    for axes in grid.ravel():
        axes.set_xticks([])
        axes.set_yticks([])
    return figure


def input_gradient(model, images) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the predicted class's score (its logit, before softmax) w.r.t. the input.

    The lecture's "input gradient": backpropagate d logit_c / d logit = one-hot(c), c the
    predicted class, through the whole network, down to the pixels. A Sequential normally lets
    its first layers skip computing dx (``requires_input_grad`` is False); it is switched on
    for this call and restored afterwards.

    Shape:
        - images: (N, C, H, W) or (C, H, W)
        - output: (gradient (N, C, H, W), logits (N, num_classes))
    """
    batch = _as_batch(images)
    with _inspecting(model):
        # set before the forward, which keeps what the input's gradient needs only when asked
        saved_flag = model.requires_input_grad
        model.requires_input_grad = True
        try:
            logits = model(batch)
            one_hot = np.zeros_like(logits)
            one_hot[np.arange(len(batch)), logits.argmax(axis=1)] = 1
            gradient = model.backward(one_hot)
        finally:
            model.requires_input_grad = saved_flag
    return np.asarray(gradient), logits


def saliency(model, images, labels=None, classes: Sequence[str] | None = None):
    """Input gradients (saliency maps) beside their images.

    Args:
        model: an ``nn.Sequential`` classifier.
        images: (N, C, H, W) normalized images.
        labels: optional (N,) true classes, shown in the titles.
        classes: optional class names.

    One row per image: the image; ``|d logit_c / d x|`` (max over channels; bright = pixels
    whose change moves the predicted score most); and the signed gradient (red raises the score,
    blue lowers it).
    """
    batch = _as_batch(images)
    gradient, logits = input_gradient(model, batch)
    predicted = logits.argmax(axis=1)
    name = (lambda index: classes[index]) if classes else str
    per_row = 2 if len(batch) > 1 else 1  # images side by side: image, |gradient|, signed
    rows = -(-len(batch) // per_row)
    height = 3.3 * rows + 0.2
    figure = new_figure(FULL_WIDTH if per_row == 2 else FULL_WIDTH / 2, height, layout=None)
    grid = figure.subplots(rows, 3 * per_row, squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.97, top=1 - 0.6 / height, bottom=0.1 / height,
                           wspace=0.3, hspace=0.4)
    remove_unused(figure, grid, 3 * len(batch))
    panels = grid.ravel()
    shown = []
    for row in range(len(batch)):
        image_axes, magnitude_axes, signed_axes = panels[3 * row: 3 * row + 3]
        show_image(image_axes, batch[row] if len(batch[row]) == 3 else batch[row].mean(axis=0))
        title = f"predicted: {name(int(predicted[row]))}"
        if labels is not None:
            title = f"true: {name(int(labels[row]))}\n{title}"
        image_axes.set_title(title, fontsize=SMALL_FONT + 1)
        magnitude = magnitude_axes.imshow(np.abs(gradient[row]).max(axis=0), cmap="hot", vmin=0)
        magnitude_axes.set_title("|d logit / d pixel|", fontsize=SMALL_FONT + 1)
        signed = gradient[row].sum(axis=0)
        limit = float(np.abs(signed).max()) or 1.0
        signed_image = signed_axes.imshow(signed, cmap="RdBu_r", vmin=-limit, vmax=limit)
        signed_axes.set_title("d logit / d pixel\n(red raises, blue lowers)", fontsize=SMALL_FONT + 1)
        for axes in (image_axes, magnitude_axes, signed_axes):
            axes.set_xticks([])
            axes.set_yticks([])
        shown += [magnitude, signed_image]
    for image in shown:  # after every panel, so figure.axes starts with the panels
        bar = figure.colorbar(image, ax=image.axes, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=SMALL_FONT)
        bar.formatter.set_powerlimits((-2, 3))
    return figure


def weight_histograms(model, grads: Mapping[str, np.ndarray] | None = None, bins: int = 40):
    """Per layer, a histogram of its weights and one of their gradients from the last step.

    Args:
        model: the network; every parameter with 2 or more dimensions (conv and linear weights)
            gets a row. Biases are left out: a handful of numbers makes no histogram.
        grads: parameter name -> gradient, e.g. a checkpoint's ``grad/`` arrays
            (:attr:`cnnlab.viz.plots.Run.gradients`); a missing name shows "no gradient saved".
    """
    grads = grads or {}
    weights = [(name, parameter.data) for name, parameter in model.named_parameters()
               if parameter.data.ndim >= 2]
    if not weights:
        raise ConfigError("the model has no weight matrices or kernels to show")
    height = 2.8 * len(weights) + 0.5
    figure = new_figure(FULL_WIDTH, height, layout=None)
    grid = figure.subplots(len(weights), 2, squeeze=False)
    figure.subplots_adjust(left=0.05, right=0.98, top=1 - 0.4 / height, bottom=0.45 / height,
                           wspace=0.15, hspace=0.6)
    for row, (name, values) in enumerate(weights):
        weight_axes, grad_axes = grid[row]
        shape = format_shape(values.shape)
        weight_axes.hist(values.ravel(), bins=bins, color="#4C72B0")
        weight_axes.set_title(f"{name} ({shape}): weights, std {values.std():.3g}", fontsize=TITLE_FONT)
        gradient = grads.get(name)
        if gradient is None:
            grad_axes.axis("off")
            grad_axes.text(0.5, 0.5, "no gradient saved", ha="center", va="center")
            grad_axes.set_title(f"{name}: last gradient", fontsize=TITLE_FONT)
        else:
            grad_axes.hist(np.asarray(gradient).ravel(), bins=bins, color="#DD8452")
            grad_axes.set_title(f"{name}: last gradient, std {np.std(gradient):.3g}", fontsize=TITLE_FONT)
        weight_axes.set_ylabel("count", fontsize=SMALL_FONT)
        for axes in grid[row]:
            axes.tick_params(labelsize=SMALL_FONT)
    return figure
