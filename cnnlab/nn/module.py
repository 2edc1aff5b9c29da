"""Parameter, Module and Sequential: the small core every layer is built on.

A :class:`Module` registers the :class:`Parameter` objects and child modules assigned to
its attributes (as ``torch.nn.Module`` does), so ``state_dict()`` has PyTorch's keys
("0.weight", "3.running_mean", ...) and shapes. ``forward`` keeps what ``backward`` needs on
the layer; ``backward(dy)`` returns ``dx`` and ADDS the parameter gradients into ``.grad``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from cnnlab import backend
from cnnlab.errors import CheckpointError, ShapeError
from cnnlab.nn import fusion


class Parameter:
    """A trainable array and its gradient.

    Args:
        data: the values; kept as given (no copy).
        name: the attribute name it was registered under (set by :class:`Module`).

    Attributes:
        data (ndarray): the values, updated in place by the optimizers.
        grad (ndarray): same shape and dtype as ``data``, allocated as zeros; ``backward``
            adds into it and ``zero_grad`` fills it with zeros again.
    """

    __slots__ = ("data", "grad", "name")

    def __init__(self, data: np.ndarray, name: str = "") -> None:
        self.data = np.asarray(data)
        self.grad = np.zeros_like(self.data)
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of all layers.

    Subclasses call ``super().__init__()`` first, assign parameters and child modules as
    attributes, register buffers with :meth:`register_buffer`, and implement ``forward(x)``
    and ``backward(dy)``.

    Attributes:
        training (bool): train mode (Dropout drops, BatchNorm uses batch statistics).
        requires_input_grad (bool): when False, ``backward`` may skip computing ``dx`` and
            return None (Sequential sets it on its first layers: nobody needs the gradient
            with respect to the images).
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffer_names", [])
        self.training = True
        self.requires_input_grad = True

    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            value.name = name
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: np.ndarray) -> None:
        """Add a state array that is saved in ``state_dict`` but not trained."""
        if name not in self._buffer_names:
            self._buffer_names.append(name)
        object.__setattr__(self, name, array)

    # forward / backward

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape ``forward`` returns for an input of ``input_shape`` (batch axis first).

        Each cnnlab layer works it out from its formula, without running (as each layer of
        JAX's stax does), and raises ShapeError naming itself when the input does not fit; its
        classmethod ``output_shape_for(input_shape, *constructor arguments)`` does the same
        before the layer (and its weights) exist. A Module without a formula is run once, in
        eval mode, on a batch of zeros.
        """
        was_training = self.training
        self.eval()
        try:
            output = self(np.zeros(tuple(input_shape), dtype=np.float32))
        finally:
            self.train(was_training)
        return tuple(output.shape)

    def _saved_cache(self):
        """The cache of the last forward; a clear error if there was none."""
        if "_cache" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called before forward(): "
                "call the layer on an input first"
            )
        return self._cache

    def cached(self) -> list:
        """What this module's last forward kept for its backward (not its children's)."""
        return [self.__dict__["_cache"]] if "_cache" in self.__dict__ else []

    def _forget_cache(self) -> None:
        self.__dict__.pop("_cache", None)

    def clear_cache(self) -> None:
        """Forget what the last forward kept for the backward, here and in every child.

        Frees that memory (activations, im2col columns); a backward then needs a new forward.
        """
        for module in self.modules():
            module._forget_cache()

    # traversal

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [
            (f"{prefix}.{name}" if prefix else name, parameter)
            for prefix, module in self.named_modules()
            for name, parameter in module._parameters.items()
        ]

    def parameters(self) -> list[Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

    def named_buffers(self) -> list[tuple[str, np.ndarray]]:
        return [
            (f"{prefix}.{name}" if prefix else name, getattr(module, name))
            for prefix, module in self.named_modules()
            for name in module._buffer_names
        ]

    # state

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters then buffers of each module, with PyTorch's keys and shapes.

        The arrays are the live ones (no copies), as in PyTorch; copy them to keep a snapshot.
        """
        state = {}
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, parameter in module._parameters.items():
                state[dot + name] = parameter.data
            for name in module._buffer_names:
                state[dot + name] = getattr(module, name)
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays into this module's parameters and buffers (in place, casting dtype).

        Args:
            state: key -> array, e.g. ``{k: v.numpy() for k, v in torch_model.state_dict().items()}``.
            strict: if True, missing or unexpected keys are an error; shape mismatches
                are always an error. Nothing is copied unless every check passes.

        Returns:
            (missing_keys, unexpected_keys)

        Raises:
            CheckpointError: one line listing missing keys, unexpected keys and shape mismatches.
        """
        own = self.state_dict()
        differences = state_differences(own, state)
        problems = []
        if strict and differences.missing:
            problems.append("missing keys: " + ", ".join(differences.missing))
        if strict and differences.unexpected:
            problems.append("unexpected keys: " + ", ".join(differences.unexpected))
        problems += [f"{key}: checkpoint shape {theirs}, model shape {ours}"
                     for key, theirs, ours in differences.shapes]
        problems += [f"{key}: checkpoint dtype {theirs}, model dtype {ours}"
                     for key, theirs, ours in differences.dtypes]
        if problems:
            raise CheckpointError(
                f"cannot load state into {type(self).__name__}: " + "; ".join(problems)
                + " (was it saved from the same model spec?)"
            )
        for key, target in own.items():
            if key in state:
                np.copyto(target, np.asarray(state[key]), casting="same_kind")
        return differences.missing, differences.unexpected

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for parameter in self.parameters():
            parameter.zero_grad()

    # printing, as PyTorch prints modules

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + _indent(repr(child)) for name, child in self._modules.items()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"


class StateDifferences(NamedTuple):
    """How a state dict differs from a module's own (see :func:`state_differences`)."""

    missing: list[str]                              # keys the module has and the state lacks
    unexpected: list[str]                           # keys the state has and the module lacks
    shapes: list[tuple[str, tuple, tuple]]          # (key, state's shape, module's shape)
    dtypes: list[tuple[str, np.dtype, np.dtype]]    # (key, state's, module's): no same-kind cast


def state_differences(own: dict, state: dict) -> StateDifferences:
    """The one check of a state dict against a module's ``state_dict()`` (``own``): the keys
    each lacks, and the arrays whose shape differs or whose dtype does not cast ("same_kind")
    into the module's. Used by :meth:`Module.load_state_dict` and by the checkpoint loader."""
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes, dtypes = [], []
    for key, target in own.items():
        if key not in state:
            continue
        source = np.asarray(state[key])
        if source.shape != np.shape(target):
            shapes.append((key, source.shape, np.shape(target)))
        elif not np.can_cast(source.dtype, np.asarray(target).dtype, casting="same_kind"):
            dtypes.append((key, source.dtype, np.asarray(target).dtype))
    return StateDifferences(missing, unexpected, shapes, dtypes)


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


class Sequential(Module):
    """Layers applied one after the other; ``backward`` runs them in reverse.

    Children are named "0", "1", ..., so ``state_dict`` keys are PyTorch's ("0.weight").
    The leading layers up to and including the first one with parameters get
    ``requires_input_grad = False``: the gradient with respect to the input images is never
    computed, and ``backward`` returns None. Set ``model.requires_input_grad = True`` to get it
    (saliency maps, gradient checks).

    Example::

        model = Sequential(Conv2d(1, 32, 3, padding=1, rng=rng), ReLU(), MaxPool2d(2))
        logits = model(x)
        model.backward(dlogits)
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {index} is {type(layer).__name__}, not a Module")
            setattr(self, str(index), layer)
        self.requires_input_grad = False

    @property
    def requires_input_grad(self) -> bool:
        return self.__dict__["_requires_input_grad"]

    @requires_input_grad.setter
    def requires_input_grad(self, value: bool) -> None:
        object.__setattr__(self, "_requires_input_grad", bool(value))
        needed = bool(value)
        for layer in self._modules.values():
            layer.requires_input_grad = needed
            # a layer after one with parameters must pass the gradient back to it
            needed = needed or bool(layer.parameters())

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Each layer's :meth:`Module.output_shape` in turn; a ShapeError names the layer."""
        shape = tuple(input_shape)
        for index, layer in enumerate(self):
            try:
                shape = layer.output_shape(shape)
            except ShapeError as error:
                raise ShapeError(f"layer {index} {error}") from None
        return shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        shards = backend.shards_for_call(self, x)
        if shards > 1:
            # A batch big enough for several cores runs as `cnnlab train` runs it: shards on
            # replicas (cnnlab/backend/parallel.py); backward then goes through them too.
            runner = self.__dict__.get("_runner")
            if runner is None or runner.threads != shards:
                runner = backend.DataParallel(self, shards)
                object.__setattr__(self, "_runner", runner)
            y = runner.forward(x)  # shard 0 runs this model's own plain forward, below
            self._sharded = True
            return y
        if not backend.in_step():
            self._sharded = False
        # Runs of layers that fuse into one op (cnnlab/nn/fusion.py); backward replays the plan.
        self._steps = fusion.plan(list(self._modules.values()))
        for step in self._steps:
            x = step.forward(x)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        if self.__dict__.get("_sharded") and not backend.in_step():
            return self._runner.backward(dy)
        steps = self.__dict__.get("_steps")
        if steps is None:
            raise RuntimeError("Sequential.backward() called before forward(): call the model on "
                               "an input first")
        for step in reversed(steps):
            dy = step.backward(dy)
            if dy is None:
                # only layers that need no input gradient and hold no parameters remain
                break
        return dy

    @property
    def plan(self) -> list | None:
        """The steps the last forward ran (cnnlab/nn/fusion.py), or None before any forward."""
        return self.__dict__.get("_steps")

    def cached(self) -> list:
        return list(self.__dict__.get("_steps") or [])

    def _forget_cache(self) -> None:
        self.__dict__.pop("_steps", None)
        self.__dict__.pop("_sharded", None)
        if self.__dict__.get("_runner") is not None:
            self._runner.clear_cache()
