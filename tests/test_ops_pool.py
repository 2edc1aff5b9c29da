"""Max and average pooling against PyTorch autograd (ties included) and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab import backend
from cnnlab.errors import ShapeError
from cnnlab.ops.pool import avg_pool2d_backward, avg_pool2d_forward

# The layers' max pool: the backend's, which is the reference (cnnlab.ops.pool) at the
# "numpy" level and a compiled loop for the 2x2 tiling pool at the others.
max_pool2d_forward, max_pool2d_backward = backend.max_pool2d_forward, backend.max_pool2d_backward

# (shape, kernel, stride, padding)
CONFIGS = [
    ((2, 3, 8, 8), 2, None, 0),           # the lecture's 2x2 / stride 2
    ((2, 3, 7, 9), 2, None, 0),           # odd sizes: the last row/column is dropped
    ((2, 2, 9, 7), 3, 2, 0),              # overlapping windows
    ((1, 2, 7, 8), 3, 2, 1),              # overlapping + padding
    ((2, 2, 6, 9), (2, 3), (1, 2), (1, 1)),  # non-square kernel, stride, padding
    ((1, 1, 5, 5), 2, 3, 0),              # stride larger than the kernel: gaps
]

OPS = {
    "max": (max_pool2d_forward, max_pool2d_backward, torch.nn.functional.max_pool2d),
    "avg": (avg_pool2d_forward, avg_pool2d_backward, torch.nn.functional.avg_pool2d),
}


@pytest.fixture(autouse=True)
def _every_level(kernel_level):
    """Every test here runs at each kernel level this CPU runs, NumPy's included."""
    return kernel_level


def _torch_pool(kind, x, kernel, stride, padding, dy):
    x_torch = torch.tensor(x, requires_grad=True)
    y = OPS[kind][2](x_torch, kernel, stride, padding)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), x_torch.grad.numpy()


def _relative_error(actual, expected) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("config", CONFIGS)
def test_forward_and_gradient_match_torch(config, kind, dtype, tolerance, rng):
    shape, kernel, stride, padding = config
    forward, backward, _ = OPS[kind]
    x = rng.standard_normal(shape).astype(dtype)
    y, cache = forward(x, kernel, stride, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    y_torch, dx_torch = _torch_pool(kind, x, kernel, stride, padding, dy)
    assert y.shape == y_torch.shape and y.dtype == dtype
    assert _relative_error(y, y_torch) <= tolerance
    dx = backward(dy, cache)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert _relative_error(dx, dx_torch) <= tolerance


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("make_input", [
    lambda rng, shape: np.ones(shape),                                 # every element ties
    lambda rng, shape: rng.integers(0, 3, size=shape).astype(float),   # many ties
], ids=["all-equal", "integers"])
def test_max_pool_ties_route_gradient_like_torch(config, make_input, rng):
    shape, kernel, stride, padding = config
    x = make_input(rng, shape)
    y, cache = max_pool2d_forward(x, kernel, stride, padding)
    dy = rng.integers(1, 9, size=y.shape).astype(float)
    y_torch, dx_torch = _torch_pool("max", x, kernel, stride, padding, dy)
    np.testing.assert_array_equal(y, y_torch)
    np.testing.assert_array_equal(max_pool2d_backward(dy, cache), dx_torch)


def test_max_pool_tie_goes_to_first_element_in_row_major_order():
    x = np.array([[[[1.0, 5.0], [5.0, 5.0]]]])
    y, cache = max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(max_pool2d_backward(np.ones_like(y), cache), [[[[0, 1], [0, 0]]]])


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[3], CONFIGS[4]])
def test_gradient_matches_finite_differences(config, kind, rng):
    shape, kernel, stride, padding = config
    forward, backward, _ = OPS[kind]
    x = rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1  # no ties
    y, cache = forward(x, kernel, stride, padding)
    dy = rng.standard_normal(y.shape)
    dx = backward(dy, cache)
    numeric = np.zeros_like(x)
    step = 1e-6
    for index in np.ndindex(shape):
        saved = x[index]
        x[index] = saved + step
        plus = float(np.sum(forward(x, kernel, stride, padding)[0] * dy))
        x[index] = saved - step
        minus = float(np.sum(forward(x, kernel, stride, padding)[0] * dy))
        x[index] = saved
        numeric[index] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-7)


def test_lecture_pool_float32_and_results_not_overwritten(rng):
    x = rng.standard_normal((4, 32, 28, 28)).astype(np.float32)
    y, cache = max_pool2d_forward(x, 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = max_pool2d_backward(dy, cache)
    y_copy, dx_copy = y.copy(), dx.copy()
    max_pool2d_backward(dy * 2, max_pool2d_forward(x * 3, 2)[1])
    np.testing.assert_array_equal(y, y_copy)
    np.testing.assert_array_equal(dx, dx_copy)
    y_torch, dx_torch = _torch_pool("max", x, 2, None, 0, dy)
    np.testing.assert_array_equal(y, y_torch)
    np.testing.assert_array_equal(dx, dx_torch)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_bad_arguments_raise_shape_errors(kind):
    forward = OPS[kind][0]
    x = np.zeros((1, 1, 6, 6))
    with pytest.raises(ShapeError, match="more than half the kernel size"):
        forward(x, 3, 1, 2)
    with pytest.raises(ShapeError, match="does not fit a 6x6 input"):
        forward(x, 7)
    with pytest.raises(ShapeError, match="\\(N, C, H, W\\)"):
        forward(np.zeros((6, 6)), 2)
    with pytest.raises(ShapeError, match="kernel_size must be"):
        forward(x, 0)
    y, cache = forward(x, 2)
    with pytest.raises(ShapeError, match="expected \\(1, 1, 3, 3\\)"):
        OPS[kind][1](np.zeros((1, 1, 2, 2)), cache)


def test_padding_half_kernel_is_allowed_like_torch():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y, _ = max_pool2d_forward(x, 2, 2, 1)
    np.testing.assert_array_equal(y, torch.nn.functional.max_pool2d(torch.tensor(x), 2, 2, 1).numpy())
