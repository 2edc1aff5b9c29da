"""What the explorer page needs from a model, as JSON: its layers and a few images, exactly.

The page recomputes in the browser what each layer did (plain JavaScript, ``explorer.js``),
so it carries the model itself, not pictures of it:

- every layer's kind, arguments and parameters, the weights as float32 (base64 of the
  little-endian bytes): the kernel a student sees is the model's own, bit for bit;
- for each embedded test image its uint8 pixels and label, and the float32 input of every
  Conv2d and Linear layer, as the model computed it (the layers run one by one,
  ``model[i](x)``). A clicked pixel's products, sums and result are worked out in the page
  from these two exact arrays, so what it shows is the model's own float32 patch times the
  model's own float32 kernel; the sum differs from the model's output only by the order of
  float32 additions (a few units in the last place).

Pictures (feature maps, gradients) are drawn from the page's own forward pass; nothing is
quantised on the way. For the lecture CNN and 30 images the JSON is about 2 MB.
"""

from __future__ import annotations

import base64
import math

import numpy as np

from cnnlab.errors import ConfigError

FORMAT_VERSION = 1
#: Test images embedded per class (the first ones of each class in the test set).
IMAGES_PER_CLASS = 3
#: At most this many images in all (a dataset with many classes).
MAX_IMAGES = 60


def encode_float32(array) -> str:
    """base64 of ``array`` as little-endian float32 bytes (what ``Float32Array`` reads)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def encode_uint8(array) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")


def decode_float32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def _pair(value, minimum: int = 1) -> list[int]:
    from cnnlab.utils.validation import int_pair

    return list(int_pair(value, "size", minimum=minimum))


def describe_layer(layer) -> dict:
    """One layer as the page's JSON: kind, arguments and float32 parameters.

    Raises:
        ConfigError: a layer kind the explorer cannot recompute.
    """
    from cnnlab.nn import layers as nn

    kind = type(layer)
    if kind is nn.Conv2d:
        from cnnlab.ops.conv import conv2d_padding

        top, bottom, left, right = conv2d_padding(layer.padding, layer.kernel_size, layer.stride,
                                                  layer.dilation)
        return {"kind": "conv", "in": layer.in_channels, "out": layer.out_channels,
                "kernel": _pair(layer.kernel_size), "stride": _pair(layer.stride),
                "padding": [int(top), int(left)], "padding_after": [int(bottom), int(right)],
                "dilation": _pair(layer.dilation),
                "groups": layer.groups, "weight": encode_float32(layer.weight.data),
                "bias": None if layer.bias is None else encode_float32(layer.bias.data)}
    if kind is nn.Linear:
        return {"kind": "linear", "in": layer.in_features, "out": layer.out_features,
                "weight": encode_float32(layer.weight.data),
                "bias": None if layer.bias is None else encode_float32(layer.bias.data)}
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        return {"kind": "maxpool" if kind is nn.MaxPool2d else "avgpool",
                "kernel": _pair(layer.kernel_size), "stride": _pair(layer.stride),
                "padding": _pair(layer.padding, 0), "padding_after": _pair(layer.padding, 0)}
    if kind is nn.ReLU:
        return {"kind": "relu"}
    if kind is nn.LeakyReLU:
        return {"kind": "leaky_relu", "slope": float(layer.negative_slope)}
    if kind is nn.Tanh:
        return {"kind": "tanh"}
    if kind is nn.Sigmoid:
        return {"kind": "sigmoid"}
    if kind is nn.Flatten:
        return {"kind": "flatten"}
    if kind is nn.Dropout:
        return {"kind": "dropout", "p": layer.p}   # the identity in eval mode
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d) and layer.track_running_stats:
        channels = layer.num_features
        ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        return {"kind": "batchnorm", "eps": layer.eps,
                "mean": encode_float32(layer.running_mean), "var": encode_float32(layer.running_var),
                "weight": encode_float32(ones if layer.weight is None else layer.weight.data),
                "bias": encode_float32(zeros if layer.bias is None else layer.bias.data)}
    raise ConfigError(f"the explorer cannot show a {layer!r} layer yet (it shows Conv2d, Linear, "
                      "pooling, activations, Flatten, Dropout and BatchNorm with running "
                      "statistics)")


def layer_title(layer) -> str:
    """``Conv2d(1, 32, kernel_size=(3, 3), ...)``: the layer as PyTorch prints it."""
    return f"{type(layer).__name__}({layer.extra_repr()})"


def layer_inputs(model, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's input, then the model's output: the layers run one by one in eval mode.

    ``model[i](x)`` gives the values the fused path gives (cnnlab/nn/module.py), and it keeps
    each layer's own output, which the fused path never stores.
    """
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        values = [np.ascontiguousarray(x, dtype=np.float32)]
        for layer in model:
            values.append(layer(values[-1]))
    finally:
        model.train(was_training)
    return values


def pick_test_images(labels: np.ndarray, per_class: int = IMAGES_PER_CLASS,
                     limit: int = MAX_IMAGES) -> np.ndarray:
    """Indices of the first ``per_class`` test images of each class, in test-set order."""
    labels = np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        chosen.extend(np.flatnonzero(labels == label)[:per_class].tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))[:limit]


def _computed_layers(model) -> set[int]:
    from cnnlab.nn import layers as nn

    return {index for index, layer in enumerate(model) if isinstance(layer, (nn.Conv2d, nn.Linear))}


def upload_preparation(meta: dict) -> dict:
    """How ``cnnlab predict`` prepares a picture for this model: the checkpoint's description
    (:func:`cnnlab.training.checkpoint.input_preparation`) with the preparation predict uses
    (:func:`cnnlab.data.images.default_preprocess`), which prepare.js follows step by step."""
    from cnnlab.training.checkpoint import input_preparation
    from cnnlab.data.images import default_preprocess

    preprocess = default_preprocess(meta)
    # as predict: the record's normalisation, else the checkpoint's
    normalization = preprocess.get("normalization") or meta.get("normalization")
    preparation = input_preparation({**meta, "preprocess": preprocess,
                                     "normalization": normalization})
    preparation["resize_passes"] = pillow_resize_passes()
    return preparation


def pillow_resize_passes() -> str:
    """The order of the two passes of Pillow's resize here, which changes its rounding:
    "pillow-13" (from Pillow 13: the vertical pass first when only the height shrinks) or
    "horizontal-first" (Pillow 12 and before)."""
    try:
        from PIL import __version__
    except ImportError:   # predict cannot read pictures without Pillow: today's order
        return "pillow-13"
    return "pillow-13" if int(__version__.split(".")[0]) >= 13 else "horizontal-first"


def explorer_payload(model, meta: dict, images: np.ndarray, labels, names=None,
                     x: np.ndarray | None = None) -> dict:
    """The page's JSON for ``model`` and uint8 ``images`` (N, H, W) or (N, C, H, W).

    Args:
        model: an ``nn.Sequential`` (a run's checkpoint model).
        meta: the checkpoint's meta (normalization, classes, input_shape).
        images: the images to embed, as stored in the dataset.
        labels: their classes (or -1 where unknown).
        names: a caption per image (default "test #i").
        x: the model's float32 input for ``images`` (default: ``images`` normalised as
            ``meta["normalization"]`` says, like ``cnnlab predict``).
    """
    from cnnlab.data.images import MAX_PIXELS, to_model_input

    images = np.asarray(images, dtype=np.uint8)
    if x is None:
        x = to_model_input(images, meta.get("normalization"))
    preparation = upload_preparation({"input_shape": list(x.shape[1:]), **meta})
    values = layer_inputs(model, x)
    kept = _computed_layers(model)
    num_classes = int(meta.get("num_classes", values[-1].shape[1]))
    classes = list(meta.get("classes") or [str(index) for index in range(num_classes)])
    layers = []
    for index, layer in enumerate(model):
        description = describe_layer(layer)
        description["title"] = layer_title(layer)
        description["output_shape"] = list(values[index + 1].shape[1:])
        layers.append(description)
    embedded = []
    for item in range(len(images)):
        embedded.append({
            "name": names[item] if names is not None else f"test #{item}",
            "label": int(labels[item]),
            "pixels": encode_uint8(images[item]),
            # the model's own float32 input of each Conv2d / Linear layer, keyed by its index
            "inputs": {str(index): encode_float32(values[index][item]) for index in sorted(kept)},
            "logits": encode_float32(values[-1][item]),
        })
    normalization = dict(meta.get("normalization") or {"kind": "unit"})
    return {
        "version": FORMAT_VERSION,
        "input_shape": list(x.shape[1:]),
        "image_shape": list(images.shape[1:]),
        "normalization": {"kind": normalization.get("kind", "unit"),
                          "mean": normalization.get("mean"), "std": normalization.get("std")},
        "preparation": preparation,
        "max_pixels": MAX_PIXELS,
        "classes": classes,
        "layers": layers,
        "images": embedded,
        "parameters": int(sum(math.prod(p.data.shape) for p in model.parameters())),
    }


def run_payload(run, per_class: int = IMAGES_PER_CLASS) -> dict:
    """The explorer's JSON for a run folder (:class:`cnnlab.viz.plots.runs.Run`): its model and
    the first ``per_class`` test images of each class."""
    test_labels = np.asarray(run.dataset.test_labels)
    indices = pick_test_images(test_labels, per_class)
    images = run.dataset.test_images[indices]
    names = [f"test #{int(index)}" for index in indices]
    return explorer_payload(run.model, run.meta, images, test_labels[indices], names)
