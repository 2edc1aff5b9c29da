"""Named models, spec strings, their errors, and the summary (shapes, parameters, FLOPs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.errors import ConfigError
from cnnlab.models import MODEL_NAMES, NAMED_SPECS, build_model
from cnnlab.summary import format_summary, summarize, totals


def count_parameters(model) -> int:
    return sum(parameter.data.size for parameter in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_named_models_give_logits_for_a_batch(name, rng):
    model = build_model(name, rng)
    logits = model(rng.random((3, 1, 28, 28), dtype=np.float32))
    assert logits.shape == (3, 10)
    assert logits.dtype == np.float32
    assert model.spec == name and model.input_shape == (1, 28, 28) and model.num_classes == 10


def test_lecture_models_have_the_lectures_parameter_counts(rng):
    assert count_parameters(build_model("cnn", rng)) == 320 + 18_496 + 31_370 == 50_186
    assert count_parameters(build_model("mlp", rng)) == 784 * 500 + 500 + 500 * 10 + 10 == 397_510


def test_lecture_cnn_has_the_lecture_layers_and_pytorch_keys(rng):
    model = build_model("cnn", rng)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                     "Linear"]
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(3136, 10))
    ours = {key: value.shape for key, value in model.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert ours == theirs


def test_mlp_has_no_activation_on_the_logits(rng):
    model = build_model("mlp", rng)
    assert [type(layer).__name__ for layer in model] == ["Flatten", "Linear", "ReLU", "Linear"]
    logits = model(rng.random((64, 1, 28, 28), dtype=np.float32))
    assert (logits < 0).any()  # a ReLU on the output (the lecture's bug) would make this False


def test_cnn_bn_matches_pytorch_forward_in_eval_mode(rng):
    model = build_model("cnn-bn", rng)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds.count("BatchNorm2d") >= 2 and "Dropout" in kinds
    reference = torch.nn.Sequential(*[
        {"Conv2d": lambda l: torch.nn.Conv2d(l.in_channels, l.out_channels, l.kernel_size,
                                             padding=l.padding),
         "BatchNorm2d": lambda l: torch.nn.BatchNorm2d(l.num_features),
         "ReLU": lambda l: torch.nn.ReLU(), "MaxPool2d": lambda l: torch.nn.MaxPool2d(2),
         "Flatten": lambda l: torch.nn.Flatten(), "Dropout": lambda l: torch.nn.Dropout(l.p),
         "Linear": lambda l: torch.nn.Linear(l.in_features, l.out_features)}[kind](layer)
        for kind, layer in zip(kinds, model)])
    reference.load_state_dict({key: torch.from_numpy(np.array(value))
                               for key, value in model.state_dict().items()})
    x = rng.random((2, 1, 28, 28), dtype=np.float32)
    reference.eval()
    model.eval()
    expected = reference(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-4, atol=1e-5)


def test_same_seed_same_weights():
    first = build_model("cnn", np.random.default_rng(7)).state_dict()
    second = build_model("cnn", np.random.default_rng(7)).state_dict()
    other = build_model("cnn", np.random.default_rng(8)).state_dict()
    assert all(np.array_equal(first[key], second[key]) for key in first)
    assert not np.array_equal(first["0.weight"], other["0.weight"])


@pytest.mark.parametrize("spec, kinds, parameters", [
    ("784-500-10", ["Flatten", "Linear", "ReLU", "Linear"], 397_510),
    ("784-10", ["Flatten", "Linear"], 7_850),
    ("fc128,fc64", ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"],
     784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10),
    ("c8k3-bn-p2", ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten", "Linear"],
     8 * 9 + 8 + 16 + 8 * 13 * 13 * 10 + 10),
    ("conv4k5s2psame", None, None),
    ("c4k3psame-tanh-ap2-fc16-lrelu0.2-drop0.25",
     ["Conv2d", "Tanh", "AvgPool2d", "Flatten", "Linear", "LeakyReLU", "Dropout", "Linear"],
     4 * 9 + 4 + 4 * 14 * 14 * 16 + 16 + 16 * 10 + 10),
    ("conv32k3-pool-conv64k5-pool-fc128", None, None),
])
def test_specs_build_the_layers_they_say(spec, kinds, parameters, rng):
    if kinds is None:  # stride 2 with psame is refused like PyTorch; the other spec builds
        if "psame" in spec:
            with pytest.raises(ConfigError, match="stride 1"):
                build_model(spec, rng)
            return
        model = build_model(spec, rng)
        assert model(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)
        return
    model = build_model(spec, rng)
    assert [type(layer).__name__ for layer in model] == kinds
    assert count_parameters(model) == parameters
    assert model(rng.random((2, 1, 28, 28), dtype=np.float32)).shape == (2, 10)


def test_specs_follow_input_shape_and_classes(rng):
    model = build_model("c6k5-p2-fc20", rng, input_shape=(3, 32, 32), num_classes=7)
    assert model(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 7)
    assert model[0].weight.shape == (6, 3, 5, 5)
    assert model[4].in_features == 6 * 14 * 14


@pytest.mark.parametrize("spec, message", [
    ("c32k3-p2-p2-p2-p2-p2", r"layer 6 'p2'.*does not fit the 1x1 input"),
    ("c32k30", r"layer 1 'c32k30'.*kernel 30.*28x28"),
    ("c0k3", r"layer 1 'c0k3'.*must be >= 1, got 0"),
    ("c16k3-fc0", r"layer 2 'fc0'.*must be >= 1"),
    ("c32", r"layer 1 'c32'.*kernel size"),
    ("c8k3,cnv16k3", r"layer 2 'cnv16k3'.*did you mean 'conv'"),
    ("c32k3x2", r"layer 1 'c32k3x2'.*unknown option 'x'"),
    ("fc10-c32k3", r"layer 2 'c32k3'.*needs \(C, H, W\) input"),
    ("drop1.5", r"dropout probability must be in \[0, 1\)"),
    ("cnnbn", r"unknown model 'cnnbn': did you mean 'cnn-bn'"),
    ("cnn_bn", r"did you mean 'cnn-bn'"),
    ("mpl", r"did you mean 'mlp'"),
    ("784-500-11", r"last size is the number of classes, 11"),
    ("500-10", r"first size is the input size, 500.*784"),
    ("", r"empty model spec"),
    ("fc100000", r"more than 65536"),
])
def test_bad_specs_name_the_layer_and_numbers(spec, message, rng):
    with pytest.raises(ConfigError, match=message):
        build_model(spec, rng)


@pytest.mark.parametrize("input_shape, num_classes", [((1, 0, 28), 10), ((1, 28), 10),
                                                      ((1, 28, 28), 0), ((1, 28, 28), -3)])
def test_bad_shapes_and_class_counts(input_shape, num_classes, rng):
    with pytest.raises(ConfigError):
        build_model("cnn", rng, input_shape=input_shape, num_classes=num_classes)


def test_named_specs_are_valid_specs(rng):
    for name, spec in NAMED_SPECS.items():
        named = build_model(name, rng)
        spelled = build_model(spec, rng)
        assert [repr(layer) for layer in named] == [repr(layer) for layer in spelled]


def test_summary_of_lecture_cnn_shapes_parameters_flops(rng):
    rows = summarize(build_model("cnn", rng), (1, 28, 28))
    assert [row.output_shape for row in rows] == [
        (1, 28, 28), (32, 28, 28), (32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 14, 14),
        (64, 7, 7), (3136,), (10,)]
    assert [row.parameters for row in rows] == [0, 320, 0, 0, 18_496, 0, 0, 0, 31_370]
    conv1 = 2 * 32 * 28 * 28 * (1 * 3 * 3)
    conv2 = 2 * 64 * 14 * 14 * (32 * 3 * 3)
    linear = 2 * 3136 * 10
    assert rows[1].flops == conv1 == 451_584
    assert rows[4].flops == conv2
    assert rows[8].flops == linear
    assert rows[2].flops == 32 * 28 * 28          # ReLU: one op per element
    assert rows[3].flops == 32 * 14 * 14 * 3      # max of 4: three comparisons
    total = totals(rows)
    assert total["parameters"] == 50_186
    assert total["flops"] == sum(row.flops for row in rows)
    table = format_summary(rows)
    assert "50,186" in table and "(64, 7, 7)" in table and "Conv2d(32, 64" in table


def test_summary_shapes_agree_with_a_forward_pass(rng):
    model = build_model("c6k5s2p1-bn-p3s2-c8k3d2psame-fc12", rng)
    rows = summarize(model, (1, 28, 28))
    x = rng.random((2, 1, 28, 28), dtype=np.float32)
    model.eval()
    for row, layer in zip(rows[1:], model):
        x = layer(x)
        assert x.shape[1:] == row.output_shape, row.description


def test_cli_summary_prints_table_for_name_and_spec(capsys):
    assert main(["summary", "cnn"]) == 0
    output = capsys.readouterr().out
    assert "50,186" in output and "Linear(in_features=3136, out_features=10" in output
    assert main(["summary", "c8k3-p2", "--input-shape", "1,12,12", "--num-classes", "3"]) == 0
    output = capsys.readouterr().out
    assert "(8, 5, 5)" in output and "(3)" in output


def test_cli_summary_bad_model_is_one_line_error(capsys):
    assert main(["summary", "cnnbn"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnlab: error:") and "cnn-bn" in error and "\n" not in error
