"""The rules every op shares (cnnlab/validation.py): float32/float64 only, one dtype, the same
one-line messages, Parameters accepted, empty batches give empty results as in PyTorch, and
inputs referenced (not copied) until the backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops
from cnnlab.errors import ShapeError
from cnnlab.nn.module import Parameter

RNG = np.random.default_rng(0)
IMAGE = (2, 3, 6, 6)

# op name -> a call of its forward on an input x (of IMAGE's shape, or flattened)
FORWARDS = {
    "conv2d": lambda x: ops.conv2d_forward(x, np.ones((4, 3, 3, 3), x.dtype)),
    "max_pool2d": lambda x: ops.max_pool2d_forward(x, 2),
    "avg_pool2d": lambda x: ops.avg_pool2d_forward(x, 2),
    "linear": lambda x: ops.linear_forward(x.reshape(len(x), 108), np.ones((5, 108), x.dtype)),
    "relu": ops.relu_forward,
    "leaky_relu": ops.leaky_relu_forward,
    "sigmoid": ops.sigmoid_forward,
    "tanh": ops.tanh_forward,
    "softmax": ops.softmax,
    "log_softmax": ops.log_softmax,
    "dropout": lambda x: ops.dropout_forward(x, 0.5, True, np.random.default_rng(0)),
    "batch_norm": lambda x: ops.batch_norm_forward(x, None, None, None, None, True),
    "flatten": ops.flatten_forward,
    "cross_entropy": lambda x: ops.cross_entropy(x.reshape(len(x), 108), np.zeros(len(x), int)),
    "mse_loss": lambda x: ops.mse_loss(x, np.zeros(x.shape)),
}


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.float16])
@pytest.mark.parametrize("name", list(FORWARDS))
def test_every_op_refuses_what_is_not_float32_or_float64_in_one_line(name, dtype):
    x = np.ones(IMAGE, dtype=dtype)
    with pytest.raises(ShapeError) as caught:
        FORWARDS[name](x)
    message = str(caught.value)
    assert f"expects float32 or float64" in message and f"got {np.dtype(dtype)}" in message
    assert "convert it first, e.g. x.astype(np.float32)" in message and "\n" not in message


@pytest.mark.parametrize("name", [name for name in FORWARDS if name not in ("cross_entropy", "mse_loss", "batch_norm")])
def test_an_empty_batch_gives_an_empty_result(name):
    x = np.ones((0,) + IMAGE[1:], np.float32)
    result = FORWARDS[name](x)
    y = result[0] if isinstance(result, tuple) else result
    assert y.shape[0] == 0 and y.dtype == np.float32


def test_conv_of_an_empty_batch_matches_pytorch_both_ways_and_no_channels_is_refused():
    x = RNG.standard_normal((0, 3, 8, 8))
    weight, bias = RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal(4)
    y, cache = ops.conv2d_forward(x, weight, bias, padding=1)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                        padding=1)
    assert y.shape == tuple(expected.shape) == (0, 4, 8, 8)
    dx, dweight, dbias = ops.conv2d_backward(np.ones_like(y), cache)
    assert dx.shape == x.shape and dweight.shape == weight.shape and not dweight.any()
    np.testing.assert_array_equal(dbias, np.zeros(4))
    with pytest.raises(RuntimeError):  # PyTorch refuses a weight with no output channels
        F.conv2d(torch.ones(2, 3, 8, 8), torch.ones(0, 3, 3, 3))
    with pytest.raises(ShapeError, match=r"weight \(0, 3, 3, 3\) has no channels"):
        ops.conv2d_forward(np.ones((2, 3, 8, 8)), np.ones((0, 3, 3, 3)))


def test_a_0x0_kernel_is_refused_as_pytorch_does():
    with pytest.raises(RuntimeError):
        F.conv2d(torch.ones(1, 1, 5, 5), torch.ones(1, 1, 0, 0))
    with pytest.raises(ShapeError, match="kernel must be at least 1x1, got 0x0"):
        ops.conv2d_forward(np.ones((1, 1, 5, 5)), np.ones((1, 1, 0, 0)), np.ones(1))


def test_mixed_dtypes_get_the_same_message_from_every_op_with_weights():
    x64 = np.ones((2, 3, 6, 6))
    for call, op in ((lambda: ops.conv2d_forward(x64, np.ones((4, 3, 3, 3), np.float32)), "conv2d"),
                     (lambda: ops.linear_forward(np.ones((2, 3)), np.ones((4, 3), np.float32)), "linear"),
                     (lambda: ops.batch_norm_forward(x64, np.ones(3, np.float32), None, None, None,
                                                     True), "batch_norm")):
        with pytest.raises(ShapeError, match=f"^{op} input is float64 but weight is float32; "
                                             r"use one dtype for both"):
            call()


def test_parameters_are_taken_for_their_data():
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    weight = Parameter(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))
    bias = Parameter(RNG.standard_normal(4).astype(np.float32))
    y, _ = ops.conv2d_forward(x, weight, bias)
    np.testing.assert_array_equal(y, ops.conv2d_forward(x, weight.data, bias.data)[0])
    dense = Parameter(np.ones((5, 3), np.float32))
    y, _ = ops.linear_forward(x[:, 0, 0, :3].copy(), dense)
    assert y.shape == (2, 5)


def test_int_logits_are_refused_in_one_line_not_a_ufunc_error():
    with pytest.raises(ShapeError, match="cross_entropy expects float32 or float64 logits, got int64"):
        ops.cross_entropy(np.ones((2, 3), int), np.array([0, 1]))


def test_no_op_writes_into_its_inputs_so_the_reference_rule_holds_inside_cnnlab():
    """Ops keep references to their inputs for the backward (documented in cnnlab/validation.py
    and each forward): a read-only input through a whole training step shows that no cnnlab op
    or layer changes an input before its backward."""
    from cnnlab.models import build_model

    for spec in ("cnn", "cnn-bn", "mlp"):
        model = build_model(spec, np.random.default_rng(0))
        x = RNG.standard_normal((8, 1, 28, 28)).astype(np.float32)
        x.flags.writeable = False
        logits = model(x)
        _, dlogits = ops.cross_entropy(logits, np.arange(8) % 10)
        model.backward(dlogits)
    import cnnlab.validation as checks

    assert "must not change between a forward and its backward" in checks.__doc__
    for forward in (ops.conv2d_forward, ops.linear_forward):
        assert "must not change before the backward" in " ".join(forward.__doc__.split())
