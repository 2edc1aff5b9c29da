"""The fast convolution: the layout that suits each convolution, and Winograd.

The reference im2col (:func:`cnnlab.ops.conv.conv2d_forward`) makes one product per image,
``Y[b] = W cols[b]``: best when K = C_in kH kW is small next to H_out W_out (the first
layer: K = 9, 784 pixels). Here, with scratch buffers from the workspace pool:

- "channel": cols as (K + 1, N H_out W_out), one big product, then Y transposed to NCHW;
  best when K is large (deep layers), where per-image dW partials would be big.
- "wide": the "channel" layout computed on the padded width, for stride 1
  (cnnlab/backend/conv_wide.py): long contiguous copies in im2col and col2im.
- "winograd": 3x3 stride-1 float32 convolutions in 2.25x fewer multiplies
  (cnnlab/backend/winograd.py), when the compiled transforms run at this level.

Grouped convolutions and the small-K case run the reference code. Every layout gives the
reference's result up to float rounding.
"""

from __future__ import annotations

import numpy as np

from cnnlab.backend import conv_wide, dispatch, gemm, winograd, workspace
from cnnlab.ops import conv as reference
from cnnlab.ops.conv import ConvSetup


class FastConvCache:
    """What the backward of a fast layout needs; ``cols`` is a pooled buffer released by
    the backward, ``u`` Winograd's transformed weights."""

    __slots__ = ("setup", "x", "weight", "has_bias", "layout", "cols", "u")

    def __init__(self, setup, x, weight, has_bias, layout, cols=None, u=None):
        self.setup, self.x, self.weight = setup, x, weight
        self.has_bias, self.layout, self.cols, self.u = has_bias, layout, cols, u


def choose_layout(setup: ConvSetup) -> str:
    """"winograd", "wide", "channel", or "im2col" (the reference)."""
    if winograd.usable(setup):
        return "winograd"
    rows = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    if setup.groups > 1 or rows + 1 < setup.out_hw[0] * setup.out_hw[1]:
        return "im2col"
    return "wide" if conv_wide.usable(setup) else "channel"


def padded_input(x: np.ndarray, setup: ConvSetup) -> tuple[np.ndarray, bool]:
    """x with its zero border, in a pooled buffer (True) or x itself when unpadded (False)."""
    if not any(setup.pads):
        return x, False
    buffer = workspace.take("conv-padded", x.shape[:2] + setup.padded_hw, x.dtype,
                            init=lambda array: array.fill(0), variant=setup.pads)
    # Only the interior is written, so the border keeps the zeros of its first fill.
    return reference.padded_input(x, setup, out=buffer), True


def release_padded(padded: np.ndarray, setup: ConvSetup) -> None:
    workspace.give(padded, "conv-padded", variant=setup.pads)


def _channel_patches(rows: np.ndarray, setup: ConvSetup) -> np.ndarray:
    """A (K, N P) matrix (cols without its ones row, or dcols) seen as
    (N, C_in, kH, kW, H_out, W_out)."""
    c, (k_h, k_w), (h_out, w_out) = setup.in_channels, setup.kernel, setup.out_hw
    return rows.reshape(c, k_h, k_w, setup.batch, h_out, w_out).transpose(3, 0, 1, 2, 4, 5)


def _fill_ones_row(cols: np.ndarray) -> None:
    cols[-1] = 1


def _channel_im2col(x: np.ndarray, setup: ConvSetup) -> np.ndarray:
    rows = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    cols = workspace.take("conv-cols", (rows + 1, setup.batch * setup.out_hw[0] * setup.out_hw[1]),
                          x.dtype, init=_fill_ones_row)
    padded, pooled = padded_input(x, setup)
    reference.fill_patches(_channel_patches(cols[:-1], setup), padded, setup)
    if pooled:
        release_padded(padded, setup)
    return cols


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """:func:`cnnlab.ops.conv.conv2d_forward`, in the fastest layout that applies."""
    setup = ConvSetup(x, weight, bias, stride, padding, dilation, groups)
    layout = choose_layout(setup)
    if layout == "im2col":
        return reference.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    y = np.empty((setup.batch, setup.out_channels) + setup.out_hw, dtype=x.dtype)
    has_bias = bias is not None
    if layout == "winograd":
        u = winograd.forward(x, weight, bias, setup, y)
        return y, FastConvCache(setup, x, weight, has_bias, layout, u=u)
    if layout == "wide":
        # chunk by chunk; the backward redoes im2col from x, so no cols are kept
        conv_wide.forward(x, reference.weight_matrix(weight, bias), setup, padded_input, y)
        return y, FastConvCache(setup, x, weight, has_bias, layout)
    cols = _channel_im2col(x, setup)
    columns = cols if has_bias else cols[:-1]
    product = workspace.take("conv-product", (setup.out_channels, columns.shape[1]), x.dtype)
    gemm.matmul(reference.weight_matrix(weight, bias), columns, out=product)
    # (C_out, N, P) -> (N, C_out, P): the one transpose this layout pays.
    np.copyto(y.reshape(y.shape[0], y.shape[1], -1),
              product.reshape(setup.out_channels, setup.batch, -1).transpose(1, 0, 2))
    workspace.give(product, "conv-product")
    return y, FastConvCache(setup, x, weight, has_bias, layout, cols=cols)


def conv2d_backward(dy, cache, input_grad=True):
    """:func:`cnnlab.ops.conv.conv2d_backward` for a cache of either forward."""
    if not isinstance(cache, FastConvCache):
        return reference.conv2d_backward(dy, cache, input_grad=input_grad)
    setup = cache.setup
    dy3 = reference.check_output_grad(dy, setup)
    if cache.layout == "winograd":
        dweight, dbias, dx = winograd.backward(dy3.reshape((setup.batch, setup.out_channels) + setup.out_hw),
                                               cache.x, cache.u, setup, input_grad)
        return dx, dweight, dbias.astype(setup.dtype) if cache.has_bias else None
    if cache.layout == "wide":
        dweight_ext, dx = conv_wide.backward(dy3.reshape((setup.batch, setup.out_channels) + setup.out_hw),
                                             cache.x, cache.weight, setup, padded_input, input_grad)
        dweight, dbias = reference.split_weight_grad(dweight_ext, cache.weight.shape, cache.has_bias)
        return dx, dweight, dbias
    cols = cache.cols if cache.cols is not None else _channel_im2col(cache.x, setup)
    # The cache gives its buffer back now, so a second backward rebuilds cols instead of
    # reading a buffer another forward may have refilled.
    cache.cols = None
    # dY as (C_out, N P), the layout of the forward's product.
    dy_matrix = workspace.take("conv-product", (setup.out_channels, cols.shape[1]), dy3.dtype)
    np.copyto(dy_matrix.reshape(setup.out_channels, setup.batch, -1), dy3.transpose(1, 0, 2))
    dweight, dbias = reference.split_weight_grad(gemm.matmul(dy_matrix, cols.T), cache.weight.shape,
                                                 cache.has_bias)
    workspace.give(cols, "conv-cols")
    dx = None
    if input_grad:
        dcols = workspace.take("conv-dcols", (cols.shape[0] - 1, cols.shape[1]), dy3.dtype)
        gemm.matmul(cache.weight.reshape(cache.weight.shape[0], -1).T, dy_matrix, out=dcols)
        shape = (setup.batch, setup.in_channels) + setup.padded_hw
        if any(setup.pads):
            dx_padded = workspace.take("conv-dx-padded", shape, setup.dtype)
            dx_padded.fill(0)
        else:  # dx itself: a fresh array, never a pooled one
            dx_padded = np.zeros(shape, dtype=setup.dtype)
        reference.add_patches(_channel_patches(dcols, setup), dx_padded, setup)
        dx = reference.crop_padding(dx_padded, setup)
        if any(setup.pads):
            workspace.give(dx_padded, "conv-dx-padded")
        workspace.give(dcols, "conv-dcols")
    workspace.give(dy_matrix, "conv-product")
    return dx, dweight, dbias


def describe() -> str:
    """For bug reports: the layouts this machine runs."""
    return f"im2col layouts (reference, channel, wide); Winograd: {winograd.describe()}"
