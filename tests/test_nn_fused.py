"""Sequential's fused paths equal the layers run one by one: ReLU -> MaxPool2d bit for bit,
a first Conv2d -> ReLU -> MaxPool2d (cnnlab/ops/fused.py) up to float rounding."""

import numpy as np
import pytest

from cnnlab.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from cnnlab.nn.module import Sequential
from cnnlab.ops import _kernels
from cnnlab.ops.fused import conv2d_relu_maxpool2d_backward, conv2d_relu_maxpool2d_forward


def _lecture_cnn(rng, dtype):
    return Sequential(Conv2d(1, 4, 3, padding=1, rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
                      Conv2d(4, 6, 3, padding=1, rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(6 * 7 * 7, 10, rng=rng, dtype=dtype))


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


def _fused_and_plain(dtype, input_grad, monkeypatch=None):
    rng = np.random.default_rng(0)
    model = _lecture_cnn(rng, dtype)
    model.requires_input_grad = input_grad
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    x[0, 0, :4, :4] = -1.0  # whole windows <= 0: their gradient must be exactly 0
    dy = rng.standard_normal((5, 10)).astype(dtype)
    fused_y = model(x)
    fused_dx = model.backward(dy)
    plan = dict(model._fused)
    fused_grads = [parameter.grad.copy() for parameter in model.parameters()]
    model.zero_grad()
    plain_y, plain_dx = _layer_by_layer(model, x, dy)
    plain_grads = [parameter.grad for parameter in model.parameters()]
    return plan, (fused_y, fused_dx, fused_grads), (plain_y, plain_dx, plain_grads)


@pytest.mark.parametrize("dtype, input_grad", [(np.float32, True), (np.float64, True), (np.float64, False)])
def test_fused_relu_pool_matches_unfused_layers_exactly(dtype, input_grad):
    """Where the first conv is not fused (it needs dX, or float64 has no C path), bit for bit."""
    plan, (fused_y, fused_dx, fused_grads), (plain_y, plain_dx, plain_grads) = _fused_and_plain(
        dtype, input_grad)
    assert plan == ({1: 2, 4: 2} if input_grad else {0: 3, 4: 2})
    assert np.array_equal(fused_y, plain_y)
    for fused, plain in zip(fused_grads, plain_grads):
        assert np.array_equal(fused, plain)
    if input_grad:
        assert np.array_equal(fused_dx, plain_dx)
    else:
        assert fused_dx is None and plain_dx is None


def test_first_conv_relu_pool_fused_matches_unfused_layers():
    """float32 first block through the C loops: equal up to float rounding, gradients too."""
    assert _kernels.enabled(), "cnnlab._loops is not built: pip install -e '.[test]' builds it"
    plan, (fused_y, fused_dx, fused_grads), (plain_y, plain_dx, plain_grads) = _fused_and_plain(
        np.float32, False)
    assert plan == {0: 3, 4: 2}
    assert fused_dx is None and plain_dx is None
    np.testing.assert_allclose(fused_y, plain_y, rtol=1e-5, atol=1e-6)
    for fused, plain in zip(fused_grads, plain_grads):
        assert fused.dtype == np.float32
        np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-5)


def _relative_error(got, expected):
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.mark.parametrize("in_channels, kernel, padding, size", [
    (1, 3, 1, (28, 28)),   # the lecture CNN's first block
    (3, 3, 1, (12, 10)),   # RGB-like input
    (1, 5, 2, (9, 11)),    # odd conv output: the last row and column belong to no window
    (1, 3, 0, (7, 40)),    # no padding; rows of more than 16 windows
    (2, (2, 3), (0, 1), (8, 8)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_conv_relu_pool_op_matches_torch(in_channels, kernel, padding, size, bias, rng):
    """y, dW and db of the fused op against PyTorch's conv2d -> relu -> max_pool2d."""
    import torch

    kernel_hw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal((3, in_channels) + size).astype(np.float32)
    weight = (rng.standard_normal((5, in_channels) + kernel_hw) * 0.5).astype(np.float32)
    bias_values = rng.standard_normal(5).astype(np.float32) * 0.1 if bias else None
    y, cache = conv2d_relu_maxpool2d_forward(x, weight, bias_values, padding=padding)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dweight, dbias = conv2d_relu_maxpool2d_backward(dy, cache)

    weight_t = torch.tensor(weight, requires_grad=True)
    bias_t = torch.tensor(bias_values, requires_grad=True) if bias else None
    y_t = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(
        torch.tensor(x), weight_t, bias_t, padding=padding)), 2)
    y_t.backward(torch.tensor(dy))
    assert y.shape == tuple(y_t.shape) and y.dtype == np.float32
    assert _relative_error(y, y_t.detach().numpy()) <= 1e-5
    assert _relative_error(dweight, weight_t.grad.numpy()) <= 1e-4
    if bias:
        assert _relative_error(dbias, bias_t.grad.numpy()) <= 1e-4
    else:
        assert dbias is None
    if _kernels.enabled():
        assert cache.code is not None, "the C loops should have run this block"


def test_fused_conv_relu_pool_op_falls_back_to_the_three_ops(rng, monkeypatch):
    """Without the C loops (or in float64) the op composes conv2d, max_pool2d and relu."""
    x = rng.standard_normal((2, 1, 6, 6))
    weight = rng.standard_normal((3, 1, 3, 3))
    y64, cache64 = conv2d_relu_maxpool2d_forward(x, weight, None, padding=1)
    assert cache64.unfused is not None and y64.dtype == np.float64
    monkeypatch.setenv("CNNLAB_KERNELS", "numpy")
    y32, cache32 = conv2d_relu_maxpool2d_forward(x.astype(np.float32), weight.astype(np.float32),
                                                 None, padding=1)
    assert cache32.unfused is not None
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)
    dweight, dbias = conv2d_relu_maxpool2d_backward(np.ones_like(y32), cache32)
    assert dweight.shape == weight.shape and dbias is None


def test_relu_pool_with_overlapping_windows_is_not_fused():
    model = Sequential(ReLU(), MaxPool2d(3, stride=2))
    model.requires_input_grad = True
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9))
    y = model(x)
    assert model._fused == {}
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
