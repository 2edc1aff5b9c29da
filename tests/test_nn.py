"""cnnlab.nn against torch.nn: same outputs, gradients, state_dict keys, init distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnlab import nn
from cnnlab.errors import CheckpointError, ConfigError, ShapeError
from cnnlab.nn import init

TOLERANCES = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


# (name, factory taking the nn namespace and dtype keywords, input shape, has parameters)
LAYERS = [
    ("conv", lambda m, kw: m.Conv2d(3, 4, 3, stride=2, padding=1, **kw), (2, 3, 7, 7), True),
    ("conv-dilated-grouped", lambda m, kw: m.Conv2d(4, 6, (3, 2), padding=(2, 1), dilation=2, groups=2,
                                                    bias=False, **kw), (2, 4, 8, 7), True),
    ("conv-same", lambda m, kw: m.Conv2d(2, 3, 5, padding="same", **kw), (2, 2, 6, 6), True),
    ("linear", lambda m, kw: m.Linear(5, 4, **kw), (3, 5), True),
    ("linear-no-bias", lambda m, kw: m.Linear(5, 4, bias=False, **kw), (3, 5), True),
    ("maxpool", lambda m, kw: m.MaxPool2d(2), (2, 3, 6, 6), False),
    ("maxpool-padded", lambda m, kw: m.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 7), False),
    ("avgpool", lambda m, kw: m.AvgPool2d(2), (2, 3, 6, 6), False),
    ("maxpool-rect", lambda m, kw: m.MaxPool2d((2, 3), stride=(2, 1), padding=(1, 1)), (2, 3, 8, 9), False),
    ("avgpool-rect", lambda m, kw: m.AvgPool2d((2, 3), stride=(2, 1), padding=(1, 1)), (2, 3, 8, 9), False),
    ("avgpool-padded", lambda m, kw: m.AvgPool2d(3, stride=2, padding=1), (2, 2, 7, 7), False),
    ("relu", lambda m, kw: m.ReLU(), (3, 4, 5), False),
    ("leaky-relu", lambda m, kw: m.LeakyReLU(0.2), (3, 4, 5), False),
    ("sigmoid", lambda m, kw: m.Sigmoid(), (3, 7), False),
    ("tanh", lambda m, kw: m.Tanh(), (3, 7), False),
    ("flatten", lambda m, kw: m.Flatten(), (2, 3, 4, 5), False),
    ("batchnorm1d", lambda m, kw: m.BatchNorm1d(4, **kw), (6, 4), True),
    ("batchnorm1d-3d", lambda m, kw: m.BatchNorm1d(3, **kw), (4, 3, 5), True),
    ("batchnorm2d", lambda m, kw: m.BatchNorm2d(3, momentum=0.2, **kw), (4, 3, 5, 5), True),
    ("batchnorm2d-no-bias", lambda m, kw: m.BatchNorm2d(3, bias=False, **kw), (4, 3, 5, 5), True),
    ("batchnorm2d-no-affine", lambda m, kw: m.BatchNorm2d(3, affine=False, **kw), (4, 3, 5, 5), True),
]
LAYER_IDS = [name for name, *_ in LAYERS]


def numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy() for key, value in module.state_dict().items()}


def torch_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.asarray(value)) for key, value in module.state_dict().items()}


def make_pair(factory, has_parameters: bool, dtype):
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    reference = factory(torch.nn, {"dtype": torch_dtype} if has_parameters else {})
    ours = factory(nn, {"dtype": dtype} if has_parameters else {})
    with torch.no_grad():  # non-trivial affine parameters, so their gradients are tested
        for parameter in reference.parameters():
            parameter.uniform_(-1, 1)
    ours.load_state_dict(numpy_state(reference))
    return ours, reference


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,factory,shape,has_parameters", LAYERS, ids=LAYER_IDS)
def test_forward_and_backward_match_torch(name, factory, shape, has_parameters, dtype):
    rng = np.random.default_rng(1)
    ours, reference = make_pair(factory, has_parameters, dtype)
    x = rng.standard_normal(shape).astype(dtype)
    x_torch = torch.from_numpy(x.copy()).requires_grad_(True)
    y_torch = reference(x_torch)
    y = ours(x)
    assert y.dtype == dtype and y.shape == tuple(y_torch.shape)
    np.testing.assert_allclose(y, y_torch.detach().numpy(), **TOLERANCES[dtype])

    dy = rng.standard_normal(y.shape).astype(dtype)
    y_torch.backward(torch.from_numpy(dy))
    dx = ours.backward(dy)
    np.testing.assert_allclose(dx, x_torch.grad.numpy(), **TOLERANCES[dtype])
    torch_parameters = dict(reference.named_parameters())
    assert [key for key, _ in ours.named_parameters()] == list(torch_parameters)
    for key, parameter in ours.named_parameters():
        assert parameter.grad.dtype == dtype
        np.testing.assert_allclose(parameter.grad, torch_parameters[key].grad.numpy(), **TOLERANCES[dtype])
    # running statistics updated as torch updates them
    for key, buffer in ours.named_buffers():
        np.testing.assert_allclose(buffer, dict(reference.named_buffers())[key].numpy(), **TOLERANCES[dtype])


@pytest.mark.parametrize("name,factory,shape,has_parameters", LAYERS, ids=LAYER_IDS)
def test_state_dict_keys_shapes_and_dtypes_match_torch(name, factory, shape, has_parameters):
    ours = factory(nn, {})
    reference = factory(torch.nn, {})
    theirs = numpy_state(reference)
    mine = ours.state_dict()
    assert list(mine) == list(theirs)
    for key in theirs:
        assert mine[key].shape == theirs[key].shape, key
        assert mine[key].dtype == theirs[key].dtype, key


def build_sequential(module, rng_kw=None):
    kw = rng_kw or {}
    return module.Sequential(
        module.Conv2d(1, 4, 3, padding=1, **kw), module.BatchNorm2d(4), module.ReLU(), module.MaxPool2d(2),
        module.Flatten(), module.Dropout(0.3), module.Linear(4 * 4 * 4, 3, **kw),
    )


def test_sequential_state_dict_round_trips_both_ways():
    torch.manual_seed(0)
    reference = build_sequential(torch.nn)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    reference.train()
    reference(torch.from_numpy(x))  # non-default running statistics and num_batches_tracked
    reference.eval()

    ours = build_sequential(nn, {"rng": np.random.default_rng(3)}).eval()
    state = numpy_state(reference)
    assert list(ours.state_dict()) == list(state)
    assert ours.state_dict()["1.num_batches_tracked"].shape == ()
    assert ours.state_dict()["1.num_batches_tracked"].dtype == np.int64
    ours.load_state_dict(state)
    assert int(ours[1].num_batches_tracked) == 1

    back = build_sequential(torch.nn).eval()
    back.load_state_dict(torch_state(ours))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(back(torch.from_numpy(x)).numpy(), expected)
    np.testing.assert_allclose(ours(x), expected, rtol=1e-5, atol=1e-6)


def test_load_state_dict_is_strict_and_atomic():
    model = nn.Sequential(nn.Linear(4, 3, rng=np.random.default_rng(0)), nn.ReLU(), nn.Linear(3, 2))
    before = {key: value.copy() for key, value in model.state_dict().items()}
    good = {key: np.ones_like(value) for key, value in before.items()}

    missing = dict(good)
    del missing["2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: 2\.bias"):
        model.load_state_dict(missing)
    unexpected = dict(good, **{"5.weight": np.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: 5\.weight"):
        model.load_state_dict(unexpected)
    wrong_shape = dict(good, **{"0.weight": np.zeros((3, 5))})
    with pytest.raises(CheckpointError, match=r"0\.weight: checkpoint shape \(3, 5\), model shape \(3, 4\)"):
        model.load_state_dict(wrong_shape, strict=False)
    for key, value in model.state_dict().items():  # nothing half-loaded
        np.testing.assert_array_equal(value, before[key])

    message = ""
    try:
        model.load_state_dict(dict(wrong_shape, extra=np.zeros(1)))
    except CheckpointError as error:
        message = str(error)
    assert "\n" not in message and "unexpected keys: extra" in message and "0.weight" in message

    missing_keys, unexpected_keys = model.load_state_dict(dict(missing, extra=np.zeros(1)), strict=False)
    assert missing_keys == ["2.bias"] and unexpected_keys == ["extra"]
    np.testing.assert_array_equal(model[0].weight.data, 1)
    np.testing.assert_array_equal(model[2].bias.data, before["2.bias"])


def test_load_state_dict_casts_into_the_model_dtype_in_place():
    layer = nn.Linear(3, 2)
    weight = layer.weight.data
    layer.load_state_dict({"weight": np.full((2, 3), 0.5), "bias": np.zeros(2)})  # float64 source
    assert layer.weight.data is weight and weight.dtype == np.float32
    np.testing.assert_array_equal(weight, 0.5)


def torch_bound(fan_in: int) -> float:
    return 1 / math.sqrt(fan_in)


def test_default_init_follows_torch_distributions():
    conv = nn.Conv2d(16, 32, 3, rng=np.random.default_rng(0))
    linear = nn.Linear(784, 500, rng=np.random.default_rng(0))
    for layer, fan_in in [(conv, 16 * 9), (linear, 784)]:
        bound = torch_bound(fan_in)
        for parameter in (layer.weight, layer.bias):
            assert parameter.data.dtype == np.float32
            assert np.abs(parameter.data).max() <= bound
        weights = layer.weight.data
        assert np.abs(weights).max() > 0.98 * bound  # fills the interval, not a narrower one
        # U(-b, b) has variance b^2 / 3
        assert weights.var() == pytest.approx(bound**2 / 3, rel=0.03)
        assert abs(weights.mean()) < 0.01 * bound
    # torch's layers draw from the same distribution
    torch.manual_seed(0)
    torch_weights = torch.nn.Linear(784, 500).weight.detach().numpy()
    assert torch_weights.var() == pytest.approx(linear.weight.data.var(), rel=0.03)
    assert np.abs(torch_weights).max() <= torch_bound(784)


def test_same_rng_gives_same_weights_and_dtype_is_honoured():
    first = build_sequential(nn, {"rng": np.random.default_rng(7)})
    second = build_sequential(nn, {"rng": np.random.default_rng(7)})
    third = build_sequential(nn, {"rng": np.random.default_rng(8)})
    for key, value in first.state_dict().items():
        np.testing.assert_array_equal(value, second.state_dict()[key])
    assert not np.array_equal(first[0].weight.data, third[0].weight.data)
    assert nn.Conv2d(1, 2, 3, dtype=np.float64).weight.data.dtype == np.float64


def truncated_normal_std(std: float, bound: float) -> float:
    density = math.exp(-bound**2 / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return std * math.sqrt(1 - 2 * bound * density / mass)


def test_trunc_normal_is_the_lecture_randn_trunc():
    values = init.trunc_normal((400, 500), np.random.default_rng(0))
    assert values.shape == (400, 500)
    assert np.abs(values).max() <= 0.2  # +-2 sigma, sigma 0.1
    assert np.abs(values).max() > 0.199
    assert values.std() == pytest.approx(truncated_normal_std(0.1, 2.0), rel=0.01)  # 0.088
    assert abs(values.mean()) < 1e-3
    # a truncated, not a clipped normal: no pile-up at the bounds (clipping puts 4.6% there)
    near_bound = 2 * (math.erf(2 / math.sqrt(2)) - math.erf(1.95 / math.sqrt(2))) / 2 / math.erf(2 / math.sqrt(2))
    assert np.mean(np.abs(values) > 0.195) == pytest.approx(near_bound, abs=0.0015)  # 0.6%
    np.testing.assert_array_equal(values, init.trunc_normal((400, 500), np.random.default_rng(0)))
    wide = init.trunc_normal(10_000, np.random.default_rng(1), std=2.0, bound=1.0, dtype=np.float32)
    assert wide.dtype == np.float32 and np.abs(wide).max() <= 2.0
    assert wide.std() == pytest.approx(truncated_normal_std(2.0, 1.0), rel=0.03)


def test_kaiming_and_xavier_match_torch_formulas():
    rng = np.random.default_rng(0)
    shape = (64, 32, 5, 5)
    fan_in, fan_out = init.calculate_fan_in_and_fan_out(shape)
    assert (fan_in, fan_out) == (32 * 25, 64 * 25)
    reference = torch.empty(shape)
    cases = [
        (init.kaiming_uniform_, torch.nn.init.kaiming_uniform_, {"nonlinearity": "relu"}),
        (init.kaiming_normal_, torch.nn.init.kaiming_normal_, {"mode": "fan_out", "nonlinearity": "relu"}),
        (init.xavier_uniform_, torch.nn.init.xavier_uniform_, {"gain": 2.0}),
        (init.xavier_normal_, torch.nn.init.xavier_normal_, {}),
    ]
    torch.manual_seed(0)
    for ours, theirs, kwargs in cases:
        values = ours(np.empty(shape), rng=rng, **kwargs)
        theirs(reference, **kwargs)
        assert values.std() == pytest.approx(reference.std().item(), rel=0.03), ours.__name__
    bound = math.sqrt(6 / fan_in)  # kaiming uniform, relu gain sqrt(2)
    assert np.abs(init.kaiming_uniform_(np.empty(shape), nonlinearity="relu", rng=rng)).max() <= bound
    with pytest.raises(ConfigError):
        init.calculate_fan_in_and_fan_out((5,))


def test_backward_accumulates_and_zero_grad_clears():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=rng, dtype=np.float64), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2, rng=rng, dtype=np.float64))
    x = rng.standard_normal((4, 2, 6, 6))
    dy = rng.standard_normal((4, 2))
    model(x)
    model.backward(dy)
    once = [parameter.grad.copy() for parameter in model.parameters()]
    assert all(np.abs(grad).sum() > 0 for grad in once)
    model(x)
    model.backward(dy)
    for grad, parameter in zip(once, model.parameters()):
        np.testing.assert_allclose(parameter.grad, 2 * grad, rtol=1e-12)
    model.zero_grad()
    assert all(not parameter.grad.any() for parameter in model.parameters())


def test_sequential_skips_the_input_gradient_unless_asked():
    rng = np.random.default_rng(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, rng=rng, dtype=np.float64), nn.ReLU(),
                        nn.Linear(5, 2, rng=rng, dtype=np.float64))
    assert len(mlp) == 4 and isinstance(mlp[1], nn.Linear) and isinstance(mlp[-1], nn.Linear)
    assert [type(layer).__name__ for layer in mlp] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert [layer.requires_input_grad for layer in mlp] == [False, False, True, True]
    x = rng.standard_normal((3, 3, 2, 2))
    mlp(x)
    assert mlp.backward(np.ones((3, 2))) is None
    first_grad = mlp[1].weight.grad.copy()
    assert first_grad.any()

    mlp.requires_input_grad = True
    mlp.zero_grad()
    dx = mlp.backward(np.ones((3, 2)))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(mlp[1].weight.grad, first_grad)


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"Conv2d.backward\(\) called before forward\(\)"):
        nn.Conv2d(1, 2, 3).backward(np.zeros((1, 2, 3, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.ReLU().backward(np.zeros(3))


def test_dropout_train_and_eval():
    x = np.ones((200, 50), dtype=np.float32)
    dropout = nn.Dropout(0.25, rng=np.random.default_rng(0))
    y = dropout(x)
    assert y.dtype == np.float32
    assert np.mean(y == 0) == pytest.approx(0.25, abs=0.02)
    np.testing.assert_allclose(y[y != 0], 1 / 0.75)  # inverted dropout keeps the mean
    np.testing.assert_array_equal(dropout.backward(x), y)  # the same mask
    again = nn.Dropout(0.25, rng=np.random.default_rng(0))(x)
    np.testing.assert_array_equal(again, y)
    dropout.eval()
    assert not dropout.training
    np.testing.assert_array_equal(dropout(x), x)
    np.testing.assert_array_equal(dropout.backward(x), x)
    with pytest.raises(ConfigError):
        nn.Dropout(1.5)


@pytest.mark.parametrize("momentum,track", [(0.1, True), (None, True), (0.1, False)])
def test_batchnorm_train_then_eval_matches_torch(momentum, track):
    rng = np.random.default_rng(0)
    reference = torch.nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track, dtype=torch.float64)
    ours = nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track, dtype=np.float64)
    model = nn.Sequential(ours)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 5)) * 3 + 1
        np.testing.assert_allclose(model(x), reference(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    for key, buffer in ours.named_buffers():
        np.testing.assert_allclose(buffer, dict(reference.named_buffers())[key].numpy(), rtol=1e-12)
    if track:
        assert int(ours.num_batches_tracked) == 3
    model.eval()
    reference.eval()
    assert not ours.training
    x = rng.standard_normal((2, 3, 5, 5))
    before = {key: value.copy() for key, value in ours.state_dict().items()}
    np.testing.assert_allclose(model(x), reference(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    for key, value in ours.state_dict().items():  # eval mode leaves the statistics alone
        np.testing.assert_array_equal(value, before[key])
    model.train()
    assert ours.training


def test_repr_reads_like_torch():
    def build(module):
        return module.Sequential(module.Conv2d(1, 32, 3, padding=1), module.ReLU(), module.Flatten(),
                                 module.Linear(10, 2, bias=False), module.BatchNorm1d(2),
                                 module.LeakyReLU(0.2), module.Conv2d(2, 4, (3, 1), stride=2, groups=2))
    assert repr(build(nn)) == repr(build(torch.nn))
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(nn.Dropout(0.3)) == "Dropout(p=0.3)"


def test_bad_configuration_and_input_raise_cnnlab_errors():
    with pytest.raises(ConfigError, match="in_channels"):
        nn.Conv2d(0, 3, 3)
    with pytest.raises(ConfigError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ConfigError, match="stride=1"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ConfigError, match="kernel_size"):
        nn.MaxPool2d(0)
    with pytest.raises(ShapeError, match=r"expects input of shape \(N, 3, H, W\), got \(2, 1, 5, 5\)"):
        nn.Conv2d(3, 4, 3)(np.zeros((2, 1, 5, 5), dtype=np.float32))
    with pytest.raises(ShapeError, match="Flatten"):
        nn.Linear(4, 2)(np.zeros((2, 1, 2, 2), dtype=np.float32))
    with pytest.raises(ShapeError):
        nn.BatchNorm2d(3)(np.zeros((2, 3), dtype=np.float32))


def test_modules_children_and_train_mode_propagate():
    model = build_sequential(nn)
    assert [name for name, _ in model.named_children()] == [str(i) for i in range(7)]
    assert len(list(model.modules())) == 8
    assert [name for name, _ in model.named_buffers()] == [
        "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert [name for name, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias"]
    assert [p.name for p in model.parameters()] == ["weight", "bias"] * 3
    model.eval()
    assert not any(module.training for module in model.modules())
    model.train()
    assert all(module.training for module in model.modules())
