"""ReLU, the 2x2 max pool, the linear layer and the Adam update, each in its fastest form here.

A compiled loop (cnnlab/backend/native/loops.c) reads each input once and writes each
output once, where NumPy runs an elementwise op over a strided view one short row at a
time and every op is one more pass over memory: the 2x2 max pool costs NumPy a copy into
four tap planes and about ten passes, an Adam update twelve. Every loop computes exactly
what the reference op in :mod:`cnnlab.ops` computes, bit for bit (the same float
operations in the same order); tests/test_kernels.py checks each against it. The linear
layer's products go to cnnlab's GEMM (cnnlab/backend/gemm.py).
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.backend import dispatch, gemm
from cnnlab.ops import activation, linear, pool


def relu_forward(x: np.ndarray):
    """:func:`cnnlab.ops.activation.relu_forward`: ``(y, mask)``."""
    loops = dispatch.loops()
    if loops is not None and dispatch.contiguous_float(x):
        # One pass for both outputs, the same bits as the reference.
        y, mask = np.empty_like(x), np.empty(x.shape, dtype=bool)
        loops.relu_forward(x, y, mask)
        return y, mask
    return activation.relu_forward(x)


def relu_backward(dy: np.ndarray, cache) -> np.ndarray:
    """:func:`cnnlab.ops.activation.relu_backward`."""
    loops = dispatch.loops()
    if (loops is not None and isinstance(dy, np.ndarray) and dispatch.contiguous_float(dy)
            and dy.shape == cache.shape and cache.flags.c_contiguous):
        dx = np.empty_like(dy)
        loops.relu_backward(dy, cache, dx)
        return dx
    return activation.relu_backward(dy, cache)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """:func:`cnnlab.ops.pool.max_pool2d_forward`; the 2x2 tiling pool in one compiled pass."""
    loops = dispatch.loops()
    if loops is not None:
        setup = pool.PoolSetup(x, kernel_size, stride, padding, "max_pool2d")
        if pool.is_2x2_tiling(setup):
            y = np.empty(setup.output_shape(), dtype=setup.dtype)
            index = np.empty(y.shape, dtype=np.uint8)
            loops.max_pool_2x2_forward(np.ascontiguousarray(x), y, index)
            return y, (setup, index)
    return pool.max_pool2d_forward(x, kernel_size, stride, padding)


def max_pool2d_backward(dy, cache):
    """:func:`cnnlab.ops.pool.max_pool2d_backward`."""
    setup, index = cache
    loops = dispatch.loops()
    if loops is not None and pool.is_2x2_tiling(setup):
        dy = pool.checked_output_grad(dy, setup, "max_pool2d")
        target = pool.GradientTarget(setup)
        loops.max_pool_2x2_backward(np.ascontiguousarray(dy), index, target.padded)
        return target.result()
    return pool.max_pool2d_backward(dy, cache)


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None):
    """:func:`cnnlab.ops.linear.linear_forward`, its product on cnnlab's GEMM."""
    linear.check_linear_shapes(x, weight, bias)
    y = gemm.matmul(x, weight.T)
    if bias is not None:
        y += bias
    return y, (x, weight, bias is not None)


def linear_backward(dy: np.ndarray, cache, input_grad: bool = True):
    """:func:`cnnlab.ops.linear.linear_backward`, its products on cnnlab's GEMM."""
    x, weight, has_bias = cache
    dx = gemm.matmul(dy, weight) if input_grad else None
    dweight = gemm.matmul(dy.T, x)
    dbias = dy.sum(axis=0) if has_bias else None
    return dx, dweight, dbias


def adam_step(weights, grad, exp_avg, exp_avg_sq, *, step: int, lr: float, beta1: float,
              beta2: float, eps: float, coupled_decay: float, decoupled_factor: float) -> bool:
    """One Adam update in one compiled pass; False (nothing done) where no loop takes the
    arrays, and the caller runs the NumPy lines (cnnlab/optim.py) that compute the same bits.

    ``coupled_decay``: lambda of Adam's g + lambda w (0 for none); ``decoupled_factor``:
    AdamW's 1 - lr lambda (1 for none).
    """
    loops = dispatch.loops()
    if loops is None or not dispatch.contiguous_float(weights, grad, exp_avg, exp_avg_sq):
        return False
    loops.adam_step(weights, grad, exp_avg, exp_avg_sq, coupled_decay, decoupled_factor,
                    beta1, beta2, math.sqrt(1 - beta2**step), eps, lr / (1 - beta1**step))
    return True
