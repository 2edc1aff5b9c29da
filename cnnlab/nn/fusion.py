"""Which runs of a Sequential's layers execute as one fused op: an explicit plan.

:func:`plan` reads the layers and returns the steps a :class:`~cnnlab.nn.module.Sequential`
runs, forward in order and backward in reverse. Each step keeps what its backward needs
(nothing is stored on other objects' private attributes). Two fusions, both exact:

- ``ReLU -> MaxPool2d`` (stride = kernel, no padding): max pooling commutes with ReLU,
  ``max(relu(x)) = relu(max(x))``, so pooling first lets the ReLU (forward and backward)
  run on an array kernel_size^2 times smaller. The pool's argmax over x is the argmax over
  relu(x) wherever the window's maximum is > 0, and elsewhere the gradient is 0 either way:
  outputs and gradients are bit for bit those of the two layers.
- ``Conv2d (stride 1, no dilation or groups) -> ReLU -> MaxPool2d(2)``: one op
  (:func:`cnnlab.backend.conv2d_relu_maxpool2d_forward`) that never stores the conv's
  full-size output; the three layers' result up to float rounding (bit for bit where the
  backend runs them one after the other).

A layer takes part when its class itself declares ``fusion_kind`` ("conv2d", "relu",
"max_pool2d"); a subclass (which may compute something else) must declare it again.
"""

from __future__ import annotations

import numpy as np

from cnnlab import backend


def _kind(layer) -> str | None:
    return type(layer).__dict__.get("fusion_kind")


class LayerStep:
    """One layer, run as it is."""

    def __init__(self, layer) -> None:
        self.layers = (layer,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.layers[0](x)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        return self.layers[0].backward(dy)


class ReluPoolStep:
    """ReLU then a tiling max pool, run as pool then ReLU (exact; see the module docs)."""

    def __init__(self, relu, pool) -> None:
        self.layers = (relu, pool)
        self.mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        relu, pool = self.layers
        pooled = pool(x)
        y, self.mask = backend.relu_forward(pooled)
        relu.clear_cache()  # its cache would be full-size; the pooled mask is kept here instead
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        relu, pool = self.layers
        if not relu.requires_input_grad:
            return None
        return pool.backward(backend.relu_backward(dy, self.mask))


class ConvReluPoolStep:
    """Conv2d -> ReLU -> MaxPool2d(2) as one backend op."""

    def __init__(self, conv, relu, pool) -> None:
        self.layers = (conv, relu, pool)
        self.cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        conv = self.layers[0]
        bias = None if conv.bias is None else conv.bias.data
        y, self.cache = backend.conv2d_relu_maxpool2d_forward(
            x, conv.weight.data, bias, padding=conv.op_padding, input_grad=conv.requires_input_grad)
        for layer in self.layers:
            layer.clear_cache()  # a stale cache must not meet a later backward
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        conv = self.layers[0]
        if self.cache is None:
            raise RuntimeError("Sequential.backward() called before forward(): call the model "
                               "on an input first")
        if conv.requires_input_grad and not self.cache.input_grad:
            raise RuntimeError("requires_input_grad was switched on after the forward, which did not "
                               "keep what the input's gradient needs; run the forward again after "
                               "setting it")
        dx, dweight, dbias = backend.conv2d_relu_maxpool2d_backward(dy, self.cache)
        conv.weight.grad += dweight
        if conv.bias is not None:
            conv.bias.grad += dbias
        return dx if conv.requires_input_grad else None


def _relu_pool_at(layers: list, position: int) -> bool:
    if position + 1 >= len(layers):
        return False
    relu, pool = layers[position], layers[position + 1]
    return (_kind(relu) == "relu" and _kind(pool) == "max_pool2d" and pool.padding == 0
            and pool.stride == pool.kernel_size
            and relu.requires_input_grad == pool.requires_input_grad)


def _conv_relu_pool_at(layers: list, index: int) -> bool:
    conv = layers[index]
    return (_kind(conv) == "conv2d" and _relu_pool_at(layers, index + 1)
            and layers[index + 2].kernel_size in (2, (2, 2))
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def plan(layers: list) -> list:
    """The steps that run ``layers``: fused where a rule of the module docs applies."""
    steps, index = [], 0
    while index < len(layers):
        if _conv_relu_pool_at(layers, index):
            steps.append(ConvReluPoolStep(*layers[index:index + 3]))
        elif _relu_pool_at(layers, index):
            steps.append(ReluPoolStep(*layers[index:index + 2]))
        else:
            steps.append(LayerStep(layers[index]))
        index += len(steps[-1].layers)
    return steps


def describe(steps: list) -> list[str]:
    """The plan in words, e.g. ``["conv2d+relu+max_pool2d", "flatten", ...]`` (for tests and
    bug reports)."""
    return ["+".join(_kind(layer) or type(layer).__name__.lower() for layer in step.layers)
            for step in steps]
