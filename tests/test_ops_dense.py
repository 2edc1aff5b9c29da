"""Dense ops (linear, activations, softmax, losses, dropout, flatten, batch norm) vs PyTorch
autograd and float64 central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError, ConfigError, ShapeError
from cnnlab.ops.activation import (
    leaky_relu_backward, leaky_relu_forward, log_softmax, relu_backward, relu_forward,
    sigmoid_backward, sigmoid_forward, softmax, tanh_backward, tanh_forward,
)
from cnnlab.ops.batchnorm import batch_norm_backward, batch_norm_forward
from cnnlab.ops.dropout import dropout_backward, dropout_forward
from cnnlab.ops.linear import linear_backward, linear_forward
from cnnlab.ops.loss import cross_entropy, mse_loss
from cnnlab.ops.shape import flatten_backward, flatten_forward

DTYPES = [np.float64, np.float32]
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}


def relative_error(actual, expected, scale=0.0) -> float:
    """max |actual - expected| relative to the scale of ``expected`` (or ``scale`` if larger)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max(initial=0.0)), scale, 1e-12)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def torch_leaf(array):
    return torch.tensor(np.asarray(array), requires_grad=True)


def numeric_gradient(function, array, dy, step=1e-6):
    """Central differences of sum(function(array) * dy) with respect to array (float64)."""
    gradient = np.zeros_like(array)
    flat, flat_gradient = array.reshape(-1), gradient.reshape(-1)
    for index in range(flat.size):
        saved = flat[index]
        flat[index] = saved + step
        plus = float(np.sum(function(array) * dy))
        flat[index] = saved - step
        minus = float(np.sum(function(array) * dy))
        flat[index] = saved
        flat_gradient[index] = (plus - minus) / (2 * step)
    return gradient


# ---------------------------------------------------------------- linear

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,in_features,out_features", [(1, 3, 2), (4, 5, 3), (7, 1, 6)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(dtype, batch, in_features, out_features, with_bias, rng):
    x = rng.standard_normal((batch, in_features)).astype(dtype)
    weight = rng.standard_normal((out_features, in_features)).astype(dtype)
    bias = rng.standard_normal(out_features).astype(dtype) if with_bias else None
    dy = rng.standard_normal((batch, out_features)).astype(dtype)
    y, cache = linear_forward(x, weight, bias)
    dx, dweight, dbias = linear_backward(dy, cache)
    assert y.dtype == dx.dtype == dweight.dtype == dtype

    tx, tw = torch_leaf(x), torch_leaf(weight)
    tb = torch_leaf(bias) if with_bias else None
    ty = F.linear(tx, tw, tb)
    ty.backward(torch.tensor(dy))
    tolerance = TOLERANCE[dtype]
    assert relative_error(y, ty.detach().numpy()) <= tolerance
    assert relative_error(dx, tx.grad.numpy()) <= tolerance
    assert relative_error(dweight, tw.grad.numpy()) <= tolerance
    if with_bias:
        assert dbias.dtype == dtype
        assert relative_error(dbias, tb.grad.numpy()) <= tolerance
    else:
        assert dbias is None


def test_linear_gradients_match_finite_differences(rng):
    x, weight, bias = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)
    dy = rng.standard_normal((3, 2))
    dx, dweight, dbias = linear_backward(dy, linear_forward(x, weight, bias)[1])
    assert relative_error(dx, numeric_gradient(lambda a: linear_forward(a, weight, bias)[0], x, dy)) < 1e-7
    assert relative_error(dweight, numeric_gradient(lambda w: linear_forward(x, w, bias)[0], weight, dy)) < 1e-7
    assert relative_error(dbias, numeric_gradient(lambda b: linear_forward(x, weight, b)[0], bias, dy)) < 1e-7


def test_linear_rejects_mismatched_weight():
    with pytest.raises(ShapeError, match="does not fit"):
        linear_forward(np.zeros((2, 3)), np.zeros((4, 5)))


# ---------------------------------------------------------------- activations

ACTIVATIONS = {
    "relu": (relu_forward, relu_backward, F.relu),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward, F.leaky_relu),
    "leaky_relu_0.2": (lambda x: leaky_relu_forward(x, 0.2), leaky_relu_backward,
                       lambda t: F.leaky_relu(t, 0.2)),
    "sigmoid": (sigmoid_forward, sigmoid_backward, torch.sigmoid),
    "tanh": (tanh_forward, tanh_backward, torch.tanh),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5), (4, 7), (2, 3, 4, 5)])
def test_activation_matches_torch(name, dtype, shape, rng):
    forward, backward, torch_function = ACTIVATIONS[name]
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    x.reshape(-1)[:2] = 0  # the kink: PyTorch's gradient at exactly 0
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = forward(x)
    dx = backward(dy, cache)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape

    tx = torch_leaf(x)
    ty = torch_function(tx)
    ty.backward(torch.tensor(dy))
    assert relative_error(y, ty.detach().numpy()) <= TOLERANCE[dtype]
    assert relative_error(dx, tx.grad.numpy()) <= TOLERANCE[dtype]


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradient_matches_finite_differences(name, rng):
    forward, backward, _ = ACTIVATIONS[name]
    x = rng.standard_normal((3, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep finite differences away from the ReLU kink
    dy = rng.standard_normal((3, 4))
    dx = backward(dy, forward(x)[1])
    assert relative_error(dx, numeric_gradient(lambda a: forward(a)[0], x, dy)) < 1e-7


def test_relu_gradient_at_zero_is_zero():
    dx = relu_backward(np.ones(3), relu_forward(np.array([-1.0, 0.0, 1.0]))[1])
    np.testing.assert_array_equal(dx, [0.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_stable_for_large_inputs(dtype):
    x = np.array([[-1e4, -800.0, 0.0, 800.0, 1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        y, cache = sigmoid_forward(x)
        dx = sigmoid_backward(np.ones_like(x), cache)
    np.testing.assert_allclose(y, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-30)
    assert np.all(np.isfinite(dx))


# ---------------------------------------------------------------- softmax family

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((1, 10), 1), ((5, 3), 1), ((4, 6), 0), ((2, 3, 4), -1)])
def test_softmax_and_log_softmax_match_torch(dtype, shape, axis, rng):
    x = (5 * rng.standard_normal(shape)).astype(dtype)
    p, log_p = softmax(x, axis=axis), log_softmax(x, axis=axis)
    assert p.dtype == log_p.dtype == dtype
    tx = torch.tensor(x)
    assert relative_error(p, torch.softmax(tx, dim=axis).numpy()) <= TOLERANCE[dtype]
    assert relative_error(log_p, torch.log_softmax(tx, dim=axis).numpy()) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_sum_to_one_for_huge_inputs(dtype):
    x = np.array([[1e4, -1e4, 0.0], [1e30, 1e30, -1e30], [-1e4, -1e4 + 1, -1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        p, log_p = softmax(x), log_softmax(x)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(log_p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-7)


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(1, 10), (8, 10), (5, 2)])
def test_cross_entropy_matches_torch(dtype, batch, classes, rng):
    logits = (3 * rng.standard_normal((batch, classes))).astype(dtype)
    labels = rng.integers(0, classes, batch)
    loss, dlogits = cross_entropy(logits, labels)
    assert isinstance(loss, float) and dlogits.dtype == dtype
    t_logits = torch_leaf(logits)
    t_loss = F.cross_entropy(t_logits, torch.tensor(labels))
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= TOLERANCE[dtype] * max(1.0, abs(t_loss.item()))
    assert relative_error(dlogits, t_logits.grad.numpy()) <= TOLERANCE[dtype]
    onehot = np.eye(classes)[labels]
    expected = (softmax(logits.astype(np.float64)) - onehot) / batch
    assert relative_error(dlogits, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_is_finite_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]], dtype=dtype)
    labels = np.array([1, 1])
    loss, dlogits = cross_entropy(logits, labels)
    expected = F.cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels))
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert loss == pytest.approx(1e4)  # -log p = 2e4 for the first row, 0 for the second


def test_cross_entropy_gradient_matches_finite_differences(rng):
    logits, labels = rng.standard_normal((4, 5)), np.array([0, 4, 2, 2])
    _, dlogits = cross_entropy(logits, labels)
    numeric = numeric_gradient(lambda a: np.array(cross_entropy(a, labels)[0]), logits, np.array(1.0))
    assert relative_error(dlogits, numeric) < 1e-7


@pytest.mark.parametrize("labels,error,message", [
    (np.array([0, 1, 2]), ShapeError, "expected \\(2,\\)"),
    (np.array([0.0, 1.0]), CnnlabError, "integer class indices"),
    (np.array([0, 3]), CnnlabError, "must lie in \\[0, 2\\]"),
    (np.array([-1, 0]), CnnlabError, "must lie in"),
])
def test_cross_entropy_rejects_bad_labels(labels, error, message):
    with pytest.raises(error, match=message):
        cross_entropy(np.zeros((2, 3)), labels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (2, 3, 4, 4)])
def test_mse_loss_matches_torch(dtype, shape, rng):
    prediction = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss, dprediction = mse_loss(prediction, target)
    assert isinstance(loss, float) and dprediction.dtype == dtype
    t_prediction = torch_leaf(prediction)
    t_loss = F.mse_loss(t_prediction, torch.tensor(target))
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= TOLERANCE[dtype] * max(1.0, t_loss.item())
    assert relative_error(dprediction, t_prediction.grad.numpy()) <= TOLERANCE[dtype]
    numeric = numeric_gradient(lambda a: np.array(mse_loss(a, target.astype(np.float64))[0]),
                               prediction.astype(np.float64), np.array(1.0))
    assert relative_error(dprediction, numeric) < (1e-6 if dtype == np.float64 else 1e-4)


def test_mse_loss_rejects_mismatched_shapes():
    with pytest.raises(ShapeError, match="same shape"):
        mse_loss(np.zeros((2, 3)), np.zeros((3, 2)))


# ---------------------------------------------------------------- dropout

@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_same_seed_same_mask_and_inverted_scaling(dtype):
    x = np.ones((50, 40), dtype=dtype)
    y1, cache = dropout_forward(x, 0.25, True, np.random.default_rng(7))
    y2, _ = dropout_forward(x, 0.25, True, np.random.default_rng(7))
    y3, _ = dropout_forward(x, 0.25, True, np.random.default_rng(8))
    assert y1.dtype == dtype
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)
    np.testing.assert_allclose(np.unique(y1), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs((y1 == 0).mean() - 0.25) < 0.04
    dx = dropout_backward(np.full_like(x, 2.0), cache)
    np.testing.assert_array_equal(dx == 0, y1 == 0)  # gradient flows only where kept
    np.testing.assert_allclose(dx[y1 != 0], 2.0 / 0.75, rtol=1e-6)


def test_dropout_eval_and_p_zero_are_identity(rng):
    x = rng.standard_normal((3, 4))
    for p, training in [(0.5, False), (0.0, True)]:
        y, cache = dropout_forward(x, p, training, rng)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(dropout_backward(x, cache), x)


def test_dropout_p_one_gives_zeros_like_torch(rng):
    x = rng.standard_normal((3, 4))
    y, cache = dropout_forward(x, 1.0, True, rng)
    np.testing.assert_array_equal(y, F.dropout(torch.tensor(x), 1.0, True).numpy())
    np.testing.assert_array_equal(dropout_backward(np.ones_like(x), cache), np.zeros_like(x))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_bad_probability(p, rng):
    with pytest.raises(ConfigError, match="dropout probability"):
        dropout_forward(np.ones(3), p, True, rng)


# ---------------------------------------------------------------- flatten

@pytest.mark.parametrize("shape,start_dim,expected", [
    ((1, 3, 4, 5), 1, (1, 60)), ((2, 3, 4, 5), 2, (2, 3, 20)), ((2, 3), 1, (2, 3)),
    ((2, 3, 4), 0, (24,)),
])
def test_flatten_matches_torch(shape, start_dim, expected, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y, cache = flatten_forward(x, start_dim)
    assert y.shape == expected and y.dtype == np.float32
    np.testing.assert_array_equal(y, torch.flatten(torch.tensor(x), start_dim).numpy())
    dx = flatten_backward(y * 2, cache)
    np.testing.assert_array_equal(dx, x * 2)


# ---------------------------------------------------------------- batch norm

def make_torch_batch_norm(num_channels, ndim, affine, dtype, weight, bias):
    layer_class = torch.nn.BatchNorm1d if ndim == 2 else torch.nn.BatchNorm2d
    layer = layer_class(num_channels, affine=affine).to(torch.float64 if dtype == np.float64
                                                        else torch.float32)
    if affine:
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(weight))
            layer.bias.copy_(torch.tensor(bias))
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3), (16, 5), (1, 3, 4, 5), (4, 2, 3, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_then_eval_matches_torch(dtype, shape, affine, rng):
    channels = shape[1]
    weight = (1 + rng.standard_normal(channels)).astype(dtype) if affine else None
    bias = rng.standard_normal(channels).astype(dtype) if affine else None
    running_mean, running_var = np.zeros(channels, dtype), np.ones(channels, dtype)
    layer = make_torch_batch_norm(channels, len(shape), affine, dtype, weight, bias)
    tolerance = TOLERANCE[dtype]
    for step in range(4):
        training = step < 3
        layer.train(training)
        x = (2 * rng.standard_normal(shape) + step).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y, cache = batch_norm_forward(x, weight, bias, running_mean, running_var, training)
        dx, dweight, dbias = batch_norm_backward(dy, cache)
        assert y.dtype == dx.dtype == running_mean.dtype == dtype

        tx = torch_leaf(x)
        if affine:
            layer.weight.grad = layer.bias.grad = None
        ty = layer(tx)
        ty.backward(torch.tensor(dy))
        assert relative_error(y, ty.detach().numpy()) <= tolerance
        # With N = 2 the true dx nearly cancels to 0, so float32 rounding is measured
        # against the size of the terms that cancel: dy * gamma / std.
        gamma = np.abs(weight).max() if affine else 1.0
        term_scale = float(np.abs(dy).max() * gamma / x.std(axis=(0, 2, 3) if x.ndim == 4 else 0).min())
        assert relative_error(dx, tx.grad.numpy(), scale=term_scale) <= tolerance
        assert relative_error(running_mean, layer.running_mean.numpy()) <= tolerance
        assert relative_error(running_var, layer.running_var.numpy()) <= tolerance
        if affine:
            assert relative_error(dweight, layer.weight.grad.numpy()) <= tolerance
            assert relative_error(dbias, layer.bias.grad.numpy()) <= tolerance
        else:
            assert dweight is None and dbias is None


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_match_finite_differences(training, rng):
    x, dy = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 2, 2, 2))
    weight, bias = rng.standard_normal(2), rng.standard_normal(2)
    stats = rng.standard_normal(2), 1 + rng.random(2)

    def forward(array, w=weight, b=bias):
        return batch_norm_forward(array, w, b, stats[0].copy(), stats[1].copy(), training)[0]

    dx, dweight, dbias = batch_norm_backward(
        dy, batch_norm_forward(x, weight, bias, stats[0].copy(), stats[1].copy(), training)[1])
    assert relative_error(dx, numeric_gradient(forward, x, dy)) < 1e-6
    assert relative_error(dweight, numeric_gradient(lambda w: forward(x, w=w), weight, dy)) < 1e-6
    assert relative_error(dbias, numeric_gradient(lambda b: forward(x, b=b), bias, dy)) < 1e-6


def test_batch_norm_rejects_single_value_per_channel_in_training():
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        batch_norm_forward(np.ones((1, 3)), None, None, np.zeros(3), np.ones(3), True)
