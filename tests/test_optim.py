"""cnnlab.optim follows torch.optim's parameter trajectories and learning-rate schedules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import nn, optim
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.ops.loss import cross_entropy

STEPS = 20


OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.1)),
    "sgd-momentum": ("SGD", dict(lr=0.05, momentum=0.9)),
    "sgd-nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "sgd-dampening": ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.02)),
    "sgd-weight-decay": ("SGD", dict(lr=0.1, weight_decay=0.05)),
    "adam": ("Adam", dict(lr=0.01)),
    "adam-weight-decay": ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    "adamw": ("AdamW", dict(lr=0.01, weight_decay=0.1)),
}


def small_cnn(module, **kw):
    return module.Sequential(module.Conv2d(1, 3, 3, **kw), module.Tanh(), module.Flatten(),
                             module.Linear(3 * 4 * 4, 8, **kw), module.ReLU(), module.Linear(8, 4, **kw))


def data():
    rng = np.random.default_rng(2)
    return rng.standard_normal((16, 1, 6, 6)), rng.integers(0, 4, 16)


class OurTraining:
    def __init__(self, kind, settings):
        self.model = small_cnn(nn, rng=np.random.default_rng(0), dtype=np.float64)
        self.optimizer = getattr(optim, kind)(self.model.parameters(), **settings)

    def step(self, images, labels):
        self.optimizer.zero_grad()
        _, dlogits = cross_entropy(self.model(images), labels)
        self.model.backward(dlogits)
        self.optimizer.step()

    def weights(self):
        return [p.data.copy() for p in self.model.parameters()]


class TorchTraining:
    def __init__(self, kind, settings, state):
        self.model = small_cnn(torch.nn, dtype=torch.float64)
        self.model.load_state_dict({key: torch.from_numpy(value.copy()) for key, value in state.items()})
        self.optimizer = getattr(torch.optim, kind)(self.model.parameters(), **settings)

    def step(self, images, labels):
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(torch.from_numpy(images)), torch.from_numpy(labels)).backward()
        self.optimizer.step()

    def weights(self):
        return [p.detach().numpy().copy() for p in self.model.parameters()]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trajectory_matches_torch(name):
    kind, settings = OPTIMIZERS[name]
    images, labels = data()
    ours = OurTraining(kind, settings)
    reference = TorchTraining(kind, settings, ours.model.state_dict())
    start = ours.weights()
    for step in range(STEPS):
        ours.step(images, labels)
        reference.step(images, labels)
        for mine, theirs in zip(ours.weights(), reference.weights()):
            np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-13, err_msg=f"step {step + 1}")
    moved = [np.abs(a - b).max() for a, b in zip(ours.weights(), start)]
    assert min(moved) > 1e-3  # every parameter really trained


@pytest.mark.parametrize("name", ["sgd-nesterov", "sgd-dampening", "adam-weight-decay", "adamw"])
def test_state_dict_resume_gives_the_same_trajectory(name):
    kind, settings = OPTIMIZERS[name]
    images, labels = data()
    straight = OurTraining(kind, settings)
    for _ in range(10):
        straight.step(images, labels)
    model_state = copy.deepcopy(straight.model.state_dict())
    optimizer_state = straight.optimizer.state_dict()
    for _ in range(10):
        straight.step(images, labels)

    resumed = OurTraining(kind, {**settings, "lr": 123.0})  # lr comes back from the state
    resumed.model.load_state_dict(model_state)
    # as after an .npz round trip: string keys, 0-d arrays
    reloaded = {
        "state": {str(index): {key: np.asarray(value) for key, value in entry.items()}
                  for index, entry in optimizer_state["state"].items()},
        "param_groups": [{key: np.asarray(value) for key, value in optimizer_state["param_groups"][0].items()}],
    }
    resumed.optimizer.load_state_dict(reloaded)
    assert resumed.optimizer.lr == settings["lr"]
    for _ in range(10):
        resumed.step(images, labels)
    for mine, theirs in zip(resumed.weights(), straight.weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_state_dict_has_torch_structure_and_plain_values():
    ours = OurTraining("Adam", dict(lr=0.01))
    ours.step(*data())
    state = ours.optimizer.state_dict()
    assert sorted(state) == ["param_groups", "state"]
    assert sorted(state["state"]) == list(range(6))
    assert state["state"][0]["step"] == 1 and isinstance(state["state"][0]["step"], int)
    assert sorted(state["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    group = state["param_groups"][0]
    assert group["params"] == list(range(6)) and group["lr"] == 0.01 and group["betas"] == (0.9, 0.999)
    state["state"][0]["exp_avg"][...] = 7  # a copy, not the live moment
    assert not np.any(ours.optimizer.state[0]["exp_avg"] == 7)


def test_load_state_dict_rejects_another_model():
    ours = OurTraining("SGD", dict(lr=0.1, momentum=0.9))
    ours.step(*data())
    state = ours.optimizer.state_dict()
    other = optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="6 parameters"):
        other.load_state_dict(state)
    state["state"][0]["momentum_buffer"] = np.zeros(5)
    with pytest.raises(CheckpointError, match="shape"):
        ours.optimizer.load_state_dict(state)


def test_float32_stays_float32():
    model = small_cnn(nn, rng=np.random.default_rng(0))
    images, labels = data()
    for optimizer in (optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1),
                      optim.Adam(model.parameters(), weight_decay=0.1), optim.AdamW(model.parameters())):
        for _ in range(2):
            optimizer.zero_grad()
            _, dlogits = cross_entropy(model(images.astype(np.float32)), labels)
            model.backward(dlogits)
            optimizer.step()
        assert all(p.data.dtype == np.float32 for p in model.parameters())
        assert all(value.dtype == np.float32 for entry in optimizer.state for value in entry.values()
                   if isinstance(value, np.ndarray))


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=-0.1),
    lambda p: optim.SGD(p, lr=0.1, nesterov=True),
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
    lambda p: optim.SGD(p, lr=0.1, momentum=-1),
    lambda p: optim.Adam(p, betas=(1.0, 0.999)),
    lambda p: optim.Adam(p, betas=(0.9, -0.1)),
    lambda p: optim.AdamW(p, lr=float("nan")),
    lambda p: optim.Adam(p, eps=-1),
    lambda p: optim.SGD([], lr=0.1),
])
def test_bad_hyperparameters_raise_config_error(make):
    with pytest.raises(ConfigError):
        make(nn.Linear(2, 2).parameters())


SCHEDULERS = {
    "step": ("StepLR", dict(step_size=3, gamma=0.5)),
    "cosine": ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    "cosine-restart": ("CosineAnnealingLR", dict(T_max=4)),
    "linear-warmup": ("LinearLR", dict(start_factor=0.1, end_factor=1.0, total_iters=5)),
}


def torch_learning_rates(kind, settings, steps):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = getattr(torch.optim.lr_scheduler, kind)(optimizer, **settings)
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
        assert optimizer.param_groups[0]["lr"] == rates[-1]
    return rates


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_learning_rates_equal_torch(name):
    kind, settings = SCHEDULERS[name]
    optimizer = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = getattr(optim, kind)(optimizer, **settings)
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
        assert optimizer.lr == rates[-1]
    assert rates == torch_learning_rates(kind, settings, 20)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_state_dict_resumes(name):
    kind, settings = SCHEDULERS[name]
    optimizer = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = getattr(optim, kind)(optimizer, **settings)
    for _ in range(6):
        scheduler.step()
    saved_scheduler = {key: np.asarray(value) for key, value in scheduler.state_dict().items()}
    saved_optimizer = optimizer.state_dict()
    expected = []
    for _ in range(6):
        scheduler.step()
        expected.append(scheduler.get_last_lr()[0])

    fresh_optimizer = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    fresh = getattr(optim, kind)(fresh_optimizer, **settings)
    fresh_optimizer.load_state_dict(saved_optimizer)
    fresh.load_state_dict(saved_scheduler)
    resumed = []
    for _ in range(6):
        fresh.step()
        resumed.append(fresh.get_last_lr()[0])
    assert resumed == expected


def test_scheduler_bad_settings_raise_config_error():
    optimizer = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError):
        optim.StepLR(optimizer, step_size=0)
    with pytest.raises(ConfigError):
        optim.CosineAnnealingLR(optimizer, T_max=0)
    with pytest.raises(ConfigError):
        optim.LinearLR(optimizer, start_factor=0)
    with pytest.raises(ConfigError):
        optimizer.lr = -1
