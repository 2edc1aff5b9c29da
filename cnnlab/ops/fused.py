r"""A first convolution, its ReLU and a 2x2 max pool as one op (the lecture CNN's first block).

.. math::
    Y[b, c, i, j] = \max_{m, n \in \{0, 1\}} \operatorname{ReLU}\big((W \star X)[b, c, 2i + m, 2j + n]
        + \text{bias}[c]\big)

The lecture CNN starts with Conv(1 -> 32, k3, p1) -> ReLU -> MaxPool 2 on the images. Run
as three ops, the conv writes a (N, 32, 28, 28) activation (6.4 MB per 64 images) that
the pool reads back, and the backward writes and reads a gradient of that size again.
Fused, the block runs one (image, channel) plane at a time in cnnlab's C loops: the conv
output plane stays in the L1 cache, is pooled there, and only the pooled (N, 32, 14, 14)
output and one byte per window (which pixel was the maximum, or "ReLU was 0") are stored.
The backward rebuilds each plane's gradient from those bytes and correlates it with the
input for dW and db (lecture 002's formulas). It computes no dX: this fusion is for a
network's first layer, whose input gradient nobody needs.

Pooling first is exact (max pooling commutes with ReLU, see cnnlab/nn/module.py), so the
result is that of the three ops up to float rounding (the conv sums in another order).
Without the C loops (not built, float64, or a CPU without AVX-512), the op runs those
three ops one after the other.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.ops import _kernels
from cnnlab.ops.activation import relu_backward, relu_forward
from cnnlab.ops.conv import conv2d_backward, conv2d_forward, conv2d_output_size
from cnnlab.ops.pool import max_pool2d_backward, max_pool2d_forward

#: Largest C_in * kH * kW that the fused op computes directly (beyond it, im2col + GEMM is faster).
MAX_DIRECT_TERMS = 32

_INACTIVE = 255  # a window whose ReLU output is 0: no gradient flows through it


def _direct_module(x, weight, bias):
    """cnnlab._loops when it can run this block (float32, small C_in kH kW, AVX-512), else None."""
    module = _kernels.get()
    if (module is None or not module.conv_relu_pool_usable()
            or x.dtype != np.float32 or weight.dtype != np.float32
            or (bias is not None and bias.dtype != np.float32)
            or weight.shape[1] * weight.shape[2] * weight.shape[3] > MAX_DIRECT_TERMS):
        return None
    return module


class _FusedCache:
    __slots__ = ("x", "weight_shape", "has_bias", "padding", "code", "unfused")

    def __init__(self, x, weight_shape, has_bias, padding, code, unfused):
        self.x, self.weight_shape, self.has_bias = x, weight_shape, has_bias
        self.padding, self.code, self.unfused = padding, code, unfused


def conv2d_relu_maxpool2d_forward(x, weight, bias=None, padding=0):
    r"""``max_pool2d(relu(conv2d(x, weight, bias, padding=padding)), 2)`` in one pass.

    Args:
        x: input images.
        weight: filters, as for :func:`cnnlab.ops.conv.conv2d_forward` (stride 1, no
            dilation, no groups).
        bias: one value per output channel, or None.
        padding: zeros added on each side of the input, an int or (p_h, p_w).

    Shape:
        - x: (N, C_in, H_in, W_in), float32 or float64
        - weight: (C_out, C_in, kH, kW); bias: (C_out,)
        - y: (N, C_out, H_conv // 2, W_conv // 2), where H_conv = H_in + 2 p_h - kH + 1
          (the conv's output size), likewise W

    Returns:
        ``(y, cache)``; pass the cache once to :func:`conv2d_relu_maxpool2d_backward`.
    """
    padding = (padding, padding) if isinstance(padding, (int, np.integer)) else tuple(padding)
    conv_hw = conv2d_output_size(x.shape[2:], weight.shape[2:], padding=padding)
    module = _direct_module(x, weight, bias) if x.ndim == 4 and min(conv_hw) >= 2 else None
    if module is None:
        conv_y, conv_cache = conv2d_forward(x, weight, bias, padding=padding)
        pooled, pool_cache = max_pool2d_forward(conv_y, 2)
        y, relu_mask = relu_forward(pooled)
        unfused = (conv_cache, pool_cache, relu_mask)
        return y, _FusedCache(x, weight.shape, bias is not None, padding, None, unfused)
    x = np.ascontiguousarray(x)
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(f"conv2d weight {weight.shape} expects {weight.shape[1]} input channels "
                         f"but the input has {x.shape[1]}")
    y = np.empty((x.shape[0], weight.shape[0], conv_hw[0] // 2, conv_hw[1] // 2), dtype=np.float32)
    code = np.empty(y.shape, dtype=np.uint8)
    bias_values = bias if bias is not None else np.zeros(weight.shape[0], dtype=np.float32)
    module.conv_relu_pool_forward(x, np.ascontiguousarray(weight), np.ascontiguousarray(bias_values),
                                  y, code, *_geometry(x, padding))
    return y, _FusedCache(x, weight.shape, bias is not None, padding, code, None)


def conv2d_relu_maxpool2d_backward(dy, cache):
    r"""dW and db of :func:`conv2d_relu_maxpool2d_forward` (no dX: the first layer needs none).

    The pooled gradient goes back to each window's maximum where the ReLU let it through,
    giving dY of the conv output; then, as in :func:`cnnlab.ops.conv.conv2d_backward`,

    .. math::
        \frac{\partial L}{\partial W[c_o, c_i, m, n]} = \sum_{b, i, j} dY[b, c_o, i, j] \,
            X[b, c_i, i + m - p, j + n - p], \qquad
        \frac{\partial L}{\partial b_{c_o}} = \sum_{b, i, j} dY[b, c_o, i, j]

    Returns:
        ``(dweight, dbias)``, fresh arrays of the input's dtype; dbias is None without a bias.
    """
    if cache.unfused is not None:
        conv_cache, pool_cache, relu_mask = cache.unfused
        conv_dy = max_pool2d_backward(relu_backward(dy, relu_mask), pool_cache)
        _, dweight, dbias = conv2d_backward(conv_dy, conv_cache, input_grad=False)
        return dweight, dbias
    if not isinstance(dy, np.ndarray) or dy.shape != cache.code.shape:
        raise ShapeError(f"gradient has shape {getattr(dy, 'shape', dy)}, expected {cache.code.shape} "
                         "(the shape of the forward's output)")
    dweight = np.zeros(cache.weight_shape, dtype=np.float64)
    dbias = np.zeros(cache.weight_shape[0], dtype=np.float64)
    _kernels.get().conv_relu_pool_backward(cache.x, np.ascontiguousarray(dy, dtype=np.float32),
                                           cache.code, dweight, dbias,
                                           *_geometry(cache.x, cache.padding))
    return dweight.astype(np.float32), dbias.astype(np.float32) if cache.has_bias else None


def _geometry(x, padding) -> tuple[int, int, int, int]:
    """pad_top, pad_left, H_in + 2 p_h, W_in + 2 p_w: what the C loops take."""
    return (padding[0], padding[1], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])
