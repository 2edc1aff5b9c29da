"""Layers with PyTorch's class names, arguments, parameter shapes and state_dict keys.

Each layer is a thin wrapper of one op pair: the backend's (``cnnlab.backend``: conv,
linear, max pool, ReLU, which run the fastest code this machine has) or the reference in
``cnnlab.ops`` for the others. ``forward`` calls the op and keeps its cache, ``backward`` passes the cache back and adds the parameter gradients into
``.grad``. Weights load from a PyTorch state_dict (``v.numpy()``) with no transposes.
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.backend import (conv2d_backward, conv2d_forward, linear_backward, linear_forward,
                            max_pool2d_backward, max_pool2d_forward, relu_backward, relu_forward)
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.nn import init
from cnnlab.nn.module import Module, Parameter
from cnnlab.ops.activation import (
    leaky_relu_backward,
    leaky_relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    tanh_backward,
    tanh_forward,
)
from cnnlab.ops.batchnorm import batch_norm_backward, batch_norm_forward
from cnnlab.ops.conv import conv2d_output_size, conv2d_padding
from cnnlab.ops.dropout import dropout_backward, dropout_forward
from cnnlab.ops.pool import avg_pool2d_backward, avg_pool2d_forward, pool2d_output_size
from cnnlab.ops.shape import flatten_backward, flatten_forward, flatten_output_shape
from cnnlab.utils.validation import int_pair, positive_int


def _check_input(owner: str, shape: tuple[int, ...], ndims: tuple[int, ...], channels: int,
                 expected: str, hint: str = "") -> None:
    """The check of both ``forward`` (owner: the layer's repr) and ``output_shape_for``."""
    shape = tuple(shape)
    if len(shape) not in ndims or shape[1] != channels:
        raise ShapeError(f"{owner} expects input of shape {expected}, got {shape}{hint}")


def _add_grad(parameter: Parameter | None, grad: np.ndarray | None) -> None:
    if parameter is not None:
        parameter.grad += grad


def _reset_weight_and_bias(weight: Parameter, bias: Parameter | None, rng) -> None:
    """PyTorch's default: kaiming_uniform(a=sqrt(5)) weights, U(-1/sqrt(fan_in), ..) bias."""
    rng = init._generator(rng)
    init.kaiming_uniform_(weight.data, a=math.sqrt(5), rng=rng)
    if bias is not None:
        fan_in, _ = init.calculate_fan_in_and_fan_out(weight.data.shape)
        bound = 1 / math.sqrt(fan_in)
        init.uniform_(bias.data, -bound, bound, rng=rng)


class Conv2d(Module):
    r"""2D convolution over a batch of images (lecture 002).

    .. math::
        y(n, c_o, i, j) = b(c_o) + \sum_{c_i} \sum_{m, l} w(c_o, c_i, m, l)\,
        x(n, c_i, s i + d m - p, s j + d l - p)

    Args:
        in_channels (int): channels of the input image.
        out_channels (int): channels produced by the convolution (number of filters).
        kernel_size (int or tuple): size of the kernel.
        stride (int or tuple): step of the sliding window. Default: 1
        padding (int, tuple, "valid" or "same"): zeros added on each side. "same" keeps
            H and W (stride 1 only; an even kernel gets the extra row/column at the
            bottom/right, as in PyTorch: :func:`cnnlab.ops.conv.conv2d_padding`). Default: 0
        dilation (int or tuple): spacing between kernel elements. Default: 1
        groups (int): blocked connections from input to output channels. Default: 1
        bias (bool): add a learnable bias. Default: True
        rng (np.random.Generator): draws the initial weights (PyTorch's default scheme:
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias).
        dtype: of the parameters. Default: float32

    Shape:
        - Input: (N, C_in, H_in, W_in)
        - Output: (N, C_out, H_out, W_out) with
          H_out = floor((H_in + 2 padding[0] - dilation[0] (kernel_size[0] - 1) - 1) / stride[0] + 1)
          and W_out likewise.

    Attributes:
        weight (Parameter): (C_out, C_in / groups, kernel_size[0], kernel_size[1])
        bias (Parameter or None): (C_out,)
        op_padding: the padding as the ops take it (a pair, "valid" or "same")
    """

    fusion_kind = "conv2d"  # see cnnlab/nn/fusion.py

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, rng=None, dtype=np.float32) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels", owner="Conv2d")
        self.out_channels = positive_int(out_channels, "out_channels", owner="Conv2d")
        self.kernel_size = int_pair(kernel_size, "kernel_size", owner="Conv2d")
        self.stride = int_pair(stride, "stride", owner="Conv2d")
        self.dilation = int_pair(dilation, "dilation", owner="Conv2d")
        self.groups = positive_int(groups, "groups", owner="Conv2d")
        if in_channels % groups or out_channels % groups:
            raise ConfigError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                              f"must both be divisible by groups ({groups})")
        # a padding the op would refuse is refused here, before any weight exists
        conv2d_padding(padding, self.kernel_size, self.stride, self.dilation, owner="Conv2d",
                       error=ConfigError)
        self.padding = padding if isinstance(padding, str) else int_pair(
            padding, "padding", minimum=0, owner="Conv2d")
        self.op_padding = self.padding
        weight_shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(np.empty(weight_shape, dtype=dtype))
        self.bias = Parameter(np.empty(out_channels, dtype=dtype)) if bias else None
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None) -> None:
        """PyTorch's default: kaiming_uniform(a=sqrt(5)) weights, U(-1/sqrt(fan_in), ..) bias."""
        _reset_weight_and_bias(self.weight, self.bias, rng)

    @classmethod
    def output_shape_for(cls, input_shape, in_channels, out_channels, kernel_size, stride=1,
                         padding=0, dilation=1, groups=1, bias=True) -> tuple[int, ...]:
        """(N, C_out, H_out, W_out) of ``Conv2d(in_channels, out_channels, kernel_size, ...)``
        for an input of ``input_shape``, before the layer exists; H_out and W_out are
        :func:`cnnlab.ops.conv.conv2d_output_size`."""
        _check_input(cls.__name__, input_shape, (4,), in_channels, f"(N, {in_channels}, H, W)")
        try:
            out_hw = conv2d_output_size(tuple(input_shape[2:]), kernel_size, stride, padding,
                                        dilation)
        except ShapeError as error:
            raise ShapeError(f"{cls.__name__}: {error}") from None
        return (input_shape[0], out_channels) + out_hw

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape_for(input_shape, self.in_channels, self.out_channels,
                                     self.kernel_size, self.stride, self.padding, self.dilation,
                                     self.groups)

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(repr(self), x.shape, (4,), self.in_channels, f"(N, {self.in_channels}, H, W)")
        bias = None if self.bias is None else self.bias.data
        y, self._cache = conv2d_forward(x, self.weight.data, bias, stride=self.stride,
                                        padding=self.padding, dilation=self.dilation,
                                        groups=self.groups)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        dx, dweight, dbias = conv2d_backward(dy, self._saved_cache(), input_grad=self.requires_input_grad)
        _add_grad(self.weight, dweight)
        _add_grad(self.bias, dbias)
        return dx

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


class Linear(Module):
    r"""Fully connected layer: :math:`y = x W^T + b` (lecture 003: z_j = sum_i w_ij a_i + b_j).

    Args:
        in_features (int): size of each input sample.
        out_features (int): size of each output sample.
        bias (bool): add a learnable bias. Default: True
        rng (np.random.Generator): draws the initial weights, U(-1/sqrt(in_features),
            1/sqrt(in_features)) as in PyTorch.
        dtype: of the parameters. Default: float32

    Shape:
        - Input: (N, in_features)
        - Output: (N, out_features)

    Attributes:
        weight (Parameter): (out_features, in_features), PyTorch's layout
        bias (Parameter or None): (out_features,)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None,
                 dtype=np.float32) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features", owner="Linear")
        self.out_features = positive_int(out_features, "out_features", owner="Linear")
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        self.bias = Parameter(np.empty(out_features, dtype=dtype)) if bias else None
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None) -> None:
        """PyTorch's default: kaiming_uniform(a=sqrt(5)) weights, U(-1/sqrt(fan_in), ..) bias."""
        _reset_weight_and_bias(self.weight, self.bias, rng)

    @classmethod
    def output_shape_for(cls, input_shape, in_features, out_features, bias=True) -> tuple[int, ...]:
        """(N, out_features) of ``Linear(in_features, out_features)`` for an input of
        ``input_shape``, before the layer exists."""
        _check_linear_input(cls.__name__, input_shape, in_features)
        return (input_shape[0], out_features)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape_for(input_shape, self.in_features, self.out_features)

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_linear_input(repr(self), x.shape, self.in_features)
        bias = None if self.bias is None else self.bias.data
        y, self._cache = linear_forward(x, self.weight.data, bias)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        dx, dweight, dbias = linear_backward(dy, self._saved_cache(), input_grad=self.requires_input_grad)
        _add_grad(self.weight, dweight)
        _add_grad(self.bias, dbias)
        return dx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_linear_input(owner: str, shape: tuple[int, ...], in_features: int) -> None:
    hint = "; add Flatten() before it" if len(shape) > 2 else ""
    _check_input(owner, shape, (2,), in_features, f"(N, {in_features})", hint)


class _Stateless(Module):
    """A layer without parameters: forward/backward are one op pair; by default the output
    has the input's shape."""

    @classmethod
    def output_shape_for(cls, input_shape, *args, **kwargs) -> tuple[int, ...]:
        """The input's shape (elementwise layers: activations, Dropout)."""
        return tuple(input_shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape_for(input_shape)

    def _forward_op(self, x):
        raise NotImplementedError

    def _backward_op(self, dy, cache):
        raise NotImplementedError

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, self._cache = self._forward_op(x)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        cache = self._saved_cache()
        if not self.requires_input_grad:
            return None
        return self._backward_op(dy, cache)


def _check_pool_input(owner: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 4:
        raise ShapeError(f"{owner} expects input of shape (N, C, H, W), got {tuple(shape)}")


class _Pool2d(_Stateless):
    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        name = type(self).__name__
        int_pair(kernel_size, "kernel_size", owner=name)
        int_pair(kernel_size if stride is None else stride, "stride", owner=name)
        int_pair(padding, "padding", minimum=0, owner=name)
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    @classmethod
    def output_shape_for(cls, input_shape, kernel_size, stride=None, padding=0) -> tuple[int, ...]:
        """(N, C, H_out, W_out) for an input of ``input_shape``, before the layer exists; H_out
        and W_out are :func:`cnnlab.ops.pool.pool2d_output_size`."""
        _check_pool_input(cls.__name__, input_shape)
        try:
            out_hw = pool2d_output_size(tuple(input_shape[2:]), kernel_size, stride, padding)
        except ShapeError as error:
            raise ShapeError(f"{cls.__name__}: {error}") from None
        return tuple(input_shape[:2]) + out_hw

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape_for(input_shape, self.kernel_size, self.stride, self.padding)

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_pool_input(repr(self), x.shape)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    r"""Max pooling: each output is the largest input in its window (lecture 002).

    Args:
        kernel_size (int or tuple): window size.
        stride (int or tuple): window step. Default: kernel_size
        padding (int or tuple): implicit -inf padding on each side. Default: 0

    Shape:
        - Input: (N, C, H_in, W_in)
        - Output: (N, C, H_out, W_out), H_out = floor((H_in + 2 padding - kernel_size) / stride + 1)

    The gradient flows only to the position of each window's maximum.
    """

    fusion_kind = "max_pool2d"  # see cnnlab/nn/fusion.py

    def _forward_op(self, x):
        return max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def _backward_op(self, dy, cache):
        return max_pool2d_backward(dy, cache)


class AvgPool2d(_Pool2d):
    r"""Average pooling (zero padding counted in the average, PyTorch's default).

    Args:
        kernel_size (int or tuple): window size.
        stride (int or tuple): window step. Default: kernel_size
        padding (int or tuple): zeros added on each side. Default: 0

    Shape:
        - Input: (N, C, H_in, W_in)
        - Output: (N, C, H_out, W_out), H_out = floor((H_in + 2 padding - kernel_size) / stride + 1)
    """

    def _forward_op(self, x):
        return avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def _backward_op(self, dy, cache):
        return avg_pool2d_backward(dy, cache)


class ReLU(_Stateless):
    r"""ReLU(x) = max(0, x).  Shape: any; output has the input's shape."""

    fusion_kind = "relu"  # see cnnlab/nn/fusion.py

    def _forward_op(self, x):
        return relu_forward(x)

    def _backward_op(self, dy, cache):
        return relu_backward(dy, cache)


class LeakyReLU(_Stateless):
    r"""LeakyReLU(x) = x if x > 0 else negative_slope * x.

    Args:
        negative_slope (float): slope for negative inputs. Default: 0.01

    Shape: any; output has the input's shape.
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _forward_op(self, x):
        return leaky_relu_forward(x, self.negative_slope)

    def _backward_op(self, dy, cache):
        return leaky_relu_backward(dy, cache)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(_Stateless):
    r"""Sigmoid(x) = 1 / (1 + exp(-x)).  Shape: any; output has the input's shape."""

    def _forward_op(self, x):
        return sigmoid_forward(x)

    def _backward_op(self, dy, cache):
        return sigmoid_backward(dy, cache)


class Tanh(_Stateless):
    r"""Tanh(x) = (exp(x) - exp(-x)) / (exp(x) + exp(-x)).  Shape: any; output has the input's shape."""

    def _forward_op(self, x):
        return tanh_forward(x)

    def _backward_op(self, dy, cache):
        return tanh_backward(dy, cache)


class Flatten(_Stateless):
    r"""Flattens the dimensions from ``start_dim`` to the last into one.

    Args:
        start_dim (int): first dimension to flatten. Default: 1

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C * H * W) for start_dim = 1
    """

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = int(start_dim)

    @classmethod
    def output_shape_for(cls, input_shape, start_dim: int = 1) -> tuple[int, ...]:
        """:func:`cnnlab.ops.shape.flatten_output_shape`: (N, C, H, W) -> (N, C * H * W)."""
        try:
            return flatten_output_shape(input_shape, int(start_dim))
        except ShapeError as error:
            raise ShapeError(f"{cls.__name__}: {error}") from None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape_for(input_shape, self.start_dim)

    def _forward_op(self, x):
        return flatten_forward(x, self.start_dim)

    def _backward_op(self, dy, cache):
        return flatten_backward(dy, cache)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim=-1"


class Dropout(_Stateless):
    r"""During training, zeroes each element with probability ``p`` and scales the rest by
    1 / (1 - p) (lecture 003); the identity in eval mode.

    Args:
        p (float): probability of an element to be zeroed. Default: 0.5
        rng (np.random.Generator): draws the masks; the same seed gives the same masks.

    Shape: any; output has the input's shape.
    """

    def __init__(self, p: float = 0.5, *, rng=None) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ConfigError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = init._generator(rng)

    def _forward_op(self, x):
        return dropout_forward(x, self.p, self.training, self.rng)

    def _backward_op(self, dy, cache):
        return dropout_backward(dy, cache)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d (see BatchNorm2d)."""

    _input_ndims: tuple[int, ...] = ()
    _expected: str = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True,
                 dtype=np.float32) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = positive_int(num_features, "num_features", owner=name)
        if not eps > 0:
            raise ConfigError(f"{name}: eps must be positive, got {eps}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ConfigError(f"{name}: momentum must be in [0, 1] or None, got {momentum}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype)) if bias else None
        else:
            self.weight = None
            self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def _momentum_this_step(self) -> float:
        if self.momentum is not None:
            return self.momentum
        # momentum=None: cumulative average, weight 1 / (batches seen)
        return 1.0 / float(self.num_batches_tracked)

    @classmethod
    def output_shape_for(cls, input_shape, num_features, *args, **kwargs) -> tuple[int, ...]:
        """The input's shape, once it has ``num_features`` channels."""
        _check_input(cls.__name__, input_shape, cls._input_ndims, num_features, cls._expected)
        return tuple(input_shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape_for(input_shape, self.num_features)

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_input(repr(self), x.shape, self._input_ndims, self.num_features, self._expected)
        use_batch_stats = self.training or not self.track_running_stats
        momentum = 0.0
        if self.training and self.track_running_stats:
            np.add(self.num_batches_tracked, 1, out=self.num_batches_tracked)
            momentum = self._momentum_this_step()
        # (N, C, L) is normalised as (N, C, L, 1)
        shape = x.shape
        if x.ndim == 3:
            x = x[..., np.newaxis]
        # The running statistics are None without tracking; with it, training updates them
        # and evaluation uses them.
        y, self._cache = batch_norm_forward(
            x,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.running_mean, self.running_var,
            use_batch_stats, momentum=momentum, eps=self.eps,
        )
        return y.reshape(shape)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        cache = self._saved_cache()
        shape = dy.shape
        if dy.ndim == 3:
            dy = dy[..., np.newaxis]
        dx, dweight, dbias = batch_norm_backward(dy, cache)
        _add_grad(self.weight, dweight)
        _add_grad(self.bias, dbias)
        return dx.reshape(shape) if self.requires_input_grad else None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    r"""Batch normalisation over (N, C) or (N, C, L) inputs; see :class:`BatchNorm2d`.

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input
    """

    _input_ndims = (2, 3)
    _expected = "(N, C) or (N, C, L) with C = num_features"


class BatchNorm2d(_BatchNorm):
    r"""Batch normalisation of each channel over the batch and the image:

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    In training, E[x] and Var[x] (biased) come from the batch and the running estimates are
    updated as running = (1 - momentum) running + momentum * batch statistic (unbiased
    variance); in eval mode the running estimates are used.

    Args:
        num_features (int): C, the number of channels.
        eps (float): added to the variance for numerical stability. Default: 1e-5
        momentum (float or None): weight of the new statistic in the running estimate;
            None gives a cumulative average. Default: 0.1
        affine (bool): learn gamma (weight) and beta (bias). Default: True
        bias (bool): with ``affine``, learn beta too (PyTorch 2.13's keyword). Default: True
        track_running_stats (bool): keep running_mean/running_var/num_batches_tracked
            buffers; when False, batch statistics are used in eval mode too. Default: True
        dtype: of the parameters and running statistics. Default: float32

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, C, H, W)
    """

    _input_ndims = (4,)
    _expected = "(N, C, H, W) with C = num_features"
