"""cnnlab.plots and `cnnlab plot`: every figure drawn from a tiny, really trained run."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401  (the figures need it: fail, don't skip, when it is missing)
import numpy as np
import pytest

from cnnlab import plots
from cnnlab.cli import main as cli_main
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError
from conftest import FASHION_CLASSES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def run(trained_run) -> plots.Run:
    return plots.Run(trained_run)


def image_of(axes) -> np.ndarray:
    images = axes.get_images()
    assert len(images) == 1
    return np.asarray(images[0].get_array())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- NumPy helpers

def test_tile_pads_each_image_and_fills_rows():
    images = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4) + 1
    grid = plots.tile(images, columns=3, pad=1)
    assert grid.shape == (2 * 5, 3 * 6)
    np.testing.assert_array_equal(grid[1:4, 1:5], images[0])
    np.testing.assert_array_equal(grid[6:9, 7:11], images[4])
    assert grid[0].sum() == 0 and grid[:, 0].sum() == 0     # the 1-pixel border is 0
    assert grid[5:, 12:].sum() == 0                           # the empty sixth slot


def test_confusion_counts_and_per_class_accuracy():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0, 2])
    matrix = plots.confusion_counts(labels, predictions, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    for truth, predicted in zip(labels, predictions):
        expected[truth, predicted] += 1
    np.testing.assert_array_equal(matrix, expected)
    accuracy = plots.per_class_accuracy(matrix)
    np.testing.assert_allclose(accuracy[:3], [0.5, 2 / 3, 1.0])
    assert np.isnan(accuracy[3])


def test_most_confident_mistakes_are_wrong_and_sorted():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.95, 0.05]])
    labels = np.array([0, 0, 0, 1, 1])
    np.testing.assert_array_equal(plots.most_confident_mistakes(labels, probabilities, 10), [4, 1, 2])
    np.testing.assert_array_equal(plots.most_confident_mistakes(labels, probabilities, 1), [4])


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    lines = [json.dumps({"kind": "step", "step": 1, "loss": 2.0}), '{"kind": "ep']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert plots.read_metrics(tmp_path) == [{"kind": "step", "step": 1, "loss": 2.0}]


def test_run_errors_are_one_line_cnnlab_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        plots.Run(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CheckpointError, match="no checkpoint.npz"):
        plots.Run(tmp_path).model


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # makes `import matplotlib` fail
    with pytest.raises(CnnlabError, match=r"pip install 'cnnlab\[plot\]'"):
        plots.montage(np.zeros((2, 28, 28), np.uint8), np.array([0, 1]), ["a", "b"])


def test_importing_plots_and_report_does_not_import_matplotlib():
    code = ("import sys, cnnlab.plots, cnnlab.report, cnnlab.commands.plot, cnnlab.commands.report; "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------------------- figures of a real run

def test_montage_one_row_per_class(run):
    dataset = run.dataset
    figure = plots.montage(dataset.train_images, dataset.train_labels, run.classes, per_class=7)
    (axes,) = figure.axes
    grid = image_of(axes)
    assert grid.shape == (10 * 30, 7 * 30)
    assert [label.get_text() for label in axes.get_yticklabels()] == FASHION_CLASSES
    # row 3 (Dress), tile 0 is the first Dress in the training set, inside its 1-pixel border
    first_dress = dataset.train_images[np.flatnonzero(dataset.train_labels == 3)[0]]
    np.testing.assert_array_equal(grid[3 * 30 + 1:3 * 30 + 29, 1:29], first_dress)


def test_pixel_histogram_counts_every_pixel(run):
    images = run.dataset.train_images[:50]
    figure = plots.pixel_histogram(images, bins=32)
    (axes,) = figure.axes
    heights = [patch.get_height() for patch in axes.patches]
    assert len(heights) == 32
    assert sum(heights) == images.size
    assert "50 images" in axes.get_title()


def test_learning_curves_plot_the_metrics(run):
    figure = plots.learning_curves(run.metrics)
    loss_axes, accuracy_axes = figure.axes
    assert (loss_axes.get_title(), accuracy_axes.get_title()) == ("Loss", "Accuracy")
    labels = [line.get_label() for line in accuracy_axes.get_lines()]
    assert "train accuracy (per step)" in labels and "test accuracy (per epoch)" in labels
    steps = [record for record in run.metrics if record["kind"] == "step"]
    per_step = next(line for line in loss_axes.get_lines() if line.get_label() == "train loss (per step)")
    np.testing.assert_allclose(per_step.get_ydata(), [record["loss"] for record in steps])
    epoch = next(record for record in run.metrics if record["kind"] == "epoch")
    test_line = next(line for line in accuracy_axes.get_lines() if line.get_label() == "test accuracy (per epoch)")
    np.testing.assert_allclose(test_line.get_ydata(), [epoch["test_accuracy"]])


def test_confusion_matrix_figure_shows_counts_and_class_names(run):
    evaluation = run.evaluate(256)
    matrix = plots.confusion_counts(evaluation.labels, evaluation.predictions, 10)
    assert matrix.sum() == 256
    figure = plots.confusion_matrix(matrix, run.classes)
    matrix_axes, bar_axes = figure.axes
    np.testing.assert_array_equal(image_of(matrix_axes), matrix)
    assert [label.get_text() for label in matrix_axes.get_xticklabels()] == FASHION_CLASSES
    assert [label.get_text() for label in bar_axes.get_yticklabels()] == FASHION_CLASSES
    assert f"{evaluation.accuracy:.1%}" in matrix_axes.get_title()
    bars = [patch.get_width() for patch in bar_axes.patches]
    np.testing.assert_allclose(bars, np.nan_to_num(plots.per_class_accuracy(matrix)))


@pytest.mark.slow
def test_report_figures_show_the_evaluation_of_cnnlab_evaluate(data_root, tmp_path, capsys):
    """The confusion matrix and mistakes evaluate the whole test set, as summary.json and
    `cnnlab evaluate` do (2,100 images here: more than any fixed subset of 2,000)."""
    from conftest import make_tiny_dataset

    data = make_tiny_dataset(data_root, tmp_path / "data", train=256, test=2100)
    run_dir = tmp_path / "run"
    assert cli_main(["train", "--model", "784-16-10", "--dataset", str(data), "--epochs", "1",
                     "--run-dir", str(run_dir), "--no-progress", "--no-report"]) == 0
    assert cli_main(["evaluate", str(run_dir), "--json", str(tmp_path / "eval.json")]) == 0
    capsys.readouterr()
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    figure = plots.plot_kind("confusion", plots.Run(run_dir))
    matrix = image_of(figure.axes[0])
    np.testing.assert_array_equal(matrix, evaluated["confusion"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"2100 test images, accuracy {summary['test_accuracy']:.1%}" in figure.axes[0].get_title()
    assert evaluated["accuracy"] == summary["test_accuracy"]


def test_mistakes_show_true_and_predicted_classes(run):
    evaluation = run.evaluate(256)
    figure = plots.mistakes(evaluation.images, evaluation.labels, evaluation.probabilities, run.classes, k=5)
    assert len(figure.axes) == 10
    chosen = plots.most_confident_mistakes(evaluation.labels, evaluation.probabilities, 5)
    for row, index in enumerate(chosen):
        image_axes, bar_axes = figure.axes[2 * row], figure.axes[2 * row + 1]
        truth, predicted = evaluation.labels[index], evaluation.predictions[index]
        assert truth != predicted
        assert f"true: {FASHION_CLASSES[truth]}" in image_axes.get_title()
        assert f"predicted: {FASHION_CLASSES[predicted]}" in image_axes.get_title()
        np.testing.assert_array_equal(image_of(image_axes), evaluation.images[index])
        np.testing.assert_allclose([patch.get_width() for patch in bar_axes.patches],
                                   evaluation.probabilities[index], rtol=1e-6)


def test_filters_of_the_cnn_one_panel_per_conv_layer(run):
    figure = plots.filters(run.model)
    first, second, *colour_bars = figure.axes
    assert len(colour_bars) == 2  # one per panel: tiles are scaled to their own range
    assert [label.get_text() for label in colour_bars[0].get_yticklabels()] == ["tile's min",
                                                                                "tile's max"]
    assert "32 filters 3x3, one tile per filter" in first.get_title()
    assert "64 filters 3x3, mean over 32 input channels" in second.get_title()
    assert image_of(first).shape == (6 * 5, 6 * 5)       # 32 tiles of 3x3 padded to 5x5, 6 per row
    assert image_of(second).shape == (8 * 5, 8 * 5)
    tile = image_of(first)[1:4, 1:4]
    weight = run.model[0].weight.data[0, 0]
    np.testing.assert_allclose(tile, (weight - weight.min()) / (weight.max() - weight.min()), atol=1e-6)


def test_filters_of_an_mlp_are_28x28_weight_images():
    from cnnlab.models import build_model

    model = build_model("mlp", np.random.default_rng(0))
    figure = plots.filters(model, max_filters=16)
    axes, _colour_bar = figure.axes
    assert "28x28" in axes.get_title()
    assert image_of(axes).shape == (4 * 30, 4 * 30)


def test_feature_maps_one_panel_per_conv_activation_pool_layer(run):
    from cnnlab.nn.layers import Conv2d, MaxPool2d, ReLU

    inputs, labels = run.test_inputs([0, 1])
    figure = plots.feature_maps(run.model, inputs, titles=["first", "second"])
    shown = [layer for layer in run.model if isinstance(layer, (Conv2d, ReLU, MaxPool2d))]
    assert len(figure.axes) == 2 * (1 + len(shown)) == 2 * 7
    assert figure.axes[0].get_title() == "first"
    assert figure.axes[1].get_title().startswith("0 Conv2d\n16 of 32 ch 28x28")
    assert figure.axes[3].get_title().startswith("2 MaxPool2d")
    assert image_of(figure.axes[1]).shape == (4 * 30, 4 * 30)   # 16 channels of 28x28


def test_input_gradient_matches_finite_differences_and_leaves_model_alone(run):
    model = run.model
    inputs, _ = run.test_inputs([3])
    # a flat background makes exact ties in max pooling, where the score has no gradient: noise
    # breaks them, so the finite difference below measures a true derivative
    inputs = (inputs + np.random.default_rng(0).normal(0, 0.05, inputs.shape)).astype(np.float32)
    saved = [parameter.grad.copy() for parameter in model.parameters()]
    gradient, logits = plots.input_gradient(model, inputs)
    assert gradient.shape == inputs.shape
    assert model.requires_input_grad is False
    for parameter, before in zip(model.parameters(), saved):
        np.testing.assert_array_equal(parameter.grad, before)
    # directional derivative along the gradient equals its norm (the score is piecewise linear)
    predicted = int(logits.argmax())
    direction = gradient / np.linalg.norm(gradient)
    step = 1e-3
    model.eval()
    plus = model((inputs + step * direction).astype(np.float32))[0, predicted]
    minus = model((inputs - step * direction).astype(np.float32))[0, predicted]
    np.testing.assert_allclose((plus - minus) / (2 * step), np.linalg.norm(gradient), rtol=0.02)


def test_saliency_shows_each_image_beside_its_gradient(run):
    inputs, labels = run.test_inputs([0, 1, 2])
    figure = plots.saliency(run.model, inputs, labels=labels, classes=run.classes)
    assert len(figure.axes) == 9 + 6  # three panels per image, two with colour bars
    for row in range(3):
        image_axes, magnitude_axes, _ = figure.axes[3 * row: 3 * row + 3]
        assert f"true: {FASHION_CLASSES[labels[row]]}" in image_axes.get_title()
        assert image_of(magnitude_axes).shape == (28, 28)
        assert image_of(magnitude_axes).max() > 0


def test_weight_histograms_show_weights_and_last_gradients(run):
    gradients = run.gradients
    assert set(gradients) >= {"0.weight", "3.weight"}
    figure = plots.weight_histograms(run.model, gradients)
    weights = [name for name, parameter in run.model.named_parameters() if parameter.data.ndim >= 2]
    assert len(figure.axes) == 2 * len(weights)
    for row, name in enumerate(weights):
        weight_axes, grad_axes = figure.axes[2 * row: 2 * row + 2]
        assert weight_axes.get_title().startswith(f"{name} (")
        assert grad_axes.get_title().startswith(f"{name}: last gradient, std")
        assert sum(patch.get_height() for patch in grad_axes.patches) == gradients[name].size


# ----------------------------------------------------------------------------- cnnlab plot

@pytest.mark.slow
def test_cnnlab_plot_writes_a_png_of_every_kind(trained_run, tmp_path, capsys):
    for kind in plots.KINDS:
        out = tmp_path / f"{kind}.png"
        assert cli_main(["plot", kind, str(trained_run), "--out", str(out), "--dpi", "50"]) == 0
        width, height = png_size(out)
        assert width > 100 and height > 50, kind
    assert not list(tmp_path.glob(".*.tmp"))        # atomic writes left no temporary files


def test_cnnlab_plot_default_out_and_index(trained_run, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(trained_run, run_copy)
    assert cli_main(["plot", "saliency", str(run_copy), "--index", "5", "7", "--dpi", "40"]) == 0
    png_size(run_copy / "saliency.png")


def test_cnnlab_plot_list_and_errors(trained_run, capsys):
    from cnnlab.commands.plot import KIND_NAMES

    assert KIND_NAMES == tuple(plots.KINDS)     # the help text names the kinds without matplotlib
    assert cli_main(["plot", "--list"]) == 0
    listing = capsys.readouterr().out
    for kind in plots.KINDS:
        assert kind in listing
    assert cli_main(["plot", "curvs", str(trained_run)]) == 2
    assert "unknown plot kind 'curvs': did you mean 'curves'?" in capsys.readouterr().err
    assert cli_main(["plot", "saliency", str(trained_run), "--index", "99999"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert cli_main(["plot", "curves", str(trained_run), "--out", "x.jpg"]) == 2
    assert "ending in .png" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="did you mean 'filters'"):
        plots.resolve_kind("filter")


def test_every_figure_is_readable_at_the_reports_width(run):
    """No text under 10 pt; the wide figures span the report's column (16 in at 72 dpi)."""
    from matplotlib.text import Text

    wide = {"histogram", "curves", "confusion", "mistakes", "features", "saliency", "weights"}
    for kind in plots.KINDS:
        figure = plots.plot_kind(kind, run)
        figure.canvas.draw()
        sizes = [text.get_fontsize() for text in figure.findobj(Text)
                 if text.get_text().strip() and text.get_visible()]
        assert min(sizes) >= 10, f"{kind}: text of {min(sizes)} pt"
        if kind in wide:
            assert figure.get_figwidth() >= 15, f"{kind}: {figure.get_figwidth()} in wide"


def test_learning_curves_label_both_axes_and_count_epochs(run):
    figure = plots.learning_curves(run.metrics)
    loss_axes, accuracy_axes = figure.axes[:2]
    assert loss_axes.get_ylabel() == "cross-entropy loss"
    assert accuracy_axes.get_ylabel().startswith("accuracy")
    epoch_axes = [child for child in loss_axes.get_children()
                  if type(child).__name__ == "SecondaryAxis"]
    assert len(epoch_axes) == 1 and epoch_axes[0].get_xlabel() == "epoch"
