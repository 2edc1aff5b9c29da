"""Convolution ops against PyTorch autograd, finite differences and the naive reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.errors import ShapeError
from cnnlab.ops.conv import (
    conv2d_backward,
    conv2d_forward,
    conv2d_naive,
    conv2d_naive_backward,
    conv2d_output_size,
)

# (batch, in_channels, height, width, out_channels, kernel, stride, padding, dilation, groups, bias)
CONFIGS = [
    (2, 3, 6, 7, 4, 3, 1, 1, 1, 1, True),            # lecture-style 3x3, padding 1, non-square input
    (2, 4, 7, 6, 4, 3, 2, 1, 2, 2, False),           # stride 2 + padding 1 + dilation 2 + groups 2
    (1, 4, 6, 5, 8, (3, 2), 1, "same", 1, 4, True),  # depthwise (groups = C_in), non-square kernel
    (2, 3, 5, 6, 4, (2, 4), 1, "same", 1, 1, True),  # even kernel: PyTorch pads bottom/right more
    (2, 2, 7, 7, 3, 3, 1, "same", 2, 1, False),      # "same" with dilation
    (1, 3, 6, 5, 2, (3, 1), (2, 1), "valid", 1, 1, True),
    (3, 2, 5, 5, 4, 1, 1, 0, 1, 2, True),            # 1x1 kernel, groups 2
    (2, 1, 8, 8, 5, 3, 2, (1, 0), 1, 1, True),       # first-layer shape: one input channel
    (2, 3, 4, 4, 2, 5, 1, 2, 1, 1, True),            # kernel larger than the unpadded input
    # Many input rows per output pixel: the "wide" (stride 1) and "channel" GEMM layouts.
    (2, 6, 5, 4, 3, 3, 1, 1, 1, 1, True),
    (2, 5, 4, 6, 3, (2, 3), 1, "same", 2, 1, False),
    (1, 6, 5, 5, 2, 3, 1, 0, 1, 1, True),
    (2, 6, 6, 7, 3, 3, 2, 1, 1, 1, True),
]


def _inputs(config, dtype, rng):
    batch, c_in, h, w, c_out, kernel, stride, padding, dilation, groups, bias = config
    k_h, k_w = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal((batch, c_in, h, w)).astype(dtype)
    weight = rng.standard_normal((c_out, c_in // groups, k_h, k_w)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _relative_error(actual, expected) -> float:
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def _torch_reference(x, weight, bias, options, dy):
    tensors = [torch.tensor(a, requires_grad=True) if a is not None else None for a in (x, weight, bias)]
    y = torch.nn.functional.conv2d(*tensors, **options)
    y.backward(torch.tensor(dy))
    grads = [t.grad.numpy() if t is not None else None for t in tensors]
    return y.detach().numpy(), grads


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("config", CONFIGS)
def test_forward_and_gradients_match_torch(config, dtype, tolerance, rng):
    x, weight, bias, options = _inputs(config, dtype, rng)
    y, cache = conv2d_forward(x, weight, bias, **options)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y_torch, (dx_torch, dw_torch, db_torch) = _torch_reference(x, weight, bias, options, dy)
    assert y.shape == y_torch.shape and y.dtype == dtype
    assert _relative_error(y, y_torch) <= tolerance
    dx, dweight, dbias = conv2d_backward(dy, cache)
    assert dx.dtype == dweight.dtype == dtype
    assert _relative_error(dx, dx_torch) <= tolerance
    assert _relative_error(dweight, dw_torch) <= tolerance
    if bias is None:
        assert dbias is None
    else:
        assert dbias.dtype == dtype and _relative_error(dbias, db_torch) <= tolerance


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("config", CONFIGS)
def test_naive_matches_fast_forward_and_backward(config, rng):
    x, weight, bias, options = _inputs(config, np.float64, rng)
    y, cache = conv2d_forward(x, weight, bias, **options)
    np.testing.assert_allclose(conv2d_naive(x, weight, bias, **options), y, rtol=0, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    fast = conv2d_backward(dy, cache)
    naive = conv2d_naive_backward(dy, x, weight, bias, **options)
    for fast_grad, naive_grad in zip(fast, naive):
        if naive_grad is None:
            assert fast_grad is None
        else:
            np.testing.assert_allclose(fast_grad, naive_grad, rtol=0, atol=1e-12)


def _numeric_gradient(function, array, step=1e-6):
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        plus = function()
        array[index] = saved - step
        minus = function()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * step)
    return grad


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[1], CONFIGS[3], CONFIGS[10], CONFIGS[12]])
def test_gradients_match_finite_differences(config, rng):
    x, weight, bias, options = _inputs(config, np.float64, rng)
    y, cache = conv2d_forward(x, weight, bias, **options)
    dy = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(conv2d_forward(x, weight, bias, **options)[0] * dy))

    dx, dweight, dbias = conv2d_backward(dy, cache)
    np.testing.assert_allclose(dx, _numeric_gradient(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dweight, _numeric_gradient(loss, weight), rtol=1e-6, atol=1e-7)
    if bias is not None:
        np.testing.assert_allclose(dbias, _numeric_gradient(loss, bias), rtol=1e-6, atol=1e-7)


def test_input_grad_false_skips_dx_and_keeps_other_gradients(rng):
    x, weight, bias, options = _inputs(CONFIGS[7], np.float32, rng)
    y, cache = conv2d_forward(x, weight, bias, **options)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dweight, dbias = conv2d_backward(dy, cache, input_grad=False)
    assert dx is None
    _, (_, dw_torch, db_torch) = _torch_reference(x, weight, bias, options, dy)
    assert _relative_error(dweight, dw_torch) <= 1e-4 and _relative_error(dbias, db_torch) <= 1e-4


def test_results_survive_later_calls_and_repeated_backward(rng):
    """Pooled scratch buffers never leak into returned arrays or a cache still in use."""
    x, weight, bias, options = _inputs(CONFIGS[0], np.float64, rng)
    y, cache = conv2d_forward(x, weight, bias, **options)
    dy = rng.standard_normal(y.shape)
    first = conv2d_backward(dy, cache)
    y_copy, first_copy = y.copy(), [g.copy() for g in first]
    other = _inputs(CONFIGS[0], np.float64, np.random.default_rng(1))
    other_y, other_cache = conv2d_forward(*other[:3], **other[3])  # may reuse the freed buffers
    second = conv2d_backward(dy, cache)                             # the first cache again
    conv2d_backward(rng.standard_normal(other_y.shape), other_cache)
    np.testing.assert_array_equal(y, y_copy)
    for before, kept, again in zip(first_copy, first, second):
        np.testing.assert_array_equal(kept, before)
        np.testing.assert_array_equal(again, before)


def test_two_forwards_before_backwards_stay_correct(rng):
    x, weight, bias, options = _inputs(CONFIGS[7], np.float64, rng)
    x2 = rng.standard_normal(x.shape)
    _, cache1 = conv2d_forward(x, weight, bias, **options)
    y2, cache2 = conv2d_forward(x2, weight, bias, **options)
    dy = rng.standard_normal(y2.shape)
    _, (dx_torch, dw_torch, _) = _torch_reference(x, weight, bias, options, dy)
    dx, dweight, _ = conv2d_backward(dy, cache1)
    assert _relative_error(dx, dx_torch) <= 1e-10 and _relative_error(dweight, dw_torch) <= 1e-10


def test_lecture_network_shapes_float32(rng):
    """The lecture CNN's two convolutions (small batch): fast path against torch."""
    for c_in, c_out, size in [(1, 32, 28), (32, 64, 14)]:
        x = rng.standard_normal((2, c_in, size, size)).astype(np.float32)
        weight = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype(np.float32)
        bias = rng.standard_normal(c_out).astype(np.float32)
        y, cache = conv2d_forward(x, weight, bias, padding=1)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        y_torch, grads = _torch_reference(x, weight, bias, {"padding": 1}, dy)
        assert _relative_error(y, y_torch) <= 1e-5
        for ours, theirs in zip(conv2d_backward(dy, cache), grads):
            assert ours.dtype == np.float32 and _relative_error(ours, theirs) <= 1e-5


@pytest.mark.parametrize("padding, stride, expected", [(0, 1, (26, 26)), (1, 1, (28, 28)), (1, 2, (14, 14))])
def test_output_size_lecture_examples(padding, stride, expected):
    assert conv2d_output_size((28, 28), 3, stride=stride, padding=padding) == expected


def test_output_size_general_cases():
    assert conv2d_output_size((28, 20), (5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2)) == (14, 16)
    assert conv2d_output_size((7, 9), 4, padding="same") == (7, 9)
    assert conv2d_output_size((7, 9), 3, padding="valid") == (5, 7)


def test_output_size_errors():
    with pytest.raises(ShapeError, match="kernel 5x5 \\(dilation 1\\) does not fit a 3x3 input with padding 0"):
        conv2d_output_size((3, 3), 5)
    with pytest.raises(ShapeError, match="'same' needs stride 1"):
        conv2d_output_size((28, 28), 3, stride=2, padding="same")
    with pytest.raises(ShapeError, match="dilation 3"):
        conv2d_output_size((6, 6), 3, dilation=3)


@pytest.mark.parametrize("make_args, message", [
    (lambda r: (r.standard_normal((3, 5, 5)), r.standard_normal((2, 3, 3, 3))), "\\(N, C, H, W\\)"),
    (lambda r: (r.standard_normal((1, 3, 5, 5)), r.standard_normal((2, 2, 3, 3))), "input channels"),
    (lambda r: (r.standard_normal((1, 3, 5, 5)).astype(np.float32), r.standard_normal((2, 3, 3, 3))),
     "float32 but weight is float64"),
    (lambda r: (np.ones((1, 3, 5, 5), dtype=np.int64), np.ones((2, 3, 3, 3), dtype=np.int64)), "float32 or float64"),
])
def test_bad_inputs_raise_one_line_shape_errors(make_args, message, rng):
    with pytest.raises(ShapeError, match=message) as info:
        conv2d_forward(*make_args(rng))
    assert "\n" not in str(info.value)


def test_bad_groups_bias_and_gradient(rng):
    x = rng.standard_normal((1, 4, 5, 5))
    with pytest.raises(ShapeError, match="groups=3 must divide"):
        conv2d_forward(x, rng.standard_normal((3, 1, 3, 3)), groups=3)
    with pytest.raises(ShapeError, match="bias must have shape \\(2,\\)"):
        conv2d_forward(x, rng.standard_normal((2, 4, 3, 3)), rng.standard_normal(3))
    with pytest.raises(ShapeError, match="padding must be"):
        conv2d_forward(x, rng.standard_normal((2, 4, 3, 3)), padding="full")
    y, cache = conv2d_forward(x, rng.standard_normal((2, 4, 3, 3)))
    with pytest.raises(ShapeError, match="expected \\(1, 2, 3, 3\\)"):
        conv2d_backward(np.ones((1, 2, 4, 4)), cache)
