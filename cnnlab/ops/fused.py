r"""A convolution, its ReLU and a 2x2 max pool as one op (the lecture CNN's blocks).

.. math::
    Y[b, c, i, j] = \max_{m, n \in \{0, 1\}} \operatorname{ReLU}\big((W \star X)[b, c, 2i + m, 2j + n]
        + \text{bias}[c]\big)

Max pooling commutes with ReLU, ``max(relu(x)) = relu(max(x))``, so pooling first lets the
ReLU (forward and backward) run on an array four times smaller. The pool's argmax over x
is the argmax over relu(x) wherever the window's maximum is > 0, and elsewhere the
gradient through the ReLU is 0 either way: the result is exactly that of the three ops in
the lecture's order. This reference composes the ops; :mod:`cnnlab.backend` also runs it
without ever storing the conv's full-size output.
"""

from __future__ import annotations

from cnnlab.ops.activation import relu_backward, relu_forward
from cnnlab.ops.conv import conv2d_backward, conv2d_forward
from cnnlab.ops.pool import max_pool2d_backward, max_pool2d_forward


def conv2d_relu_maxpool2d_forward(x, weight, bias=None, padding=0, input_grad=False):
    r"""``max_pool2d(relu(conv2d(x, weight, bias, padding=padding)), 2)``.

    Args:
        x: input images.
        weight: filters, as for :func:`cnnlab.ops.conv.conv2d_forward` (stride 1, no
            dilation, no groups).
        bias: one value per output channel, or None.
        padding: zeros added on each side of the input, an int or (p_h, p_w).
        input_grad: whether the backward will be asked for dX.

    Shape:
        - x: (N, C_in, H_in, W_in), float32 or float64
        - weight: (C_out, C_in, kH, kW); bias: (C_out,)
        - y: (N, C_out, H_conv // 2, W_conv // 2), where H_conv = H_in + 2 p_h - kH + 1
          (the conv's output size), likewise W

    Returns:
        ``(y, cache)``; pass the cache to :func:`conv2d_relu_maxpool2d_backward`.
    """
    conv_y, conv_cache = conv2d_forward(x, weight, bias, padding=padding)
    pooled, pool_cache = max_pool2d_forward(conv_y, 2)
    y, relu_mask = relu_forward(pooled)
    return y, (conv_cache, pool_cache, relu_mask, input_grad)


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
        ``(dx, dweight, dbias)``; dx is None unless the forward had ``input_grad=True``,
        dbias is None without a bias.
    """
    conv_cache, pool_cache, relu_mask, input_grad = cache
    conv_dy = max_pool2d_backward(relu_backward(dy, relu_mask), pool_cache)
    return conv2d_backward(conv_dy, conv_cache, input_grad=input_grad)
