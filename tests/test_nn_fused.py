"""Sequential's fused paths equal the layers run one by one: ReLU -> MaxPool2d bit for bit,
a first Conv2d -> ReLU -> MaxPool2d (cnnlab/backend/fused.py) up to float rounding, at every
kernel level this CPU runs (the ``kernel_level`` fixture)."""

import numpy as np
import pytest

from cnnlab import backend
from cnnlab.backend import dispatch
from cnnlab.backend.fused import conv2d_relu_maxpool2d_backward, conv2d_relu_maxpool2d_forward
from cnnlab.nn import fusion
from cnnlab.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from cnnlab.nn.module import Sequential

pytestmark = pytest.mark.usefixtures("kernel_level")
BLOCK = "conv2d+relu+max_pool2d"


def _lecture_cnn(rng, dtype):
    # conv2 has 8 input channels: enough for the Winograd path of the fused op
    return Sequential(Conv2d(1, 8, 3, padding=1, rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
                      Conv2d(8, 12, 3, padding=1, rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(12 * 7 * 7, 10, rng=rng, dtype=dtype))


def _layer_by_layer(model, x, dy):
    out = x
    for layer in model:
        out = layer(out)
    grad = dy
    for layer in reversed(list(model)):
        grad = layer.backward(grad)
        if grad is None:
            break
    return out, grad


def _fused_and_plain(dtype, input_grad):
    rng = np.random.default_rng(0)
    model = _lecture_cnn(rng, dtype)
    model.requires_input_grad = input_grad
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    x[0, 0, :4, :4] = -1.0  # whole windows <= 0: their gradient must be exactly 0
    dy = rng.standard_normal((5, 10)).astype(dtype)
    fused_y = model(x)
    fused_dx = model.backward(dy)
    plan = fusion.describe(model.plan)
    paths = [model.plan[0].cache.path, model.plan[1].cache.path]
    fused_grads = [parameter.grad.copy() for parameter in model.parameters()]
    model.zero_grad()
    plain_y, plain_dx = _layer_by_layer(model, x, dy)
    plain_grads = [parameter.grad for parameter in model.parameters()]
    return plan, paths, (fused_y, fused_dx, fused_grads), (plain_y, plain_dx, plain_grads)


@pytest.mark.parametrize("input_grad", [False, True])
def test_float64_blocks_run_the_layers_bit_for_bit(input_grad):
    """Without a compiled path (float64) the fused op is the three layers, to the bit."""
    plan, paths, (fused_y, fused_dx, fused_grads), (plain_y, plain_dx, plain_grads) = _fused_and_plain(
        np.float64, input_grad)
    assert plan == [BLOCK, BLOCK, "flatten", "linear"] and paths == ["layers", "layers"]
    assert np.array_equal(fused_y, plain_y)
    for fused, plain in zip(fused_grads, plain_grads):
        assert np.array_equal(fused, plain)
    if input_grad:
        assert np.array_equal(fused_dx, plain_dx)
    else:
        assert fused_dx is None and plain_dx is None


@pytest.mark.parametrize("input_grad", [False, True])
def test_float32_fused_blocks_match_unfused_layers(input_grad):
    """The direct path (first block, no dX) and the Winograd path (second block) equal the
    layers up to float rounding, gradients and dX too."""
    plan, paths, (fused_y, fused_dx, fused_grads), (plain_y, plain_dx, plain_grads) = _fused_and_plain(
        np.float32, input_grad)
    assert plan == [BLOCK, BLOCK, "flatten", "linear"]
    assert paths == _expected_paths(["layers" if input_grad else "direct", "winograd"])
    np.testing.assert_allclose(fused_y, plain_y, rtol=1e-4, atol=1e-5)
    for fused, plain in zip(fused_grads, plain_grads):
        assert fused.dtype == np.float32
        np.testing.assert_allclose(fused, plain, rtol=1e-3, atol=1e-4)
    if input_grad:
        np.testing.assert_allclose(fused_dx, plain_dx, rtol=1e-3, atol=1e-5)
    else:
        assert fused_dx is None and plain_dx is None


def _expected_paths(compiled: list[str]) -> list[str]:
    """The paths taken: the compiled ones where the backend says they run at this level
    (``dispatch``), else the layers one after the other."""
    runs = {"direct": dispatch.fused_loops() is not None,
            "winograd": dispatch.winograd_loops() is not None, "layers": True}
    return [path if runs[path] else "layers" for path in compiled]


def _relative_error(got, expected):
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.mark.parametrize("path, in_channels, kernel, padding, size, input_grad", [
    ("direct", 1, 3, 1, (28, 28), False),     # the lecture CNN's first block
    ("direct", 3, 3, 1, (12, 10), False),     # RGB-like input
    ("direct", 1, 5, 2, (9, 11), False),      # odd conv output: the last row and column are in no window
    ("direct", 1, 3, 0, (7, 40), False),      # no padding; rows of more than 16 windows
    ("direct", 2, (2, 3), (0, 1), (8, 8), False),
    ("winograd", 32, 3, 1, (14, 14), True),   # the lecture CNN's second block
    ("winograd", 8, 3, 1, (9, 11), True),     # odd conv output
    ("winograd", 9, 3, 0, (8, 38), False),    # no padding, 18 windows per row, no dX
    ("layers", 1, 3, 1, (8, 8), True),        # a first-layer conv asked for dX
])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_conv_relu_pool_op_matches_torch(path, in_channels, kernel, padding, size, input_grad,
                                               bias, rng):
    """y, dX, dW and db of the fused op against PyTorch's conv2d -> relu -> max_pool2d."""
    import torch

    kernel_hw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal((3, in_channels) + size).astype(np.float32)
    weight = (rng.standard_normal((5, in_channels) + kernel_hw) * 0.5).astype(np.float32)
    bias_values = rng.standard_normal(5).astype(np.float32) * 0.1 if bias else None
    y, cache = conv2d_relu_maxpool2d_forward(x, weight, bias_values, padding=padding,
                                             input_grad=input_grad)
    assert [cache.path] == _expected_paths([path])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dweight, dbias = conv2d_relu_maxpool2d_backward(dy, cache)

    x_t = torch.tensor(x, requires_grad=True)
    weight_t = torch.tensor(weight, requires_grad=True)
    bias_t = torch.tensor(bias_values, requires_grad=True) if bias else None
    y_t = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(
        x_t, weight_t, bias_t, padding=padding)), 2)
    y_t.backward(torch.tensor(dy))
    assert y.shape == tuple(y_t.shape) and y.dtype == np.float32
    assert _relative_error(y, y_t.detach().numpy()) <= 1e-5
    assert _relative_error(dweight, weight_t.grad.numpy()) <= 1e-4
    if input_grad:
        assert dx.shape == x.shape and _relative_error(dx, x_t.grad.numpy()) <= 1e-4
    else:
        assert dx is None
    if bias:
        assert _relative_error(dbias, bias_t.grad.numpy()) <= 1e-4
    else:
        assert dbias is None


def test_fused_conv_relu_pool_op_falls_back_to_the_three_ops(rng, monkeypatch):
    """Without the C loops (or in float64) the op composes conv2d, max_pool2d and relu."""
    x = rng.standard_normal((2, 1, 6, 6))
    weight = rng.standard_normal((3, 1, 3, 3))
    y64, cache64 = conv2d_relu_maxpool2d_forward(x, weight, None, padding=1)
    assert cache64.path == "layers" and y64.dtype == np.float64
    with backend.use("numpy"):
        y32, cache32 = conv2d_relu_maxpool2d_forward(x.astype(np.float32), weight.astype(np.float32),
                                                     None, padding=1)
    assert cache32.path == "layers"
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)
    dx, dweight, dbias = conv2d_relu_maxpool2d_backward(np.ones_like(y32), cache32)
    assert dx is None and dweight.shape == weight.shape and dbias is None


def test_relu_pool_with_overlapping_windows_is_not_fused():
    model = Sequential(ReLU(), MaxPool2d(3, stride=2))
    model.requires_input_grad = True
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9))
    y = model(x)
    assert fusion.describe(model.plan) == ["relu", "max_pool2d"]
    assert y.shape == (2, 3, 4, 4)


def test_switching_on_the_input_gradient_after_a_fused_forward_is_a_clear_error(rng):
    model = _lecture_cnn(rng, np.float32)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    logits = model(x)
    model.requires_input_grad = True
    with pytest.raises(RuntimeError, match="run the forward again"):
        model.backward(np.ones_like(logits))
    model(x)  # the forward after setting it keeps the unfused caches
    assert model.backward(np.ones_like(logits)).shape == x.shape
