r"""The fused Conv -> ReLU -> MaxPool 2 block (math: cnnlab/ops/fused.py), without the
conv's full-size output.

The lecture CNN is two blocks Conv(k3, p1) -> ReLU -> MaxPool 2. Run as three ops, each
conv writes a full-size activation (6.4 MB per 64 images after conv1) that the pool
reads back, and the backward writes and reads a gradient of that size again. Fused, only
the pooled output and one byte per window (which pixel was the maximum, or "the ReLU gave
0") are stored. Two ways, chosen per call:

- **direct** (few input terms, C_in kH kW <= :data:`MAX_DIRECT_TERMS`, and no dX wanted:
  a network's first layer): one (image, channel) plane at a time in cnnlab's C loops; the
  conv output plane stays in the L1 cache and is pooled there. The backward rebuilds each
  plane's gradient from the recorded bytes and correlates it with the input for dW and db
  (lecture 002's formulas).
- **Winograd** (3x3 kernels with enough input channels, cnnlab/backend/winograd.py): each
  tile's 2x2 outputs are exactly one pool window, so the output transform pools as it goes,
  and the backward's transform reads the pooled gradient and the bytes directly.

Pooling first is exact (max pooling commutes with ReLU), so the result is that of the
three ops up to float rounding (the conv sums in another order). Otherwise (float64, the
"numpy" level, other kernels), the backend's conv, pool and ReLU run one after the other,
with the same bits as the layers.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.backend import dispatch, winograd
from cnnlab.backend.conv import conv2d_backward, conv2d_forward
from cnnlab.backend.kernels import (max_pool2d_backward, max_pool2d_forward, relu_backward,
                                    relu_forward)
from cnnlab.ops.conv import ConvSetup

#: Largest C_in * kH * kW that the direct path computes (beyond it, a GEMM is faster).
MAX_DIRECT_TERMS = 32


def _direct_module(setup: ConvSetup):
    """The compiled loops when the direct path can run this conv (float32, few terms)."""
    module = dispatch.fused_loops()
    terms = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    if module is None or setup.dtype != np.float32 or terms > MAX_DIRECT_TERMS:
        return None
    return module


class _FusedCache:
    """What the backward needs: the path taken, the input, and the recorded window bytes."""

    __slots__ = ("path", "setup", "x", "weight", "has_bias", "input_grad", "code", "unfused")

    def __init__(self, path, setup, x, weight, has_bias, input_grad, code=None, unfused=None):
        # weight: the filters for the direct path, Winograd's transformed ones (U) for its path
        self.path, self.setup, self.x, self.weight = path, setup, x, weight
        self.has_bias, self.input_grad, self.code, self.unfused = has_bias, input_grad, code, unfused


def conv2d_relu_maxpool2d_forward(x, weight, bias=None, padding=0, input_grad=False):
    r"""``max_pool2d(relu(conv2d(x, weight, bias, padding=padding)), 2)`` without storing the
    conv output (arguments and shapes: :func:`cnnlab.ops.fused.conv2d_relu_maxpool2d_forward`).

    Returns:
        ``(y, cache)``; pass the cache once to :func:`conv2d_relu_maxpool2d_backward`.
    """
    setup = ConvSetup(x, weight, bias, 1, padding, 1, 1)
    pooled = (setup.batch, setup.out_channels, setup.out_hw[0] // 2, setup.out_hw[1] // 2)
    has_bias = bias is not None
    if min(pooled[2:]) >= 1:
        module = None if input_grad else _direct_module(setup)
        if module is not None:
            x = np.ascontiguousarray(x)
            y, code = np.empty(pooled, dtype=np.float32), np.empty(pooled, dtype=np.uint8)
            bias_values = bias if has_bias else np.zeros(setup.out_channels, dtype=np.float32)
            module.conv_relu_pool_forward(x, np.ascontiguousarray(weight),
                                          np.ascontiguousarray(bias_values), y, code,
                                          *_direct_geometry(setup))
            return y, _FusedCache("direct", setup, x, weight, has_bias, False, code)
        if winograd.usable(setup):
            x = np.ascontiguousarray(x)
            y, code = np.empty(pooled, dtype=np.float32), np.empty(pooled, dtype=np.uint8)
            u = winograd.forward(x, weight, bias, setup, y, code=code)
            return y, _FusedCache("winograd", setup, x, u, has_bias, input_grad, code)
    conv_y, conv_cache = conv2d_forward(x, weight, bias, padding=padding)
    pooled_y, pool_cache = max_pool2d_forward(conv_y, 2)
    y, relu_mask = relu_forward(pooled_y)
    return y, _FusedCache("layers", setup, x, weight, has_bias, input_grad,
                          unfused=(conv_cache, pool_cache, relu_mask))


def conv2d_relu_maxpool2d_backward(dy, cache):
    """Gradients of :func:`conv2d_relu_maxpool2d_forward` (the formulas:
    :func:`cnnlab.ops.fused.conv2d_relu_maxpool2d_backward`): ``(dx, dweight, dbias)``, dx
    None unless the forward had ``input_grad=True``, dbias None without a bias."""
    if cache.path == "layers":
        conv_cache, pool_cache, relu_mask = cache.unfused
        conv_dy = max_pool2d_backward(relu_backward(dy, relu_mask), pool_cache)
        return conv2d_backward(conv_dy, conv_cache, input_grad=cache.input_grad)
    if not isinstance(dy, np.ndarray) or dy.shape != cache.code.shape:
        raise ShapeError(f"gradient has shape {getattr(dy, 'shape', dy)}, expected {cache.code.shape} "
                         "(the shape of the forward's output)")
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    if cache.path == "winograd":
        dweight, dbias, dx = winograd.backward(dy, cache.x, cache.weight, cache.setup,
                                                cache.input_grad, code=cache.code)
    else:
        dweight = np.zeros(cache.weight.shape, dtype=np.float64)
        dbias = np.zeros(cache.setup.out_channels, dtype=np.float64)
        dispatch.fused_loops().conv_relu_pool_backward(cache.x, dy, cache.code, dweight, dbias,
                                               *_direct_geometry(cache.setup))
        dweight, dx = dweight.astype(np.float32), None
    return dx, dweight, dbias.astype(np.float32) if cache.has_bias else None


def _direct_geometry(setup: ConvSetup) -> tuple[int, int, int, int]:
    """pad_top, pad_left, H_in + padding, W_in + padding: what the C loops take."""
    return (setup.pads[0], setup.pads[2]) + setup.padded_hw
