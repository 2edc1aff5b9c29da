"""Pure functions, one forward/backward pair per operation of the lecture notes.

Every forward returns ``(y, cache)`` and its backward takes ``(dy, cache)``;
arrays are NCHW, float32 or float64. Nothing here keeps state between calls.

    y, cache = conv2d_forward(x, weight, bias, padding=1)
    dx, dweight, dbias = conv2d_backward(dy, cache)
"""

from cnnlab.ops.activation import (
    leaky_relu_backward,
    leaky_relu_forward,
    log_softmax,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax,
    tanh_backward,
    tanh_forward,
)
from cnnlab.ops.batchnorm import batch_norm_backward, batch_norm_forward
from cnnlab.ops.conv import (
    conv2d_backward,
    conv2d_forward,
    conv2d_naive,
    conv2d_naive_backward,
    conv2d_output_size,
    conv2d_padding,
)
from cnnlab.ops.dropout import dropout_backward, dropout_forward
from cnnlab.ops.linear import linear_backward, linear_forward
from cnnlab.ops.loss import cross_entropy, mse_loss
from cnnlab.ops.pool import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward
from cnnlab.ops.shape import flatten_backward, flatten_forward

__all__ = [
    "conv2d_output_size", "conv2d_padding", "conv2d_naive", "conv2d_naive_backward", "conv2d_forward", "conv2d_backward",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward", "softmax", "log_softmax",
    "cross_entropy", "mse_loss", "dropout_forward", "dropout_backward",
    "batch_norm_forward", "batch_norm_backward", "flatten_forward", "flatten_backward",
]
