"""The named models (``mlp``, ``cnn``, ``cnn-bn``) and user architectures from a spec string.

A spec is a list of layers separated by ``-``, ``,`` or spaces, like the lectures' ``f_n``
lists (the grammar is in docs/models.md)::

    build_model("cnn", rng)                       # the lecture CNN
    build_model("c32k3p1-bn-p2-c64k3p1-p2-fc128", rng)
    build_model("784-500-10", rng)                # the lecture's f_n = [784, 500, 10]

Every shape is worked out before any array is allocated, by each layer class's own
``output_shape_for`` (the constructor's arguments and an input shape; built on the lecture's
output-size formula, :func:`cnnlab.ops.conv.conv2d_output_size`), so a layer that does not fit
is reported as a :class:`ConfigError` naming the layer (its position and text) and the numbers.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from cnnlab.errors import ConfigError, ShapeError
from cnnlab.utils.formatting import format_shape
from cnnlab.utils.validation import positive_int

# name -> the equivalent spec; the classifier Linear(features, num_classes) is always appended
NAMED_SPECS = {
    # the lecture's 784-500-10 network, without the ReLU the lecture puts on the logits
    "mlp": "fc500",
    # the lecture CNN: Conv(1->32,k3,p1)-ReLU-MaxPool2-Conv(32->64,k3,p1)-ReLU-MaxPool2-Linear(3136->10)
    "cnn": "c32k3p1-p2-c64k3p1-p2",
    # three conv-BN-ReLU-pool blocks, dropout around a hidden layer: >= 0.93 on Fashion-MNIST
    "cnn-bn": "c32k3p1-bn-p2-c64k3p1-bn-p2-c128k3p1-bn-p2-flatten-drop0.3-fc128-drop0.3",
}
MODEL_NAMES = tuple(NAMED_SPECS)

_MAX_WIDTH = 65536          # channels or features of one layer
_MAX_PARAMETERS = 500_000_000
_ACTIVATIONS = ("relu", "tanh", "sigmoid", "lrelu", "leakyrelu")
_KINDS = ("c", "conv", "fc", "linear", "p", "pool", "maxpool", "ap", "avgpool", "bn",
          "drop", "dropout", "flatten") + _ACTIVATIONS
_SPEC_HELP = "see docs/models.md, e.g. 'c32k3p1-p2-c64k3p1-p2-fc128' or '784-500-10'"


@dataclass
class LayerPlan:
    """One layer to build: its class name, constructor arguments and the output shape."""

    kind: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    output_shape: tuple = ()
    parameters: int = 0


def build_model(spec: str, rng: np.random.Generator, input_shape=(1, 28, 28),
                num_classes: int = 10):
    """Build a named model or a spec string as an ``nn.Sequential``.

    Args:
        spec: ``"mlp"``, ``"cnn"``, ``"cnn-bn"`` or a spec string (docs/models.md).
        rng: draws the initial weights (PyTorch's default initialisation) and is kept by the
            Dropout layers for their masks, so one seed fixes the whole run.
        input_shape: (C, H, W) of one image, or (F,) for flat inputs.
        num_classes: K, the width of the last Linear layer (the logits; no activation).

    Returns:
        ``nn.Sequential`` with ``.spec``, ``.input_shape`` and ``.num_classes`` attributes set.

    Raises:
        ConfigError: unknown name, bad token, zero/negative sizes, or a layer that does not fit
            its input; the message names the layer (position and text) and the numbers.
    """
    from cnnlab.nn import layers as nn_layers
    from cnnlab.nn.module import Sequential

    plans = plan_model(spec, input_shape, num_classes)
    built = []
    for plan in plans:
        layer_class = getattr(nn_layers, plan.kind)
        kwargs = dict(plan.kwargs)
        if plan.kind in ("Conv2d", "Linear", "Dropout"):
            kwargs["rng"] = rng
        built.append(layer_class(*plan.args, **kwargs))
    model = Sequential(*built)
    model.spec = spec.strip()
    model.input_shape = tuple(int(size) for size in input_shape)
    model.num_classes = int(num_classes)
    return model


def resolve_spec(spec: str) -> str:
    """The spec string a name stands for (a spec is returned unchanged)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty model spec: give one of {', '.join(MODEL_NAMES)} or a spec "
                          f"({_SPEC_HELP})")
    return NAMED_SPECS.get(spec.strip().lower(), spec.strip())


def spec_tokens(spec: str) -> list[str]:
    """The tokens of ``spec`` (a name is resolved first); an unknown model name raises ConfigError.

    Needs no input shape, so callers can reject a misspelt name before loading any data.
    """
    resolved = resolve_spec(spec)
    tokens = [token for token in re.split(r"[\s,\-]+", resolved.lower()) if token]
    if not all(token.isdigit() for token in tokens) \
            and not any(character.isdigit() for character in resolved) \
            and not all(_is_known_kind(token) for token in tokens):
        _raise_unknown_name(spec)
    return tokens


def spec_num_classes(spec: str) -> int | None:
    """The class count a size list such as "784-500-11" ends with (None for other specs)."""
    try:
        tokens = spec_tokens(spec)
    except ConfigError:
        return None
    return int(tokens[-1]) if len(tokens) >= 2 and all(t.isdigit() for t in tokens) else None


def plan_model(spec: str, input_shape=(1, 28, 28), num_classes: int = 10) -> list[LayerPlan]:
    """Parse ``spec`` and work out every layer's output shape, without allocating weights."""
    input_shape = _check_input_shape(input_shape)
    num_classes = positive_int(num_classes, "number of classes")
    original = spec
    tokens = spec_tokens(spec)
    if all(token.isdigit() for token in tokens):
        return _plan_layer_sizes(tokens, input_shape, num_classes, original)
    planner = _Planner(input_shape)
    for position, token in enumerate(tokens, start=1):
        planner.add_token(position, token)
    planner.finish(num_classes)
    total = sum(plan.parameters for plan in planner.plans)
    if total > _MAX_PARAMETERS:
        raise ConfigError(f"model '{original}' would have {total:,} parameters "
                          f"(more than {_MAX_PARAMETERS:,}); use fewer or narrower layers")
    return planner.plans


def _check_input_shape(input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(size) for size in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input shape must be C,H,W (like 1,28,28), got {input_shape!r}") from None
    if len(shape) not in (1, 3) or any(size < 1 for size in shape):
        raise ConfigError(f"input shape must be C,H,W (like 1,28,28) or F with sizes >= 1, "
                          f"got {shape}")
    return shape


def _is_known_kind(token: str) -> bool:
    match = re.match(r"[a-z]+", token)
    return bool(match) and match.group() in _KINDS


def _raise_unknown_name(spec: str):
    candidates = list(MODEL_NAMES) + ["fc500", "c32k3p1-p2-c64k3p1-p2"]
    close = difflib.get_close_matches(spec.strip().lower(), candidates, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"unknown model '{spec}': {hint}use one of {', '.join(MODEL_NAMES)} "
                      f"or a spec ({_SPEC_HELP})")


def _plan_layer_sizes(tokens, input_shape, num_classes, original) -> list[LayerPlan]:
    """The lecture's ``f_n`` list "784-500-10": input size, hidden widths, classes."""
    sizes = [int(token) for token in tokens]
    features = math.prod(input_shape)
    if len(sizes) < 2:
        raise ConfigError(f"spec '{original}': a list of sizes needs the input size and the "
                          f"number of classes at least (like '{features}-500-{num_classes}'); "
                          f"for one hidden layer write 'fc{sizes[0]}'")
    if sizes[0] != features:
        raise ConfigError(f"spec '{original}': the first size is the input size, {sizes[0]}, but "
                          f"the input {format_shape(input_shape)} has {features} values; "
                          f"write '{features}-{'-'.join(tokens)}' (or 'fc{tokens[0]}')")
    if sizes[-1] != num_classes:
        raise ConfigError(f"spec '{original}': the last size is the number of classes, "
                          f"{sizes[-1]}, but {num_classes} classes are wanted (the dataset's, "
                          f"or --num-classes); end the list with {num_classes}")
    planner = _Planner(input_shape)
    for position, width in enumerate(sizes[1:-1], start=2):
        planner.add_token(position, f"fc{width}")
    planner.finish(num_classes)
    return planner.plans


class _Planner:
    """Turns tokens into LayerPlans, tracking the current shape (per sample, no batch axis)."""

    def __init__(self, input_shape: tuple[int, ...]):
        self.shape = input_shape
        self.plans: list[LayerPlan] = []
        self.pending_activation = False   # a conv/fc whose activation is not placed yet
        self.position = 0
        self.token = ""

    # errors name the layer as the user wrote it

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"layer {self.position} '{self.token}': {message}")

    def add(self, kind: str, *args, parameters: int = 0, **kwargs) -> None:
        """Plan ``nn.<kind>(*args, **kwargs)``; its output shape is the layer class's own
        ``output_shape_for`` (no layer, no weights are made)."""
        from cnnlab.nn import layers as nn_layers

        layer_class = getattr(nn_layers, kind)
        output_shape = tuple(layer_class.output_shape_for((1,) + self.shape, *args, **kwargs)[1:])
        self.plans.append(LayerPlan(kind, args, kwargs, output_shape, parameters))
        self.shape = output_shape

    def add_token(self, position: int, token: str) -> None:
        self.position, self.token = position, token
        head = re.match(r"[a-z]+", token)
        if head is None:
            raise self.error(f"a layer starts with its kind ({_SPEC_HELP})")
        kind, rest = head.group(), token[head.end():]
        if kind == "bn":
            self._expect_no_rest(rest)
            return self.add_batch_norm()
        if kind in _ACTIVATIONS:
            self.pending_activation = False
            return self.add_activation(kind, rest)
        self.place_pending_activation()
        if kind in ("c", "conv"):
            self.add_conv(rest)
        elif kind in ("fc", "linear"):
            self.add_linear(rest)
        elif kind in ("p", "pool", "maxpool", "ap", "avgpool"):
            self.add_pool("AvgPool2d" if kind in ("ap", "avgpool") else "MaxPool2d", rest)
        elif kind in ("drop", "dropout"):
            self.add_dropout(rest)
        elif kind == "flatten":
            self._expect_no_rest(rest)
            self.flatten()
        else:
            close = difflib.get_close_matches(kind, _KINDS, n=1, cutoff=0.4)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise self.error(f"unknown layer kind '{kind}'{hint} ({_SPEC_HELP})")

    def finish(self, num_classes: int) -> None:
        self.position, self.token = len(self.plans) + 1, f"classifier Linear(..., {num_classes})"
        self.place_pending_activation()
        self.flatten()
        self.add("Linear", self.shape[0], num_classes,
                 parameters=self.shape[0] * num_classes + num_classes)

    # layer kinds

    def add_conv(self, rest: str) -> None:
        options = self._options(rest, {"": None, "k": None, "s": 1, "p": 0, "d": 1}, "c32k3p1")
        out_channels, kernel = options[""], options["k"]
        if out_channels is None or kernel is None:
            raise self.error("a conv layer needs output channels and a kernel size, like c32k3 "
                             "(options: s STRIDE, p PADDING or psame, d DILATION)")
        self._check_positive(out_channels=out_channels, kernel_size=kernel, stride=options["s"],
                             dilation=options["d"])
        self._check_width(out_channels)
        padding = options["p"]
        if padding == "same":
            self._check_same_padding(kernel, options)
        if len(self.shape) != 3:
            raise self.error(f"a conv layer needs (C, H, W) input, but its input is "
                             f"{format_shape(self.shape)} (after flatten/fc): move it earlier")
        channels = self.shape[0]
        try:
            self.add("Conv2d", channels, out_channels, kernel, stride=options["s"], padding=padding,
                     dilation=options["d"],
                     parameters=out_channels * channels * kernel * kernel + out_channels)
        except ShapeError as error:
            raise self._does_not_fit("kernel", kernel, options["s"], padding, options["d"],
                                     error) from None
        self.pending_activation = True

    def add_linear(self, rest: str) -> None:
        options = self._options(rest, {"": None}, "fc128")
        width = options[""]
        if width is None:
            raise self.error("a fully connected layer needs its width, like fc128")
        self._check_positive(out_features=width)
        self._check_width(width)
        self.flatten()
        self.add("Linear", self.shape[0], width,
                 parameters=self.shape[0] * width + width)
        self.pending_activation = True

    def add_pool(self, kind: str, rest: str) -> None:
        options = self._options(rest, {"": 2, "s": None, "p": 0}, "p2")
        kernel = options[""]
        stride = options["s"] if options["s"] is not None else kernel
        self._check_positive(kernel_size=kernel, stride=stride)
        padding = options["p"]
        if padding == "same":
            raise self.error(f"pool padding must be a number, at most half the kernel ({kernel})")
        if len(self.shape) != 3:
            raise self.error(f"pooling needs (C, H, W) input, but its input is {format_shape(self.shape)}")
        try:
            self.add(kind, kernel, stride=stride, padding=padding)
        except ShapeError as error:
            raise self._does_not_fit("pool window", kernel, stride, padding, 1, error) from None

    def add_dropout(self, rest: str) -> None:
        try:
            probability = float(rest) if rest else 0.5
        except ValueError:
            raise self.error("dropout is 'drop' (p = 0.5) or 'drop0.3'") from None
        if not 0.0 <= probability < 1.0:
            raise self.error(f"dropout probability must be in [0, 1), got {probability}")
        self.add("Dropout", p=probability)

    def add_batch_norm(self) -> None:
        channels = self.shape[0]
        kind = "BatchNorm2d" if len(self.shape) == 3 else "BatchNorm1d"
        self.add(kind, channels, parameters=2 * channels)

    def add_activation(self, kind: str, rest: str) -> None:
        if kind in ("lrelu", "leakyrelu"):
            try:
                slope = float(rest) if rest else 0.01
            except ValueError:
                raise self.error("leaky ReLU is 'lrelu' (slope 0.01) or 'lrelu0.1'") from None
            return self.add("LeakyReLU", negative_slope=slope)
        self._expect_no_rest(rest)
        self.add({"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}[kind])

    def place_pending_activation(self) -> None:
        """A conv or fc gets a ReLU unless the spec names its activation (after an optional bn)."""
        if self.pending_activation:
            self.pending_activation = False
            self.add("ReLU")

    def flatten(self) -> None:
        if len(self.shape) != 1:
            self.add("Flatten")

    # helpers

    def _options(self, rest: str, defaults: dict, example: str) -> dict:
        """Parse "32k3s2p1" style text: a leading number, then letter+number options."""
        values = dict(defaults)
        seen = set()
        for letter, value in re.findall(r"([a-z]*)(\d+|same)", rest):
            if letter not in defaults:
                allowed = ", ".join(f"'{key}'" for key in defaults if key)
                raise self.error(f"unknown option '{letter}' (allowed: {allowed or 'none'}; "
                                 f"example '{example}')")
            if letter in seen:
                raise self.error(f"option '{letter or 'size'}' given twice")
            if value == "same" and letter != "p":
                raise self.error("'same' is a padding value: write psame")
            seen.add(letter)
            values[letter] = value if value == "same" else int(value)
        if re.sub(r"([a-z]*)(\d+|same)", "", rest):
            raise self.error(f"cannot read '{rest}' (example '{example}')")
        return values

    def _expect_no_rest(self, rest: str) -> None:
        if rest:
            raise self.error(f"unexpected '{rest}' after the layer kind")

    def _check_positive(self, **sizes) -> None:
        for name, value in sizes.items():
            if value < 1:
                raise self.error(f"{name.replace('_', ' ')} must be >= 1, got {value}")

    def _check_width(self, width: int) -> None:
        if width > _MAX_WIDTH:
            raise self.error(f"width {width} is more than {_MAX_WIDTH}")

    def _check_same_padding(self, kernel: int, options: dict) -> None:
        """psame is PyTorch's padding='same' (:func:`cnnlab.ops.conv.conv2d_padding`)."""
        from cnnlab.ops.conv import conv2d_padding

        conv2d_padding("same", kernel, options["s"], options["d"], error=self.error)

    def _does_not_fit(self, what: str, kernel: int, stride: int, padding, dilation: int,
                      error: ShapeError) -> ConfigError:
        """The layer's ShapeError, with the lecture's formula spelled out when the window does
        not fit: H_out = floor((H_in + 2p - d(k - 1) - 1) / s + 1) (:func:`output_length`)."""
        from cnnlab.ops.conv import output_length

        height, width = self.shape[1:]
        if padding == "same":
            return self.error(str(error))
        out_height = output_length(height, kernel, stride, padding, padding, dilation)
        if min(out_height, output_length(width, kernel, stride, padding, padding, dilation)) >= 1:
            return self.error(str(error))
        return self.error(
            f"{what} {kernel} (stride {stride}, padding {padding}, dilation {dilation}) does "
            f"not fit the {height}x{width} input: floor(({height} + 2*{padding} - {dilation}*"
            f"({kernel}-1) - 1)/{stride} + 1) = {out_height}; use a smaller {what}, more padding "
            f"or fewer pooling layers before it")

