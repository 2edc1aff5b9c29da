"""Sequential's fused ReLU -> MaxPool2d fast path equals the layers run one by one, bit for bit."""

import numpy as np
import pytest

from cnnlab.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from cnnlab.nn.module import Sequential


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("input_grad", [False, True])
def test_fused_relu_pool_matches_unfused_layers_exactly(dtype, input_grad):
    rng = np.random.default_rng(0)
    model = _lecture_cnn(rng, dtype)
    model.requires_input_grad = input_grad
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    x[0, 0, :4, :4] = -1.0  # whole windows <= 0: their gradient must be exactly 0
    dy = rng.standard_normal((5, 10)).astype(dtype)
    fused_y = model(x)
    fused_dx = model.backward(dy)
    assert model._fused_relus == {1, 4}
    fused_grads = [parameter.grad.copy() for parameter in model.parameters()]
    model.zero_grad()
    plain_y, plain_dx = _layer_by_layer(model, x, dy)
    assert np.array_equal(fused_y, plain_y)
    for fused, parameter in zip(fused_grads, model.parameters()):
        assert np.array_equal(fused, parameter.grad)
    if input_grad:
        assert np.array_equal(fused_dx, plain_dx)
    else:
        assert fused_dx is None and plain_dx is None


def test_relu_pool_with_overlapping_windows_is_not_fused():
    model = Sequential(ReLU(), MaxPool2d(3, stride=2))
    model.requires_input_grad = True
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9))
    y = model(x)
    assert model._fused_relus == set()
    assert y.shape == (2, 3, 4, 4)
