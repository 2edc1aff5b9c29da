r"""2D convolution (lecture 002), as PyTorch's ``torch.nn.functional.conv2d`` computes it.

The lecture's forward sum, with stride s, padding p, dilation d, for batch item b and
output channel c_out:

.. math::
    Y_{b, c_{out}, i, j} = \sum_{c_{in}} \sum_{m=0}^{K_h-1} \sum_{n=0}^{K_w-1}
        W_{c_{out}, c_{in}, m, n} \, X_{b, c_{in}, s i + d m - p, \; s j + d n - p} + b_{c_{out}}

(pixels outside the input are zero). Two implementations:

- :func:`conv2d_naive` / :func:`conv2d_naive_backward`: the formulas written as loops, the
  readable reference (slow; tiny inputs only).
- :func:`conv2d_forward` / :func:`conv2d_backward`: the fast default. "im2col" copies every
  kernel-sized patch into one column of a matrix ``cols`` (rows: c_in, m, n), so the whole
  sum becomes one matrix product ``Y = W cols`` that BLAS runs at full speed. The backward is
  two more products: ``dW = dY cols^T`` and ``dcols = W^T dY``, whose columns are added back
  to the pixels they came from ("col2im"). A float32 3x3 stride-1 convolution with enough
  input channels runs instead as Winograd F(2x2, 3x3) when cnnlab's C loops can
  (cnnlab/ops/_winograd.py): the same sum with 2.25x fewer multiplies.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.ops import _conv_wide, _gemm, _winograd, _workspace
from cnnlab.ops._workspace import window
from cnnlab.validation import array_of, check_image_batch, float_array, int_pair, positive_int

Pads = tuple[int, int, int, int]  # (top, bottom, left, right)


# ---------------------------------------------------------------------------
# Arguments and output size
# ---------------------------------------------------------------------------

def conv2d_padding(padding, kernel_size, stride=1, dilation=1, owner: str | None = None,
                   error=ShapeError) -> Pads:
    r"""The zeros a convolution adds to each side, as (top, bottom, left, right).

    PyTorch's rule (``torch.nn.functional.conv2d``, ``nn.Conv2d``):

    - an int p or a pair (p_h, p_w): the same amount on both sides of each axis;
    - ``"valid"``: none;
    - ``"same"``: the output keeps the input's size. Each axis needs a total of
      :math:`d (k - 1)` zeros; half of it (rounded down) goes before (top/left) and the rest
      after (bottom/right), so an even kernel gets one more row/column at the bottom/right.
      Only with stride 1, as in PyTorch.

    Args:
        padding: an int, a pair, ``"valid"`` or ``"same"``.
        kernel_size, stride, dilation: an int or a pair (height, width).
        owner, error: name put first in the message, and the error class raised
            (:mod:`cnnlab.validation`'s convention; the ops raise ShapeError).
    """
    prefix = f"{owner}: " if owner else ""
    kernel = int_pair(kernel_size, "kernel_size", owner=owner, error=error)
    stride = int_pair(stride, "stride", owner=owner, error=error)
    dilation = int_pair(dilation, "dilation", owner=owner, error=error)
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            total_h, total_w = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            if stride != (1, 1):
                stride_text = stride[0] if stride[0] == stride[1] else stride
                example = (total_h // 2, total_w // 2)
                example_text = example[0] if example[0] == example[1] else example
                raise error(f"{prefix}padding='same' needs stride 1 (as in PyTorch: stride=1 is the "
                            f"only one that keeps the input's size), got stride {stride_text}; "
                            f"give the padding as a number instead, e.g. padding={example_text}")
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise error(f"{prefix}padding must be an int, a pair of ints, 'valid' or 'same', "
                    f"got {padding!r}")
    pad_h, pad_w = int_pair(padding, "padding", minimum=0, owner=owner, error=error)
    return (pad_h, pad_h, pad_w, pad_w)


def output_length(size: int, kernel: int, stride: int = 1, pad_before: int = 0,
                  pad_after: int = 0, dilation: int = 1) -> int:
    r"""The lecture's output-size formula along one axis (lecture 004, PyTorch's docs):

    .. math::
        H_{out} = \left\lfloor \frac{H_{in} + p_{before} + p_{after} - d (k - 1) - 1}{s} \right\rfloor + 1

    Below 1 when the (dilated) kernel is larger than the padded input: the caller says so.
    Pooling is the same formula with dilation 1.
    """
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _output_size(input_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                 pads: Pads, dilation: tuple[int, int], padding_text) -> tuple[int, int]:
    """(H_out, W_out) by :func:`output_length`, or a ShapeError when the kernel does not fit."""
    out_hw = (output_length(input_hw[0], kernel[0], stride[0], pads[0], pads[1], dilation[0]),
              output_length(input_hw[1], kernel[1], stride[1], pads[2], pads[3], dilation[1]))
    if min(out_hw) < 1:
        padded = (input_hw[0] + pads[0] + pads[1], input_hw[1] + pads[2] + pads[3])
        span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        dilation_text = dilation[0] if dilation[0] == dilation[1] else dilation
        raise ShapeError(
            f"kernel {kernel[0]}x{kernel[1]} (dilation {dilation_text}) does not fit a "
            f"{input_hw[0]}x{input_hw[1]} input with padding {padding_text}: it spans "
            f"{span[0]}x{span[1]} pixels but the padded input is {padded[0]}x{padded[1]}; "
            "use a smaller kernel or dilation, more padding, or a larger input")
    return out_hw


def conv2d_output_size(input_hw, kernel_size, stride=1, padding=0, dilation=1) -> tuple[int, int]:
    r"""Output height and width of a convolution (lecture 004, PyTorch's formula).

    .. math::
        H_{out} = \left\lfloor \frac{H_{in} + 2p - d (k - 1) - 1}{s} + 1 \right\rfloor

    and likewise W_out. Lecture examples for a 28x28 input and a 3x3 kernel: padding 0,
    stride 1 -> 26x26; padding 1, stride 1 -> 28x28; padding 1, stride 2 -> 14x14.

    Args:
        input_hw: (H_in, W_in), or one int for a square input.
        kernel_size, stride, dilation: an int or a pair (height, width).
        padding: an int, a pair, ``"valid"`` (no padding) or ``"same"`` (output size equals
            input size; stride 1 only, as in PyTorch; see :func:`conv2d_padding`).

    Raises:
        ShapeError: the kernel does not fit the padded input, or "same" with stride > 1.
    """
    input_hw = int_pair(input_hw, "input size", error=ShapeError)
    kernel = int_pair(kernel_size, "kernel_size", error=ShapeError)
    stride = int_pair(stride, "stride", error=ShapeError)
    dilation = int_pair(dilation, "dilation", error=ShapeError)
    pads = conv2d_padding(padding, kernel, stride, dilation)
    return _output_size(input_hw, kernel, stride, pads, dilation, padding)


class _ConvSetup:
    """Validated shapes and hyper-parameters of one convolution call."""

    __slots__ = ("batch", "in_channels", "out_channels", "groups", "kernel", "stride", "pads",
                 "dilation", "input_hw", "out_hw", "dtype")

    def __init__(self, x, weight, bias, stride, padding, dilation, groups):
        check_image_batch(x, "conv2d")
        float_array(weight, "conv2d", "weight", like=x)
        if weight.ndim != 4:
            raise ShapeError("conv2d weight must be an array of shape "
                             f"(C_out, C_in / groups, kH, kW), got {weight.shape}")
        if min(weight.shape[2:]) < 1:
            raise ShapeError(f"conv2d kernel must be at least 1x1, got {weight.shape[2]}x"
                             f"{weight.shape[3]} (weight {weight.shape}), as in PyTorch")
        if min(weight.shape[:2]) < 1:
            raise ShapeError(f"conv2d weight {weight.shape} has no channels; a convolution "
                             f"needs at least one input and one output channel, as in PyTorch")
        self.batch, self.in_channels = x.shape[0], x.shape[1]
        self.out_channels = weight.shape[0]
        self.groups = positive_int(groups, "groups", error=ShapeError)
        self._check_channels(weight)
        if bias is not None:
            float_array(bias, "conv2d", "bias", like=x)
            if bias.shape != (self.out_channels,):
                raise ShapeError(f"conv2d bias must have shape ({self.out_channels},), "
                                 f"got {bias.shape}")
        self.kernel = (weight.shape[2], weight.shape[3])
        self.stride = int_pair(stride, "stride", error=ShapeError)
        self.dilation = int_pair(dilation, "dilation", error=ShapeError)
        self.pads = conv2d_padding(padding, self.kernel, self.stride, self.dilation)
        self.input_hw = (x.shape[2], x.shape[3])
        self.out_hw = _output_size(self.input_hw, self.kernel, self.stride, self.pads,
                                   self.dilation, padding)
        self.dtype = x.dtype

    def _check_channels(self, weight) -> None:
        groups = self.groups
        if self.in_channels % groups or self.out_channels % groups:
            raise ShapeError(f"groups={groups} must divide both the input channels "
                             f"({self.in_channels}) and the output channels ({self.out_channels})")
        if weight.shape[1] * groups != self.in_channels:
            raise ShapeError(f"conv2d weight {weight.shape} expects {weight.shape[1] * groups} input "
                             f"channels (C_in / groups = {weight.shape[1]}, groups = {groups}) "
                             f"but the input has {self.in_channels}; expected weight shape "
                             f"({self.out_channels}, {self.in_channels // groups}, kH, kW)")

    @property
    def padded_hw(self) -> tuple[int, int]:
        return (self.input_hw[0] + self.pads[0] + self.pads[1],
                self.input_hw[1] + self.pads[2] + self.pads[3])

    def offset(self, m: int, n: int) -> tuple[int, int]:
        """Where kernel tap (m, n) starts in the padded input: (d_h m, d_w n)."""
        return (self.dilation[0] * m, self.dilation[1] * n)


# ---------------------------------------------------------------------------
# The reference: the lecture's formulas as loops
# ---------------------------------------------------------------------------

def _input_pixel(x, b, channel, row, col):
    """X[b, channel, row, col], or 0 outside the input (that is what zero padding means)."""
    if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
        return x[b, channel, row, col]
    return 0


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    r"""The convolution computed literally from lecture 002's sum (slow: tiny inputs only).

    .. math::
        Y[b, c_o, i, j] = \sum_{c_i, m, n} W[c_o, c_i, m, n] \,
            X[b, g C_g + c_i, s_h i + m d_h - p_t, s_w j + n d_w - p_l] + \text{bias}[c_o]

    where g = c_o // (C_out / groups) is the group of c_o, C_g = C_in / groups, and X is
    zero outside the input. Same arguments and result as :func:`conv2d_forward`; use that
    one for real work.
    """
    weight, bias = array_of(weight, "conv2d", "weight"), _optional_array(bias)
    setup = _ConvSetup(x, weight, bias, stride, padding, dilation, groups)
    (s_h, s_w), (d_h, d_w), (p_t, _, p_l, _) = setup.stride, setup.dilation, setup.pads
    out_per_group = setup.out_channels // setup.groups
    in_per_group, k_h, k_w = weight.shape[1:]
    y = np.zeros((setup.batch, setup.out_channels) + setup.out_hw, dtype=x.dtype)
    for b in range(setup.batch):
        for c_o in range(setup.out_channels):
            group = c_o // out_per_group
            for i in range(setup.out_hw[0]):
                for j in range(setup.out_hw[1]):
                    total = bias[c_o] if bias is not None else x.dtype.type(0)
                    for c_i in range(in_per_group):
                        for m in range(k_h):
                            for n in range(k_w):
                                total += weight[c_o, c_i, m, n] * _input_pixel(
                                    x, b, group * in_per_group + c_i,
                                    s_h * i + m * d_h - p_t, s_w * j + n * d_w - p_l)
                    y[b, c_o, i, j] = total
    return y


def conv2d_naive_backward(dy, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""Lecture 002's three gradient formulas as loops (the reference for :func:`conv2d_backward`).

    .. math::
        \frac{\partial L}{\partial b_{c_o}} = \sum_{b, i, j} dY[b, c_o, i, j]

        \frac{\partial L}{\partial W[c_o, c_i, m, n]} = \sum_{b, i, j} dY[b, c_o, i, j] \,
            X[b, c_i, s i + d m - p, s j + d n - p]   \quad\text{(correlate X with dY)}

        \frac{\partial L}{\partial X[b, c_i, k, l]} = \sum_{c_o, m, n} dY[b, c_o, i, j] \,
            W[c_o, c_i, m, n], \quad i = \frac{k + p - d m}{s}, \; j = \frac{l + p - d n}{s}

    the last taking only terms where i, j are integers inside the output (the "full"
    convolution of dY with the 180-degree rotated kernel). Groups restrict c_i to c_o's group.

    Args:
        dy: gradient of the loss with respect to the output, (N, C_out, H_out, W_out).
        x, weight, bias, stride, padding, dilation, groups: as given to the forward.

    Returns:
        ``(dx, dweight, dbias)``; dbias is None when ``bias`` is None.
    """
    setup = _ConvSetup(x, weight, bias, stride, padding, dilation, groups)
    dy = np.asarray(dy, dtype=x.dtype)
    if dy.shape != (setup.batch, setup.out_channels) + setup.out_hw:
        raise ShapeError(f"conv2d gradient has shape {dy.shape}, expected "
                         f"{(setup.batch, setup.out_channels) + setup.out_hw}")
    dbias = dy.sum(axis=(0, 2, 3)) if bias is not None else None
    return _naive_input_grad(dy, x, weight, setup), _naive_weight_grad(dy, x, weight, setup), dbias


def _naive_weight_grad(dy, x, weight, setup):
    (s_h, s_w), (d_h, d_w), (p_t, _, p_l, _) = setup.stride, setup.dilation, setup.pads
    out_per_group = setup.out_channels // setup.groups
    in_per_group, k_h, k_w = weight.shape[1:]
    dweight = np.zeros_like(weight)
    for c_o in range(setup.out_channels):
        group = c_o // out_per_group
        for c_i in range(in_per_group):
            for m in range(k_h):
                for n in range(k_w):
                    total = x.dtype.type(0)
                    for b in range(setup.batch):
                        for i in range(setup.out_hw[0]):
                            for j in range(setup.out_hw[1]):
                                total += dy[b, c_o, i, j] * _input_pixel(
                                    x, b, group * in_per_group + c_i,
                                    s_h * i + m * d_h - p_t, s_w * j + n * d_w - p_l)
                    dweight[c_o, c_i, m, n] = total
    return dweight


def _naive_input_grad(dy, x, weight, setup):
    (s_h, s_w), (d_h, d_w), (p_t, _, p_l, _) = setup.stride, setup.dilation, setup.pads
    out_per_group = setup.out_channels // setup.groups
    in_per_group, k_h, k_w = weight.shape[1:]
    dx = np.zeros_like(x)
    for b in range(setup.batch):
        for channel in range(setup.in_channels):
            group, c_i = divmod(channel, in_per_group)
            for k in range(x.shape[2]):
                for l in range(x.shape[3]):
                    total = x.dtype.type(0)
                    for c_o in range(group * out_per_group, (group + 1) * out_per_group):
                        for m in range(k_h):
                            for n in range(k_w):
                                i, i_rest = divmod(k + p_t - m * d_h, s_h)
                                j, j_rest = divmod(l + p_l - n * d_w, s_w)
                                if (i_rest == 0 and j_rest == 0 and 0 <= i < setup.out_hw[0]
                                        and 0 <= j < setup.out_hw[1]):
                                    total += dy[b, c_o, i, j] * weight[c_o, c_i, m, n]
                    dx[b, channel, k, l] = total
    return dx


# ---------------------------------------------------------------------------
# The fast path: im2col + one GEMM
# ---------------------------------------------------------------------------
#
# cols holds, for output pixel (b, i, j) and row r = (c_in, m, n), the input pixel that
# W[:, c_in, m, n] multiplies; one extra row of ones carries the bias through the GEMM
# (and hands back dbias from the weight-gradient GEMM for free). Three memory layouts:
#   "batch":   (N, K + 1, H_out W_out); Y[b] = W cols[b] lands in NCHW directly. Best when
#              K is small next to H_out W_out (the first layer: K = 9, 784 pixels).
#   "channel": (K + 1, N H_out W_out); one big GEMM, then Y is transposed to NCHW. Best
#              when K is large (deep layers), where the per-item dW partials would be big.
#   "wide":    the "channel" layout computed on the padded width, for stride 1 (see
#              cnnlab/ops/_conv_wide.py): long contiguous copies in im2col and col2im.
# And, not im2col at all, "winograd" (cnnlab/ops/_winograd.py): 3x3 stride-1 float32
# convolutions in 2.25x fewer multiplies, when the C loops run on an AVX-512 CPU.

class _ConvCache:
    """What the backward needs; ``cols`` is a pooled buffer released by the backward, ``u``
    Winograd's transformed weights."""

    __slots__ = ("setup", "x", "weight", "has_bias", "layout", "cols", "u")

    def __init__(self, setup, x, weight, has_bias, layout, cols, u=None):
        self.setup, self.x, self.weight = setup, x, weight
        self.has_bias, self.layout, self.cols, self.u = has_bias, layout, cols, u


def _choose_layout(setup: _ConvSetup) -> str:
    if _winograd.usable(setup):
        return "winograd"
    rows = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    pixels = setup.out_hw[0] * setup.out_hw[1]
    if setup.groups > 1 or rows + 1 < pixels:
        return "batch"
    return "wide" if _conv_wide.usable(setup) else "channel"


def _cols_shape(setup: _ConvSetup, layout: str) -> tuple[int, ...]:
    rows = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    pixels = setup.out_hw[0] * setup.out_hw[1]
    if layout == "batch":
        return (setup.batch, rows + 1, pixels)
    return (rows + 1, setup.batch * pixels)


def _fill_bias_row(cols: np.ndarray) -> None:
    """The constant ones row, written once when the buffer is allocated."""
    if cols.ndim == 3:
        cols[:, -1] = 1
    else:
        cols[-1] = 1


def _patches_view(cols: np.ndarray, setup: _ConvSetup, layout: str) -> np.ndarray:
    """cols (without the ones row) seen as (N, C_in, kH, kW, H_out, W_out)."""
    n, c, (k_h, k_w), (h_out, w_out) = setup.batch, setup.in_channels, setup.kernel, setup.out_hw
    if layout == "batch":
        return cols[:, :-1].reshape(n, c, k_h, k_w, h_out, w_out)
    return cols[:-1].reshape(c, k_h, k_w, n, h_out, w_out).transpose(3, 0, 1, 2, 4, 5)


def _padded_input(x: np.ndarray, setup: _ConvSetup) -> tuple[np.ndarray, bool]:
    """x with its zero border, in a pooled buffer (True) or x itself when unpadded (False)."""
    if not any(setup.pads):
        return x, False
    top, _, left, _ = setup.pads
    padded = _workspace.take("conv-padded", x.shape[:2] + setup.padded_hw, x.dtype,
                             init=lambda buffer: buffer.fill(0), variant=setup.pads)
    # Only the interior is written, so the border keeps the zeros of its first fill.
    padded[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    return padded, True


def _im2col(x: np.ndarray, setup: _ConvSetup, layout: str) -> np.ndarray:
    """Copy every kernel tap's view of the input into cols: one strided copy per tap."""
    cols = _workspace.take("conv-cols", _cols_shape(setup, layout), x.dtype, init=_fill_bias_row)
    padded, pooled = _padded_input(x, setup)
    patches = _patches_view(cols, setup, layout)
    for m in range(setup.kernel[0]):
        for n in range(setup.kernel[1]):
            np.copyto(patches[:, :, m, n], window(padded, *setup.offset(m, n), setup.stride, setup.out_hw))
    if pooled:
        _workspace.give(padded, "conv-padded", variant=setup.pads)
    return cols


def _weight_matrix(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """W as (C_out, K), with the bias appended as column K when there is one."""
    matrix = weight.reshape(weight.shape[0], -1)
    if bias is None:
        return matrix
    return np.concatenate([matrix, bias[:, None]], axis=1)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""Applies a 2D convolution (cross-correlation, as in PyTorch) over a batch of images.

    .. math::
        Y[b, c_o, i, j] = \sum_{c_i, m, n} W[c_o, c_i, m, n] \,
            X[b, c_i, s i + d m - p, s j + d n - p] + \text{bias}[c_o]

    computed as one matrix product per group over im2col columns, or by Winograd F(2x2, 3x3)
    for float32 3x3 stride-1 convolutions (see the module docs); the same result up to float
    rounding.

    Args:
        x: input images.
        weight: filters; ``weight[c_o, c_i]`` is the kH x kW kernel from input channel c_i
            (of c_o's group) to output channel c_o.
        bias: one value per output channel, or None.
        stride: step of the sliding window, an int or (s_h, s_w).
        padding: zeros added on each side, an int or (p_h, p_w); or ``"valid"`` (none) or
            ``"same"`` (stride 1 only; output size = input size; an odd total padding puts the
            extra row/column on the bottom/right, as PyTorch).
        dilation: spacing between kernel taps, an int or (d_h, d_w).
        groups: input and output channels split into this many independent groups.

    Shape:
        - x: (N, C_in, H_in, W_in), float32 or float64
        - weight: (C_out, C_in / groups, kH, kW), same dtype as x
        - bias: (C_out,)
        - y: (N, C_out, H_out, W_out), same dtype as x, where
          H_out = floor((H_in + 2 p_h - d_h (kH - 1) - 1) / s_h + 1), likewise W_out

    Returns:
        ``(y, cache)``; pass the cache once to :func:`conv2d_backward`. ``y`` is a fresh
        array that later calls never touch.

    Raises:
        ShapeError: wrong number of axes, channels that do not fit the weight or ``groups``,
            mixed dtypes or not floats, or a kernel that does not fit the padded input
            (see cnnlab/validation.py: the rules every op shares).

    ``weight`` and ``bias`` may be ``nn`` Parameters (their ``.data`` is used). A batch of 0
    images gives an empty output, as in PyTorch. The cache refers to ``x``
    and ``weight`` themselves: they must not change before the backward.
    """
    weight, bias = array_of(weight, "conv2d", "weight"), _optional_array(bias)
    setup = _ConvSetup(x, weight, bias, stride, padding, dilation, groups)
    if setup.batch == 0:
        return _empty_forward(x, weight, bias, setup)
    layout = _choose_layout(setup)
    y = np.empty((setup.batch, setup.out_channels) + setup.out_hw, dtype=x.dtype)
    if layout == "winograd":
        u = _winograd.forward(x, weight, bias, setup, y)
        return y, _ConvCache(setup, x, weight, bias is not None, layout, None, u)
    if layout == "wide":
        # chunk by chunk; the backward redoes im2col from x, so no cols are kept
        _conv_wide.forward(x, _weight_matrix(weight, bias), setup, _padded_input, y)
        return y, _ConvCache(setup, x, weight, bias is not None, layout, None)
    cols = _im2col(x, setup, layout)
    if setup.groups > 1:
        _grouped_forward(cols, weight, bias, setup, y)
    elif layout == "batch":
        columns = cols if bias is not None else cols[:, :-1]
        np.matmul(_weight_matrix(weight, bias), columns, out=y.reshape(y.shape[0], y.shape[1], -1))
    else:
        columns = cols if bias is not None else cols[:-1]
        product = _workspace.take("conv-product", (setup.out_channels, columns.shape[1]), x.dtype)
        _gemm.matmul(_weight_matrix(weight, bias), columns, out=product)
        # (C_out, N, P) -> (N, C_out, P): the one transpose this layout pays.
        np.copyto(y.reshape(y.shape[0], y.shape[1], -1),
                  product.reshape(setup.out_channels, setup.batch, -1).transpose(1, 0, 2))
        _workspace.give(product, "conv-product")
    return y, _ConvCache(setup, x, weight, bias is not None, layout, cols)


def _optional_array(bias):
    return None if bias is None else array_of(bias, "conv2d", "bias")


def _empty_forward(x, weight, bias, setup):
    """No images: an empty output, as in PyTorch."""
    y = np.zeros((0, setup.out_channels) + setup.out_hw, dtype=x.dtype)
    return y, _ConvCache(setup, x, weight, bias is not None, "empty", None)


def _empty_backward(dy, cache, input_grad):
    setup = cache.setup
    dx = np.zeros(cache.x.shape, dtype=setup.dtype) if input_grad else None
    dbias = dy.sum(axis=(0, 2, 3), dtype=setup.dtype) if cache.has_bias else None
    return dx, np.zeros(cache.weight.shape, dtype=setup.dtype), dbias


def _grouped_forward(cols, weight, bias, setup, y) -> None:
    """One batched GEMM per group (groups > 1 always uses the "batch" layout)."""
    in_rows = cols.shape[1] - 1
    rows_per_group = in_rows // setup.groups
    out_per_group = setup.out_channels // setup.groups
    y3 = y.reshape(y.shape[0], y.shape[1], -1)
    for group in range(setup.groups):
        outputs = slice(group * out_per_group, (group + 1) * out_per_group)
        rows = slice(group * rows_per_group, (group + 1) * rows_per_group)
        np.matmul(weight[outputs].reshape(out_per_group, -1), cols[:, rows], out=y3[:, outputs])
    if bias is not None:
        y3 += bias[:, None]


def conv2d_backward(dy, cache, input_grad=True):
    r"""Gradients of :func:`conv2d_forward` (lecture 002's three formulas, as GEMMs).

    - dbias[c_o] = sum over b, i, j of dY[b, c_o, i, j]
    - dW = dY cols^T: the input correlated with dY
    - dX: dcols = W^T dY, each column added back onto the input pixels it was copied from
      (col2im): the full convolution of dY with the rotated kernel.

    Args:
        dy: gradient of the loss with respect to y.
        cache: what :func:`conv2d_forward` returned with y.
        input_grad: False skips dX (the first layer never needs it) and returns None for it.

    Shape:
        - dy: (N, C_out, H_out, W_out), as y
        - dx: (N, C_in, H_in, W_in) or None; dweight: as weight; dbias: (C_out,) or None

    Returns:
        ``(dx, dweight, dbias)``, all fresh arrays of the input's dtype.
    """
    setup = cache.setup
    expected = (setup.batch, setup.out_channels) + setup.out_hw
    if not isinstance(dy, np.ndarray) or dy.shape != expected:
        raise ShapeError(f"conv2d gradient has shape {getattr(dy, 'shape', dy)}, expected {expected} "
                         "(the shape of the forward's output)")
    if cache.layout == "empty":
        return _empty_backward(dy, cache, input_grad)
    dy3 = np.ascontiguousarray(dy, dtype=setup.dtype).reshape(setup.batch, setup.out_channels, -1)
    if cache.layout == "winograd":
        dweight, dbias, dx = _winograd.backward(dy3.reshape(expected), cache.x, cache.u, setup,
                                                input_grad)
        return dx, dweight, dbias.astype(setup.dtype) if cache.has_bias else None
    if cache.layout == "wide":
        return _wide_backward(dy3, cache, input_grad)
    cols = cache.cols if cache.cols is not None else _im2col(cache.x, setup, cache.layout)
    # The cache gives its buffer back now, so a second backward rebuilds cols instead of
    # reading a buffer another forward may have refilled.
    cache.cols = None
    if setup.groups > 1:
        dweight, dbias, dcols = _grouped_backward(dy3, cols, cache, input_grad)
    elif cache.layout == "batch":
        dweight, dbias, dcols = _batch_layout_backward(dy3, cols, cache, input_grad)
    else:
        dweight, dbias, dcols = _channel_layout_backward(dy3, cols, cache, input_grad)
    _workspace.give(cols, "conv-cols")
    dx = None
    if input_grad:
        dx = _col2im(dcols, setup, cache.layout)
        _workspace.give(dcols, "conv-dcols")
    return dx, dweight, dbias


def _wide_backward(dy3, cache, input_grad):
    setup = cache.setup
    dy4 = dy3.reshape((setup.batch, setup.out_channels) + setup.out_hw)
    dweight_ext, dx = _conv_wide.backward(dy4, cache.x, cache.weight, setup, _padded_input,
                                          input_grad)
    dweight, dbias = _split_weight_grad(dweight_ext, cache)
    return dx, dweight, dbias


def _split_weight_grad(dweight_ext: np.ndarray, cache) -> tuple[np.ndarray, np.ndarray | None]:
    """Column K of the extended weight gradient is dbias (the ones row's partner)."""
    dweight = np.ascontiguousarray(dweight_ext[:, :-1]).reshape(cache.weight.shape)
    dbias = dweight_ext[:, -1].copy() if cache.has_bias else None
    return dweight, dbias


def _batch_layout_backward(dy3, cols, cache, input_grad):
    # dW[b] = dY[b] cols[b]^T per item, then summed over the batch.
    dweight_ext = np.matmul(dy3, cols.transpose(0, 2, 1)).sum(axis=0)
    dweight, dbias = _split_weight_grad(dweight_ext, cache)
    dcols = None
    if input_grad:
        dcols = _workspace.take("conv-dcols", (cols.shape[0], cols.shape[1] - 1, cols.shape[2]),
                                dy3.dtype)
        np.matmul(cache.weight.reshape(cache.weight.shape[0], -1).T, dy3, out=dcols)
    return dweight, dbias, dcols


def _channel_layout_backward(dy3, cols, cache, input_grad):
    setup = cache.setup
    # dY as (C_out, N P), the layout of the forward's GEMM output.
    dy_matrix = _workspace.take("conv-product", (setup.out_channels, cols.shape[1]), dy3.dtype)
    np.copyto(dy_matrix.reshape(setup.out_channels, setup.batch, -1), dy3.transpose(1, 0, 2))
    dweight, dbias = _split_weight_grad(_gemm.matmul(dy_matrix, cols.T), cache)
    dcols = None
    if input_grad:
        dcols = _workspace.take("conv-dcols", (cols.shape[0] - 1, cols.shape[1]), dy3.dtype)
        _gemm.matmul(cache.weight.reshape(cache.weight.shape[0], -1).T, dy_matrix, out=dcols)
    _workspace.give(dy_matrix, "conv-product")
    return dweight, dbias, dcols


def _grouped_backward(dy3, cols, cache, input_grad):
    setup, weight = cache.setup, cache.weight
    rows_per_group = (cols.shape[1] - 1) // setup.groups
    out_per_group = setup.out_channels // setup.groups
    dweight = np.empty_like(weight)
    dcols = None
    if input_grad:
        dcols = _workspace.take("conv-dcols", (cols.shape[0], cols.shape[1] - 1, cols.shape[2]),
                                dy3.dtype)
    for group in range(setup.groups):
        outputs = slice(group * out_per_group, (group + 1) * out_per_group)
        rows = slice(group * rows_per_group, (group + 1) * rows_per_group)
        group_dy = dy3[:, outputs]
        dweight[outputs] = np.matmul(group_dy, cols[:, rows].transpose(0, 2, 1)).sum(axis=0).reshape(
            dweight[outputs].shape)
        if input_grad:
            np.matmul(weight[outputs].reshape(out_per_group, -1).T, group_dy, out=dcols[:, rows])
    dbias = dy3.sum(axis=(0, 2)) if cache.has_bias else None
    return dweight, dbias, dcols


def _col2im(dcols: np.ndarray, setup: _ConvSetup, layout: str) -> np.ndarray:
    """Add each kernel tap's slice of dcols back onto the input pixels it was copied from."""
    padded = any(setup.pads)
    shape = (setup.batch, setup.in_channels) + setup.padded_hw
    if padded:
        dx_padded = _workspace.take("conv-dx-padded", shape, setup.dtype)
        dx_padded.fill(0)
    else:
        dx_padded = np.zeros(shape, dtype=setup.dtype)
    n, c, (k_h, k_w), (h_out, w_out) = setup.batch, setup.in_channels, setup.kernel, setup.out_hw
    if layout == "batch":
        patches = dcols.reshape(n, c, k_h, k_w, h_out, w_out)
    else:
        patches = dcols.reshape(c, k_h, k_w, n, h_out, w_out).transpose(3, 0, 1, 2, 4, 5)
    for m in range(k_h):
        for n_tap in range(k_w):
            target = window(dx_padded, *setup.offset(m, n_tap), setup.stride, setup.out_hw)
            np.add(target, patches[:, :, m, n_tap], out=target)
    if not padded:
        return dx_padded
    top, _, left, _ = setup.pads
    dx = dx_padded[:, :, top:top + setup.input_hw[0], left:left + setup.input_hw[1]].copy()
    _workspace.give(dx_padded, "conv-dx-padded")
    return dx
