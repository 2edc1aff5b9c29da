"""Figures of the data and of the results: samples, pixel values, curves, confusion, mistakes.

Every function returns a :class:`matplotlib.figure.Figure` (display it in a notebook, or save it
with :func:`cnnlab.viz.plots.save_png`). Matplotlib is imported when a figure is drawn, not before.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.viz.plots._backend import FULL_WIDTH, SMALL_FONT, TITLE_FONT, new_figure, remove_unused
from cnnlab.viz.plots.tiling import tile, tile_channels

GRAY = "gray"


def as_hw(images: np.ndarray) -> np.ndarray:
    """Images (N, H, W) or (N, 1, H, W) -> (N, H, W) float32; colour (N, 3, H, W) stays
    (N, 3, H, W); ShapeError otherwise."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 and not (images.ndim == 4 and images.shape[1] == 3):
        raise ShapeError(f"expected grayscale images (N, H, W) or (N, 1, H, W), or colour "
                         f"images (N, 3, H, W), got {images.shape}")
    return images.astype(np.float32)


def show_image(axes, image: np.ndarray, **options) -> None:
    """``imshow`` of one (H, W) grayscale or (3, H, W) colour image; colour is scaled from
    uint8 (0..255), or from its own min..max when it is a normalised float input."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 2:
        axes.imshow(image, cmap=GRAY, **options)
        return
    axes.imshow(_as_rgb(image.transpose(1, 2, 0)), **options)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) values -> [0, 1]: /255 for pixel values, else the image's own min..max."""
    low, high = float(image.min(initial=0)), float(image.max(initial=0))
    if low >= 0 and high > 1:
        return np.clip(image / 255.0, 0, 1)
    return (image - low) / (high - low) if high > low else np.full_like(image, 0.5)


def samples_per_class(labels: np.ndarray, num_classes: int, per_class: int) -> list[np.ndarray]:
    """For each class, the indices of its first ``per_class`` samples (fewer if it has fewer)."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == index)[:per_class] for index in range(num_classes)]


def montage(images, labels, classes: Sequence[str], per_class: int = 10):
    """Training samples, one row per class: the lecture's ``montage_plot``.

    Each image is padded by 1 pixel of 0 (black), then the images are tiled, ``per_class``
    per row, one row per class, and the rows are labelled with the class names.

    Args:
        images: (N, H, W) uint8, (N, 1, H, W) float, or colour (N, 3, H, W) images.
        labels: (N,) integer class indices.
        classes: the class names, ``classes[i]`` for label i.
        per_class: images shown per class (the first ones of that class in ``images``).

    Shape:
        the shown image is (len(classes) * (H + 2), per_class * (W + 2)).
    """
    images = as_hw(images)
    height, width = images.shape[-2:]
    rows = []
    for indices in samples_per_class(labels, len(classes), per_class):
        row = np.zeros((per_class,) + images.shape[1:], dtype=np.float32)
        row[: len(indices)] = images[indices]
        rows.append(row)
    grid = tile_channels(np.concatenate(rows), columns=per_class, pad=1,
                         value=float(images.min(initial=0)))
    side = min(0.8, (FULL_WIDTH - 2.0) / per_class)  # inches per image
    figure = new_figure(side * per_class + 2.0, side * len(classes) + 0.7)
    axes = figure.add_subplot()
    if grid.ndim == 3:
        axes.imshow(_as_rgb(grid), interpolation="nearest")
    else:
        axes.imshow(grid, cmap=GRAY, interpolation="nearest")
    axes.set_yticks([(index + 0.5) * (height + 2) for index in range(len(classes))])
    axes.set_yticklabels(list(classes), fontsize=TITLE_FONT)
    axes.set_xticks([])
    axes.set_title(f"Training samples, {per_class} per class", fontsize=TITLE_FONT)
    return figure


def pixel_histogram(images, bins: int = 50):
    """Histogram of all pixel values of ``images`` (the lecture's ``plt.hist(x.flatten())``).

    The count axis is logarithmic: MNIST-style images are mostly background, whose bar would
    otherwise flatten every other bar.

    Args:
        images: any array of pixel values, e.g. (N, H, W) uint8 or (N, 1, H, W) float.
        bins: number of bars.
    """
    values = np.asarray(images, dtype=np.float32).ravel()
    figure = new_figure(FULL_WIDTH, 4.2)
    axes = figure.add_subplot()
    axes.hist(values, bins=bins, color="#4C72B0")
    axes.set_yscale("log")
    axes.set_xlabel("pixel value")
    axes.set_ylabel("count (log scale)")
    axes.set_title(
        f"Pixel values of {len(np.asarray(images))} images: "
        f"mean {values.mean():.3g}, std {values.std():.3g}"
    )
    return figure


def _series(records: Iterable[dict], key: str) -> tuple[list, list]:
    steps, values = [], []
    for record in records:
        if record.get(key) is not None:
            steps.append(record["step"])
            values.append(record[key])
    return steps, values


def learning_curves(metrics: Sequence[dict]):
    """Loss and accuracy against the step: per logged step (train) and per epoch (train, test,
    and validation if the run kept a validation split).

    Args:
        metrics: the records of a run's ``metrics.jsonl`` (see :func:`cnnlab.viz.plots.read_metrics`):
            ``{"kind": "step", "step", "loss", "accuracy", ...}`` and
            ``{"kind": "epoch", "epoch", "step", "train_loss", "test_accuracy", ...}``.

    The figure has two panels, "Loss" and "Accuracy"; dotted vertical lines mark epoch ends.
    """
    steps = [record for record in metrics if record.get("kind") == "step"]
    epochs = [record for record in metrics if record.get("kind") == "epoch"]
    figure = new_figure(FULL_WIDTH, 5.2)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    y_labels = {"loss": "cross-entropy loss", "accuracy": "accuracy (share correct)"}
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        x, y = _series(steps, name)
        if x:
            axes.plot(x, y, color="#9DB4D6", linewidth=1, label=f"train {name} (per step)")
        for split, color in (("train", "#1F4E99"), ("val", "#2CA02C"), ("test", "#D62728")):
            x, y = _series(epochs, f"{split}_{name}")
            if x:
                axes.plot(x, y, "o-", color=color, label=f"{split} {name} (per epoch)")
        for record in epochs:
            axes.axvline(record["step"], color="#BBBBBB", linestyle=":", linewidth=1)
        axes.set_xlabel("step")
        axes.set_ylabel(y_labels[name])
        axes.set_title(name.capitalize())
        axes.grid(alpha=0.3)
        _epoch_axis(axes, epochs)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=SMALL_FONT)
        else:
            axes.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=axes.transAxes)
    return figure


def _epoch_axis(axes, epochs: Sequence[dict]) -> None:
    """A second x axis on top counting epochs: epoch e ends at the step of its record."""
    ends = sorted((record["step"], record["epoch"]) for record in epochs
                  if record.get("step") is not None and record.get("epoch") is not None)
    if not ends or ends[0][0] <= 0:
        return
    steps = np.array([0.0] + [float(step) for step, _ in ends])
    numbers = np.array([0.0] + [float(epoch) for _, epoch in ends])
    if np.any(np.diff(steps) <= 0) or np.any(np.diff(numbers) <= 0):
        return
    # Beyond the last epoch end, extend at the last epoch's pace.
    pace = (steps[-1] - steps[-2]) / (numbers[-1] - numbers[-2])

    def to_epoch(x):
        x = np.asarray(x, dtype=float)
        return np.where(x <= steps[-1], np.interp(x, steps, numbers), numbers[-1] + (x - steps[-1]) / pace)

    def to_step(e):
        e = np.asarray(e, dtype=float)
        return np.where(e <= numbers[-1], np.interp(e, numbers, steps), steps[-1] + (e - numbers[-1]) * pace)

    top = axes.secondary_xaxis("top", functions=(to_epoch, to_step))
    top.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    top.xaxis.set_major_locator(MaxNLocator(integer=True))


def confusion_counts(labels, predictions, num_classes: int) -> np.ndarray:
    """Confusion matrix: entry (i, j) counts the images of true class i predicted as class j.

    Shape:
        - labels, predictions: (N,) integers in [0, num_classes)
        - output: (num_classes, num_classes) int64
    """
    from cnnlab.training.evaluation import confusion_matrix as count_pairs

    return count_pairs(labels, predictions, num_classes)


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class: diagonal / row sum (NaN for a class with no images)."""
    from cnnlab.training.evaluation import per_class_accuracy as recall

    return recall(np.asarray(matrix, dtype=np.float64))


def confusion_matrix(matrix, classes: Sequence[str]):
    """The confusion matrix (rows: true class, columns: predicted) and per-class accuracy bars.

    Args:
        matrix: (C, C) counts, e.g. from :func:`confusion_counts`.
        classes: the C class names.
    """
    matrix = np.asarray(matrix)
    if matrix.shape != (len(classes), len(classes)):
        raise ShapeError(f"confusion matrix of shape {matrix.shape} does not fit {len(classes)} classes")
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    recall = per_class_accuracy(matrix)
    figure = new_figure(FULL_WIDTH, 7.4)
    matrix_axes, bar_axes = figure.subplots(1, 2, width_ratios=[1.25, 1])
    matrix_axes.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(classes))
    matrix_axes.set_xticks(ticks, list(classes), rotation=45, ha="right")
    matrix_axes.set_yticks(ticks, list(classes))
    matrix_axes.set_xlabel("predicted class")
    matrix_axes.set_ylabel("true class")
    matrix_axes.set_title(f"Confusion matrix ({total} test images, accuracy {accuracy:.1%})")
    if len(classes) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        count_font = 12 if len(classes) <= 12 else 8
        for (row, column), count in np.ndenumerate(matrix):
            matrix_axes.text(column, row, str(int(count)), ha="center", va="center",
                             fontsize=count_font, color="white" if count > threshold else "black")
    bar_axes.barh(ticks, np.nan_to_num(recall), color="#4C72B0")
    bar_axes.set_yticks(ticks, list(classes))
    bar_axes.invert_yaxis()
    bar_axes.set_xlim(0, 1)
    bar_axes.set_xlabel("accuracy (correct / images of the class)")
    bar_axes.set_title("Per-class accuracy")
    for row, value in enumerate(recall):
        if np.isnan(value):
            bar_axes.text(0.01, row, "no images", va="center", fontsize=SMALL_FONT)
        elif value >= 0.2:  # inside the bar's end, so "99.0%" never crosses the frame
            bar_axes.text(value - 0.01, row, f"{value:.1%}", va="center", ha="right",
                          fontsize=SMALL_FONT, color="white", fontweight="bold")
        else:
            bar_axes.text(value + 0.01, row, f"{value:.1%}", va="center", fontsize=SMALL_FONT)
    return figure


def most_confident_mistakes(labels, probabilities, k: int) -> np.ndarray:
    """Indices of the ``k`` wrongly classified images whose wrong prediction had the highest
    probability, most confident first."""
    probabilities = np.asarray(probabilities)
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != np.asarray(labels))
    confidence = probabilities[wrong, predictions[wrong]]
    # Stable sort: ties keep test-set order, so the figure is reproducible.
    return wrong[np.argsort(-confidence, kind="stable")[:k]]


def mistakes(images, labels, probabilities, classes: Sequence[str], k: int = 8):
    """The ``k`` most confident mistakes: each image with its true and predicted class, beside
    the bars of the probability the network gave every class.

    Args:
        images: (N, H, W) or (N, 1, H, W) test images.
        labels: (N,) true classes.
        probabilities: (N, C) softmax outputs of the network.
        classes: the C class names.
        k: mistakes shown (fewer if the network made fewer).

    One row per mistake: an image panel titled "true: ... / predicted: ... (p)", and a bar panel.
    """
    images = as_hw(images)
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(images), len(classes)):
        raise ShapeError(
            f"probabilities of shape {probabilities.shape} do not fit {len(images)} images "
            f"and {len(classes)} classes"
        )
    chosen = most_confident_mistakes(labels, probabilities, k)
    if len(chosen) == 0:
        figure = new_figure(6, 1.5)
        axes = figure.add_subplot()
        axes.axis("off")
        axes.text(0.5, 0.5, f"no mistakes among {len(images)} images", ha="center", va="center")
        return figure
    per_row = 2  # mistakes side by side: each an image and its bars
    rows = -(-len(chosen) // per_row)
    row_height = max(2.8, 0.28 * len(classes) + 0.6)  # room for every class name
    height = row_height * rows + 0.3
    figure = new_figure(FULL_WIDTH, height, layout=None)
    grid = figure.subplots(rows, 2 * per_row, width_ratios=[1, 2.6] * per_row, squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.98, top=1 - 0.55 / height, bottom=0.35 / height,
                           wspace=0.45, hspace=0.55)
    remove_unused(figure, grid, 2 * len(chosen))
    panels = grid.ravel()
    ticks = np.arange(len(classes))
    for position, index in enumerate(chosen):
        image_axes, bar_axes = panels[2 * position], panels[2 * position + 1]
        truth, predicted = int(labels[index]), int(probabilities[index].argmax())
        show_image(image_axes, images[index])
        image_axes.set_xticks([])
        image_axes.set_yticks([])
        image_axes.set_title(
            f"true: {classes[truth]}\npredicted: {classes[predicted]} "
            f"({probabilities[index, predicted]:.2f})", fontsize=SMALL_FONT + 1,
        )
        colors = ["#BBBBBB"] * len(classes)
        colors[truth] = "#2CA02C"
        colors[predicted] = "#D62728"
        bar_axes.barh(ticks, probabilities[index], height=0.8, color=colors)
        bar_axes.set_yticks(ticks, list(classes), fontsize=SMALL_FONT)
        bar_axes.invert_yaxis()
        bar_axes.set_xlim(0, 1)
        bar_axes.tick_params(axis="x", labelsize=SMALL_FONT)
        for label in (truth, predicted):  # the two that matter, even where the bar is too short
            value = float(probabilities[index, label])
            inside = value > 0.8
            bar_axes.text(value - 0.02 if inside else value + 0.02, label, f"{value:.2f}",
                          va="center", ha="right" if inside else "left", fontsize=SMALL_FONT,
                          color="white" if inside else colors[label], fontweight="bold")
        bar_axes.set_title(f"test image {index}: probability of each class", fontsize=SMALL_FONT + 1)
    return figure
