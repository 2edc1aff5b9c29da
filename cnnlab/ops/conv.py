r"""2D convolution (lecture 002), as PyTorch's ``torch.nn.functional.conv2d`` computes it.

The lecture's forward sum, with stride s, padding p, dilation d, for batch item b and
output channel c_out:

.. math::
    Y_{b, c_{out}, i, j} = \sum_{c_{in}} \sum_{m=0}^{K_h-1} \sum_{n=0}^{K_w-1}
        W_{c_{out}, c_{in}, m, n} \, X_{b, c_{in}, s i + d m - p, \; s j + d n - p} + b_{c_{out}}

(pixels outside the input are zero). Two implementations:

- :func:`conv2d_naive` / :func:`conv2d_naive_backward`: the formulas written as loops, the
  readable reference (slow; tiny inputs only).
- :func:`conv2d_forward` / :func:`conv2d_backward`: "im2col" copies every kernel-sized
  patch into one column of a matrix ``cols`` (rows: c_in, m, n), so the whole sum becomes
  one matrix product per image ``Y = W cols`` that BLAS runs at full speed. The backward is
  two more products: ``dW = dY cols^T`` and ``dcols = W^T dY``, whose columns are added back
  to the pixels they came from ("col2im").

The layers (cnnlab.nn) call :mod:`cnnlab.backend`, which runs faster layouts, Winograd
F(2x2, 3x3) and compiled loops where they apply and this code elsewhere.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.ops._args import window
from cnnlab.utils.validation import array_of, check_image_batch, float_array, int_pair, positive_int

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
            (:mod:`cnnlab.utils.validation`'s convention; the ops raise ShapeError).
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


class ConvSetup:
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
    setup = ConvSetup(x, weight, bias, stride, padding, dilation, groups)
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
    setup = ConvSetup(x, weight, bias, stride, padding, dilation, groups)
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
# im2col: the sum as matrix products
# ---------------------------------------------------------------------------
#
# cols[b] holds, for output pixel (i, j) of image b and row r = (c_in, m, n), the input
# pixel that W[:, c_in, m, n] multiplies: shape (N, K + 1, H_out W_out) with K = C_in kH kW.
# The extra row of ones carries the bias through the product (and hands dbias back from the
# weight-gradient product for free).

class ConvCache:
    """What :func:`conv2d_backward` needs from the forward."""

    __slots__ = ("setup", "x", "weight", "has_bias", "cols")
    layout = "im2col"

    def __init__(self, setup, x, weight, has_bias, cols):
        self.setup, self.x, self.weight, self.has_bias, self.cols = setup, x, weight, has_bias, cols


def patches_view(cols: np.ndarray, setup: ConvSetup) -> np.ndarray:
    """cols (N, K + 1, P) without the ones row, seen as (N, C_in, kH, kW, H_out, W_out)."""
    return cols[:, :-1].reshape((setup.batch, setup.in_channels) + setup.kernel + setup.out_hw)


def padded_input(x: np.ndarray, setup: ConvSetup, out: np.ndarray | None = None) -> np.ndarray:
    """x inside its zero border (``out``, whose border is already zero, when given)."""
    if not any(setup.pads):
        return x
    top, _, left, _ = setup.pads
    if out is None:
        out = np.zeros(x.shape[:2] + setup.padded_hw, dtype=x.dtype)
    out[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    return out


def fill_patches(patches: np.ndarray, padded: np.ndarray, setup: ConvSetup) -> None:
    """im2col: copy every kernel tap's view of the padded input into its rows of cols."""
    for m in range(setup.kernel[0]):
        for n in range(setup.kernel[1]):
            np.copyto(patches[:, :, m, n], window(padded, *setup.offset(m, n), setup.stride, setup.out_hw))


def add_patches(patches: np.ndarray, dx_padded: np.ndarray, setup: ConvSetup) -> None:
    """col2im: add each kernel tap's rows of dcols back onto the input pixels they came from."""
    for m in range(setup.kernel[0]):
        for n in range(setup.kernel[1]):
            target = window(dx_padded, *setup.offset(m, n), setup.stride, setup.out_hw)
            np.add(target, patches[:, :, m, n], out=target)


def crop_padding(dx_padded: np.ndarray, setup: ConvSetup) -> np.ndarray:
    """The input-sized interior of a padded gradient, as a fresh array."""
    if not any(setup.pads):
        return dx_padded
    top, _, left, _ = setup.pads
    return dx_padded[:, :, top:top + setup.input_hw[0], left:left + setup.input_hw[1]].copy()


def weight_matrix(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """W as (C_out, K), with the bias appended as column K when there is one."""
    matrix = weight.reshape(weight.shape[0], -1)
    if bias is None:
        return matrix
    return np.concatenate([matrix, bias[:, None]], axis=1)


def split_weight_grad(dweight_ext: np.ndarray, weight_shape, has_bias: bool):
    """Column K of the extended weight gradient is dbias (the ones row's partner)."""
    dweight = np.ascontiguousarray(dweight_ext[:, :-1]).reshape(weight_shape)
    dbias = dweight_ext[:, -1].copy() if has_bias else None
    return dweight, dbias


def check_output_grad(dy, setup: ConvSetup) -> np.ndarray:
    """dy as a C-contiguous (N, C_out, H_out W_out) array of the input's dtype, or a ShapeError."""
    expected = (setup.batch, setup.out_channels) + setup.out_hw
    if not isinstance(dy, np.ndarray) or dy.shape != expected:
        raise ShapeError(f"conv2d gradient has shape {getattr(dy, 'shape', dy)}, expected {expected} "
                         "(the shape of the forward's output)")
    return np.ascontiguousarray(dy, dtype=setup.dtype).reshape(
        setup.batch, setup.out_channels, setup.out_hw[0] * setup.out_hw[1])


def _group_slices(setup: ConvSetup):
    """(output channels, cols rows) of each group."""
    rows = setup.in_channels * setup.kernel[0] * setup.kernel[1] // setup.groups
    outputs = setup.out_channels // setup.groups
    return [(slice(g * outputs, (g + 1) * outputs), slice(g * rows, (g + 1) * rows))
            for g in range(setup.groups)]


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""Applies a 2D convolution (cross-correlation, as in PyTorch) over a batch of images.

    .. math::
        Y[b, c_o, i, j] = \sum_{c_i, m, n} W[c_o, c_i, m, n] \,
            X[b, c_i, s i + d m - p, s j + d n - p] + \text{bias}[c_o]

    computed as one matrix product per image and group over im2col columns.

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
        ``(y, cache)``; pass the cache to :func:`conv2d_backward`. ``y`` is a fresh
        array that later calls never touch.

    Raises:
        ShapeError: wrong number of axes, channels that do not fit the weight or ``groups``,
            mixed dtypes or not floats, or a kernel that does not fit the padded input
            (see cnnlab/utils/validation.py: the rules every op shares).

    ``weight`` and ``bias`` may be ``nn`` Parameters (their ``.data`` is used). A batch of 0
    images gives an empty output, as in PyTorch. The cache refers to ``x``
    and ``weight`` themselves: they must not change before the backward.
    """
    weight, bias = array_of(weight, "conv2d", "weight"), _optional_array(bias)
    setup = ConvSetup(x, weight, bias, stride, padding, dilation, groups)
    rows = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    cols = np.empty((setup.batch, rows + 1, setup.out_hw[0] * setup.out_hw[1]), dtype=x.dtype)
    cols[:, -1] = 1
    fill_patches(patches_view(cols, setup), padded_input(x, setup), setup)
    y = np.empty((setup.batch, setup.out_channels) + setup.out_hw, dtype=x.dtype)
    y3 = y.reshape(setup.batch, setup.out_channels, setup.out_hw[0] * setup.out_hw[1])
    if setup.groups == 1:
        np.matmul(weight_matrix(weight, bias), cols if bias is not None else cols[:, :-1], out=y3)
    else:
        for outputs, rows_of_group in _group_slices(setup):
            np.matmul(weight[outputs].reshape(weight[outputs].shape[0], -1), cols[:, rows_of_group],
                      out=y3[:, outputs])
        if bias is not None:
            y3 += bias[:, None]
    return y, ConvCache(setup, x, weight, bias is not None, cols)


def _optional_array(bias):
    return None if bias is None else array_of(bias, "conv2d", "bias")


def conv2d_backward(dy, cache, input_grad=True):
    r"""Gradients of :func:`conv2d_forward` (lecture 002's three formulas, as products).

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
    setup, cols, weight = cache.setup, cache.cols, cache.weight
    dy3 = check_output_grad(dy, setup)
    dweight = np.empty_like(weight)
    dcols = np.empty((setup.batch, cols.shape[1] - 1, cols.shape[2]), dtype=setup.dtype) if input_grad else None
    for outputs, rows in _group_slices(setup):
        group_dy = dy3[:, outputs]
        # dW = sum over images b of dY[b] cols[b]^T
        dweight[outputs] = np.matmul(group_dy, cols[:, rows].transpose(0, 2, 1)).sum(axis=0).reshape(
            dweight[outputs].shape)
        if input_grad:
            np.matmul(weight[outputs].reshape(weight[outputs].shape[0], -1).T, group_dy,
                      out=dcols[:, rows])
    dbias = dy3.sum(axis=(0, 2)) if cache.has_bias else None
    dx = None
    if input_grad:
        dx_padded = np.zeros((setup.batch, setup.in_channels) + setup.padded_hw, dtype=setup.dtype)
        add_patches(dcols.reshape((setup.batch, setup.in_channels) + setup.kernel + setup.out_hw),
                    dx_padded, setup)
        dx = crop_padding(dx_padded, setup)
    return dx, dweight, dbias
