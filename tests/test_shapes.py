"""Each layer owns its shape inference: ``output_shape`` (a built layer) and the classmethod
``output_shape_for`` (the constructor's arguments, no weights), used by the model planner and
the summary."""

from __future__ import annotations

import numpy as np
import pytest
from test_nn import LAYER_IDS, LAYERS

from cnnlab import nn
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.models import build_model, plan_model
from cnnlab.summary import summarize


@pytest.mark.parametrize("name,factory,shape,has_parameters", LAYERS, ids=LAYER_IDS)
def test_output_shape_is_what_forward_returns(name, factory, shape, has_parameters):
    layer = factory(nn, {})
    layer.eval()
    assert layer.output_shape(shape) == layer(np.zeros(shape, np.float32)).shape


@pytest.mark.parametrize("kind, args, kwargs, input_shape", [
    ("Conv2d", (3, 8, (3, 2)), {"stride": 2, "padding": (1, 0), "dilation": 2}, (2, 3, 11, 9)),
    ("Conv2d", (3, 8, 4), {"padding": "same"}, (2, 3, 7, 6)),
    ("Conv2d", (4, 8, 3), {"groups": 2, "padding": "valid"}, (1, 4, 5, 5)),
    ("Linear", (12, 5), {}, (3, 12)),
    ("MaxPool2d", (3,), {"stride": 2, "padding": 1}, (2, 3, 9, 8)),
    ("AvgPool2d", ((2, 3),), {}, (2, 3, 9, 8)),
    ("Flatten", (), {}, (2, 3, 4, 5)),
    ("Flatten", (), {"start_dim": 2}, (2, 3, 4, 5)),
    ("BatchNorm2d", (3,), {}, (2, 3, 4, 5)),
    ("BatchNorm1d", (3,), {}, (2, 3)),
    ("Dropout", (), {"p": 0.2}, (2, 7)),
    ("LeakyReLU", (), {"negative_slope": 0.1}, (2, 3, 4, 5)),
])
def test_output_shape_for_needs_no_layer_and_agrees_with_the_built_one(kind, args, kwargs,
                                                                        input_shape):
    layer_class = getattr(nn, kind)
    planned = layer_class.output_shape_for(input_shape, *args, **kwargs)
    layer = layer_class(*args, **kwargs)
    layer.eval()
    assert planned == layer.output_shape(input_shape) == layer(np.zeros(input_shape, np.float32)).shape


@pytest.mark.parametrize("kind, args, input_shape, message", [
    ("Conv2d", (3, 8, 3), (2, 4, 9, 9), r"Conv2d expects input of shape \(N, 3, H, W\), got \(2, 4, 9, 9\)"),
    ("Conv2d", (3, 8, 7), (2, 3, 5, 5), r"Conv2d: kernel 7x7 \(dilation 1\) does not fit a 5x5 input"),
    ("Linear", (12, 5), (3, 2, 6), r"Linear expects input of shape \(N, 12\), got \(3, 2, 6\); add Flatten"),
    ("MaxPool2d", (4,), (1, 1, 3, 3), r"MaxPool2d: .*kernel 4x4 does not fit a 3x3 input"),
    ("BatchNorm2d", (3,), (2, 4, 5, 5), r"BatchNorm2d expects input of shape \(N, C, H, W\) with C"),
])
def test_a_shape_that_does_not_fit_names_the_layer(kind, args, input_shape, message):
    with pytest.raises(ShapeError, match=message):
        getattr(nn, kind).output_shape_for(input_shape, *args)


def test_sequential_output_shape_names_the_position(rng):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=rng), nn.Flatten(), nn.Linear(100, 10, rng=rng))
    assert model.output_shape((5, 1, 7, 7)) == (5, 10)
    with pytest.raises(ShapeError, match=r"layer 2 Linear expects input of shape \(N, 100\), got \(5, 144\)"):
        model.output_shape((5, 1, 8, 8))


def test_the_planner_allocates_no_weights(monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("the planner built a Parameter")

    monkeypatch.setattr(nn.layers, "Parameter", no_weights)
    plans = plan_model("c8k4psame-bn-p2-c16k3s2-ap2-flatten-drop0.2-fc32", (3, 32, 32), 7)
    assert [plan.output_shape for plan in plans] == [
        (8, 32, 32), (8, 32, 32), (8, 32, 32), (8, 16, 16), (16, 7, 7), (16, 7, 7), (16, 3, 3),
        (144,), (144,), (32,), (32,), (7,)]
    with pytest.raises(ConfigError, match=r"layer 3 'c8k9'.*does not fit the 4x4 input"):
        plan_model("c8k3-p4-c8k9", (1, 21, 21), 10)


def test_planner_summary_and_forward_agree(rng):
    spec = "c6k4psame-bn-p2-c8k3d2-ap3s2p1-fc12-tanh"
    plans = plan_model(spec, (2, 20, 18), 5)
    model = build_model(spec, rng, input_shape=(2, 20, 18), num_classes=5)
    rows = summarize(model, (2, 20, 18))
    model.eval()
    x = np.zeros((3, 2, 20, 18), np.float32)
    for plan, row, layer in zip(plans, rows[1:], model):
        x = layer(x)
        assert plan.output_shape == row.output_shape == x.shape[1:], plan.kind


class Doubler(nn.Module):
    """A user's layer without a shape formula."""

    def forward(self, x):
        return np.concatenate([x, x], axis=1)


def test_a_module_without_a_formula_is_run_once_for_its_shape(rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), Doubler(), nn.Flatten())
    assert model.output_shape((1, 1, 5, 5)) == (1, 36)
    assert [row.output_shape for row in summarize(model, (1, 5, 5))][1:] == [(2, 3, 3), (4, 3, 3), (36,)]


def test_one_shape_formatter():
    from cnnlab.formatting import format_shape

    assert format_shape((1, 28, 28)) == "1x28x28"
    assert format_shape(np.zeros((64, 7, 7)).shape, ", ", brackets=True) == "(64, 7, 7)"
    assert format_shape((3,), ", ", brackets=True) == "(3)"
    assert format_shape((64, 32, 3, 3), ",", brackets=True) == "(64,32,3,3)"
