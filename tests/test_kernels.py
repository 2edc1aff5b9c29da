"""The compiled loops (cnnlab._loops) compute exactly what the NumPy fallback computes, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.nn.module import Parameter
from cnnlab.ops import _kernels
from cnnlab.ops import _winograd
from cnnlab.ops import conv as conv_ops
from cnnlab.ops.activation import relu_backward, relu_forward
from cnnlab.ops.pool import max_pool2d_backward, max_pool2d_forward
from cnnlab.optim import Adam, AdamW

BUILT = "cnnlab._loops is not built: pip install -e '.[test]' builds it (needs gcc and python3-dev)"
pytestmark = pytest.mark.usefixtures("kernel_level")  # every test at every level the CPU runs


def _both_ways(function, monkeypatch):
    """function() with the compiled loops, then with the NumPy code."""
    results = []
    for setting in ("", "numpy"):
        monkeypatch.setenv("CNNLAB_KERNELS", setting)
        results.append(function())
    return results


def _awkward_values(array, rng):
    """Many ties, plus NaN, infinities and signed zeros."""
    flat = array.reshape(-1)
    for value in (np.nan, np.inf, -np.inf, -0.0, 0.0):
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 40))] = value
    return array


def _assert_same_bits(got, expected):
    """Equal, down to the sign of zeros and NaN payloads."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes()


def _pool(x, dy):
    y, cache = max_pool2d_forward(x, 2)
    return y, cache[1], max_pool2d_backward(dy, cache)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 28, 28), (2, 5, 7, 9), (1, 1, 2, 2), (3, 2, 14, 15),
                                   (2, 3, 5, 70), (1, 2, 4, 33)])
def test_max_pool_2x2_kernel_equals_numpy_bit_for_bit(shape, dtype, rng, monkeypatch):
    assert _kernels.enabled(), BUILT
    x = _awkward_values(rng.integers(-2, 3, size=shape).astype(dtype), rng)
    dy = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(dtype)
    dy.reshape(-1)[::7] = np.nan
    (y_fast, index_fast, dx_fast), (y_numpy, index_numpy, dx_numpy) = _both_ways(
        lambda: _pool(x, dy), monkeypatch)
    for got, expected in ((index_fast, index_numpy), (y_fast, y_numpy), (dx_fast, dx_numpy)):
        _assert_same_bits(got, expected)
    assert dx_fast.dtype == dtype and dx_fast.shape == shape


def test_max_pool_kernel_reads_strided_input_and_gradient(rng, monkeypatch):
    x = rng.standard_normal((2, 6, 10, 12))[:, ::2, :, 1:-1]  # not contiguous
    dy = rng.standard_normal((2, 3, 10, 5))[:, :, ::-2]       # negative strides
    (y_fast, _, dx_fast), (y_numpy, _, dx_numpy) = _both_ways(lambda: _pool(x, dy), monkeypatch)
    np.testing.assert_array_equal(y_fast, y_numpy)
    np.testing.assert_array_equal(dx_fast, dx_numpy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernel_equals_numpy_bit_for_bit(dtype, rng, monkeypatch):
    assert _kernels.enabled(), BUILT
    x = _awkward_values(rng.standard_normal((3, 4, 5, 7)).astype(dtype), rng)
    dy = _awkward_values(rng.standard_normal(x.shape).astype(dtype), rng)

    def relu():
        y, mask = relu_forward(x)
        return y, mask, relu_backward(dy, mask)

    fast, numpy = _both_ways(relu, monkeypatch)
    for got, expected in zip(fast, numpy):
        _assert_same_bits(got, expected)


def test_relu_falls_back_for_strided_input(rng, monkeypatch):
    x = rng.standard_normal((6, 8)).astype(np.float32)[:, ::2]
    (y_fast, mask_fast), (y_numpy, mask_numpy) = _both_ways(lambda: relu_forward(x), monkeypatch)
    np.testing.assert_array_equal(y_fast, y_numpy)
    np.testing.assert_array_equal(mask_fast, mask_numpy)


@pytest.mark.parametrize("optimizer, weight_decay", [(Adam, 0.0), (Adam, 0.1), (AdamW, 0.0), (AdamW, 0.3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_kernel_equals_numpy_bit_for_bit(optimizer, weight_decay, dtype, monkeypatch):
    assert _kernels.enabled(), BUILT

    def train():
        rng = np.random.default_rng(3)
        parameters = [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in ((40, 7), (7,))]
        adam = optimizer(parameters, lr=3e-3, weight_decay=weight_decay)
        for _ in range(6):
            for parameter in parameters:
                parameter.grad = rng.standard_normal(parameter.data.shape).astype(dtype)
            adam.step()
        return [array.copy() for index, parameter in enumerate(parameters)
                for array in (parameter.data, adam.state[index]["exp_avg"], adam.state[index]["exp_avg_sq"])]

    fast, numpy = _both_ways(train, monkeypatch)
    for got, expected in zip(fast, numpy):
        assert got.dtype == dtype
        _assert_same_bits(got, expected)


# Stride-1 convolutions wide enough for the "wide" layout (C_in kH kW + 1 >= H_out W_out):
# symmetric, asymmetric ("same" with an even kernel), no padding, dilation, a 1x1 kernel.
WIDE_CASES = [
    ((3, 8, 6, 6), (5, 8, 3, 3), {"padding": 1}),
    ((2, 9, 5, 7), (4, 9, 2, 2), {"padding": "same"}),
    ((2, 16, 6, 5), (3, 16, 3, 3), {"padding": 0}),
    ((2, 12, 7, 7), (6, 12, 3, 3), {"padding": 2, "dilation": 2}),
    ((2, 40, 4, 4), (8, 40, 1, 1), {}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, options", WIDE_CASES)
def test_wide_conv_loops_equal_numpy_bit_for_bit(x_shape, w_shape, options, dtype, rng, monkeypatch):
    """im2col, col2im and both layout copies in C: the conv's y, dX, dW and db are the same bits."""
    assert _kernels.enabled(), BUILT
    monkeypatch.setattr(_winograd, "ENABLED", False)  # 3x3 float32 would go to Winograd
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    x.reshape(-1)[::11] = -0.0

    def conv():
        y, cache = conv_ops.conv2d_forward(x, weight, bias, **options)
        assert cache.layout == "wide"
        dy = np.cos(np.arange(y.size, dtype=dtype)).reshape(y.shape)
        return (y,) + conv_ops.conv2d_backward(dy, cache)

    fast = conv()
    with monkeypatch.context() as patch:  # the loops off, the products on the same GEMM
        patch.setattr(_kernels, "get", lambda: None)
        numpy = conv()
    for got, expected in zip(fast, numpy):
        _assert_same_bits(got, expected)
    assert fast[1].shape == x_shape


def test_wide_loops_reject_bad_geometry():
    assert _kernels.enabled(), BUILT
    loops = _kernels.get()
    x = np.zeros((2, 3, 4, 4), dtype=np.float32)
    cols = np.zeros((3 * 9 + 1, 2 * 4 * 6), dtype=np.float32)
    loops.wide_im2col(x, cols, 1, 1, 6, 6, 3, 3, 1, 1)  # fits: 4x4 output on the 6-wide grid
    with pytest.raises(ValueError, match="N H_out W'"):
        loops.wide_im2col(x, np.zeros((28, 47), np.float32), 1, 1, 6, 6, 3, 3, 1, 1)
    with pytest.raises(ValueError, match="do not fit"):
        loops.wide_im2col(x, cols, 1, 1, 6, 6, 9, 9, 1, 1)
    with pytest.raises(ValueError, match="dtype"):
        loops.wide_col2im(cols[:-1], x.astype(np.float64), 1, 1, 6, 6, 3, 3, 1, 1)
    with pytest.raises(ValueError, match="W' >= W"):
        loops.wide_to_nchw(np.zeros((3, 2 * 4 * 3), np.float32), x)


def test_loops_reject_mismatched_arrays():
    assert _kernels.enabled(), BUILT
    loops = _kernels.get()
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="H//2"):
        loops.max_pool_2x2_forward(x, np.empty((1, 1, 3, 2), np.float32), np.empty((1, 1, 3, 2), np.uint8))
    with pytest.raises(ValueError, match="float32 or float64"):
        loops.relu_forward(x.astype(np.int32), x, np.empty(x.shape, bool))
    with pytest.raises(ValueError, match="one shape"):
        loops.relu_backward(x, np.empty((2, 2), bool), x)
    with pytest.raises(ValueError, match="one shape and dtype"):
        loops.adam_step(x, x.astype(np.float64), x.copy(), x.copy(), 0.0, 1.0, 0.9, 0.999, 1.0, 1e-8, 1e-3)
    with pytest.raises((BufferError, ValueError), match="contiguous"):
        loops.relu_forward(x, x[:, :, ::2], np.empty((1, 1, 2, 4), bool))  # y not contiguous


def test_environment_variable_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("CNNLAB_KERNELS", "numpy")
    assert not _kernels.enabled()
    assert _kernels.describe().startswith("numpy")
    monkeypatch.delenv("CNNLAB_KERNELS")
    assert _kernels.enabled()
    assert _kernels.describe() == "cnnlab._loops (C)"


def test_without_the_compiled_module_the_numpy_code_runs(monkeypatch, rng):
    import builtins

    real_import = builtins.__import__

    def not_built(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "cnnlab.backend" and "_loops" in (fromlist or ()):
            raise ImportError("cannot import name '_loops' from 'cnnlab.backend'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", not_built)
    _kernels.reset()
    try:
        assert _kernels.get() is None
        assert "not built" in _kernels.describe()
        y, _ = max_pool2d_forward(rng.standard_normal((1, 1, 4, 4)), 2)
        assert y.shape == (1, 1, 2, 2)
    finally:
        monkeypatch.undo()
        _kernels.reset()
    assert _kernels.enabled()
