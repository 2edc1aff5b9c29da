r"""A convolution, its ReLU and a 2x2 max pool as one op (the lecture CNN's blocks).

.. math::
    Y[b, c, i, j] = \max_{m, n \in \{0, 1\}} \operatorname{ReLU}\big((W \star X)[b, c, 2i + m, 2j + n]
        + \text{bias}[c]\big)

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
- **Winograd** (3x3 kernels with enough input channels, cnnlab/ops/_winograd.py): each
  tile's 2x2 outputs are exactly one pool window, so the output transform pools as it goes,
  and the backward's transform reads the pooled gradient and the bytes directly.

Pooling first is exact (max pooling commutes with ReLU, see cnnlab/nn/module.py), so the
result is that of the three ops up to float rounding (the conv sums in another order).
Otherwise (float64, no compiled loops, no AVX-512, other kernels), the op runs the three
ops one after the other, with the same bits as the layers.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.ops import _kernels, _winograd
from cnnlab.ops.activation import relu_backward, relu_forward
from cnnlab.ops.conv import _ConvSetup, conv2d_backward, conv2d_forward
from cnnlab.ops.pool import max_pool2d_backward, max_pool2d_forward

#: Largest C_in * kH * kW that the direct path computes (beyond it, a GEMM is faster).
MAX_DIRECT_TERMS = 32


def _direct_module(setup: _ConvSetup):
    """cnnlab._loops when the direct path can run this conv (float32, few terms, AVX-512)."""
    module = _kernels.get()
    terms = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    if (module is None or setup.dtype != np.float32 or terms > MAX_DIRECT_TERMS
            or not module.conv_relu_pool_usable()):
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
    r"""``max_pool2d(relu(conv2d(x, weight, bias, padding=padding)), 2)`` without storing the conv output.

    Args:
        x: input images.
        weight: filters, as for :func:`cnnlab.ops.conv.conv2d_forward` (stride 1, no
            dilation, no groups).
        bias: one value per output channel, or None.
        padding: zeros added on each side of the input, an int or (p_h, p_w).
        input_grad: whether the backward will be asked for dX (the direct path computes none).

    Shape:
        - x: (N, C_in, H_in, W_in), float32 or float64
        - weight: (C_out, C_in, kH, kW); bias: (C_out,)
        - y: (N, C_out, H_conv // 2, W_conv // 2), where H_conv = H_in + 2 p_h - kH + 1
          (the conv's output size), likewise W

    Returns:
        ``(y, cache)``; pass the cache once to :func:`conv2d_relu_maxpool2d_backward`.
    """
    setup = _ConvSetup(x, weight, bias, 1, padding, 1, 1)
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
        if _winograd.usable(setup):
            x = np.ascontiguousarray(x)
            y, code = np.empty(pooled, dtype=np.float32), np.empty(pooled, dtype=np.uint8)
            u = _winograd.forward(x, weight, bias, setup, y, code=code)
            return y, _FusedCache("winograd", setup, x, u, has_bias, input_grad, code)
    conv_y, conv_cache = conv2d_forward(x, weight, bias, padding=padding)
    pooled_y, pool_cache = max_pool2d_forward(conv_y, 2)
    y, relu_mask = relu_forward(pooled_y)
    return y, _FusedCache("layers", setup, x, weight, has_bias, input_grad,
                          unfused=(conv_cache, pool_cache, relu_mask))


def conv2d_relu_maxpool2d_backward(dy, cache):
    r"""Gradients of :func:`conv2d_relu_maxpool2d_forward`.

    The pooled gradient goes back to each window's maximum where the ReLU let it through,
    giving dY of the conv output; then, as in :func:`cnnlab.ops.conv.conv2d_backward`,

    .. math::
        \frac{\partial L}{\partial W[c_o, c_i, m, n]} = \sum_{b, i, j} dY[b, c_o, i, j] \,
            X[b, c_i, i + m - p, j + n - p], \qquad
        \frac{\partial L}{\partial b_{c_o}} = \sum_{b, i, j} dY[b, c_o, i, j]

    and dX (the full convolution of dY with the rotated kernel) when the forward was asked
    for it.

    Returns:
        ``(dx, dweight, dbias)``, fresh arrays of the input's dtype; dx is None unless the
        forward had ``input_grad=True``, dbias is None without a bias.
    """
    if cache.path == "layers":
        conv_cache, pool_cache, relu_mask = cache.unfused
        conv_dy = max_pool2d_backward(relu_backward(dy, relu_mask), pool_cache)
        return conv2d_backward(conv_dy, conv_cache, input_grad=cache.input_grad)
    if not isinstance(dy, np.ndarray) or dy.shape != cache.code.shape:
        raise ShapeError(f"gradient has shape {getattr(dy, 'shape', dy)}, expected {cache.code.shape} "
                         "(the shape of the forward's output)")
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    if cache.path == "winograd":
        dweight, dbias, dx = _winograd.backward(dy, cache.x, cache.weight, cache.setup,
                                                cache.input_grad, code=cache.code)
    else:
        dweight = np.zeros(cache.weight.shape, dtype=np.float64)
        dbias = np.zeros(cache.setup.out_channels, dtype=np.float64)
        _kernels.get().conv_relu_pool_backward(cache.x, dy, cache.code, dweight, dbias,
                                               *_direct_geometry(cache.setup))
        dweight, dx = dweight.astype(np.float32), None
    return dx, dweight, dbias.astype(np.float32) if cache.has_bias else None


def _direct_geometry(setup: _ConvSetup) -> tuple[int, int, int, int]:
    """pad_top, pad_left, H_in + padding, W_in + padding: what the C loops take."""
    return (setup.pads[0], setup.pads[2]) + setup.padded_hw
