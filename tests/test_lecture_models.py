"""The lecture CNN and MLP in cnnlab and in PyTorch, same weights: same logits, loss, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import nn
from cnnlab.ops.loss import cross_entropy

TIGHT = dict(rtol=1e-10, atol=1e-12)


def lecture_cnn(module, **kw):
    """Lecture 004: Conv(1->32, k3, p1) -> ReLU -> MaxPool 2 -> Conv(32->64, k3, p1) -> ReLU
    -> MaxPool 2 -> Flatten -> Linear(3136 -> 10)."""
    return module.Sequential(
        module.Conv2d(1, 32, 3, padding=1, **kw), module.ReLU(), module.MaxPool2d(2),
        module.Conv2d(32, 64, 3, padding=1, **kw), module.ReLU(), module.MaxPool2d(2),
        module.Flatten(), module.Linear(3136, 10, **kw),
    )


def lecture_mlp(module, **kw):
    """Lecture 003: 784 -> 500 -> 10, without the lecture's ReLU on the logits."""
    return module.Sequential(module.Flatten(), module.Linear(784, 500, **kw), module.ReLU(),
                             module.Linear(500, 10, **kw))


BUILDERS = {"cnn": lecture_cnn, "mlp": lecture_mlp}


def twin_models(name: str):
    """The same network in cnnlab (our init) and in torch (weights copied from ours)."""
    ours = BUILDERS[name](nn, rng=np.random.default_rng(0), dtype=np.float64)
    reference = BUILDERS[name](torch.nn, dtype=torch.float64)
    reference.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    return ours, reference


def batch(size: int = 6):
    rng = np.random.default_rng(1)
    return rng.random((size, 1, 28, 28)), rng.integers(0, 10, size)


@pytest.mark.parametrize("name", ["cnn", "mlp"])
@pytest.mark.parametrize("input_grad", [False, True])
def test_logits_loss_and_gradients_match_torch(name, input_grad):
    ours, reference = twin_models(name)
    images, labels = batch()
    x_torch = torch.from_numpy(images).requires_grad_(input_grad)
    logits_torch = reference(x_torch)
    loss_torch = F.cross_entropy(logits_torch, torch.from_numpy(labels))
    loss_torch.backward()

    ours.requires_input_grad = input_grad
    logits = ours(images)
    np.testing.assert_allclose(logits, logits_torch.detach().numpy(), **TIGHT)
    loss, dlogits = cross_entropy(logits, labels)
    assert loss == pytest.approx(loss_torch.item(), rel=1e-12)
    dx = ours.backward(dlogits)

    torch_parameters = dict(reference.named_parameters())
    assert [key for key, _ in ours.named_parameters()] == list(torch_parameters)
    for key, parameter in ours.named_parameters():
        np.testing.assert_allclose(parameter.grad, torch_parameters[key].grad.numpy(), err_msg=key, **TIGHT)
    if input_grad:
        np.testing.assert_allclose(dx, x_torch.grad.numpy(), **TIGHT)
    else:
        assert dx is None


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_state_dict_round_trips_both_ways(name):
    images, _ = batch(3)
    torch.manual_seed(0)
    trained_elsewhere = BUILDERS[name](torch.nn)  # float32, torch's own init
    ours = BUILDERS[name](nn, rng=np.random.default_rng(5))
    ours.load_state_dict({key: value.numpy() for key, value in trained_elsewhere.state_dict().items()})
    back = BUILDERS[name](torch.nn)
    back.load_state_dict({key: torch.from_numpy(value) for key, value in ours.state_dict().items()})
    with torch.no_grad():
        expected = trained_elsewhere(torch.from_numpy(images.astype(np.float32))).numpy()
        np.testing.assert_array_equal(back(torch.from_numpy(images.astype(np.float32))).numpy(), expected)
    logits = ours(images.astype(np.float32))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_lecture_parameter_counts():
    cnn = lecture_cnn(nn)
    mlp = lecture_mlp(nn)
    # lecture 004: 320 + 18,496 + 31,370 weights and biases
    assert sum(p.data.size for p in cnn.parameters()) == 320 + 18_496 + 31_370
    assert sum(p.data.size for p in mlp.parameters()) == 784 * 500 + 500 + 500 * 10 + 10
