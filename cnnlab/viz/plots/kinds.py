"""The figure kinds of ``cnnlab plot KIND RUN`` and of the report, each drawn from a run folder."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.viz.plots import data_figures, model_figures
from cnnlab.viz.plots.runs import Run, to_model_input

@dataclass
class PlotOptions:
    """What ``--images N`` and ``--index I ...`` ask for; None means the kind's default."""

    images: int | None = None
    indices: list[int] = field(default_factory=list)
    evaluation_limit: int | None = None  # test images for confusion and mistakes (None: the run's)


def _chosen_indices(options: PlotOptions, default_count: int) -> list[int]:
    return list(options.indices) or list(range(options.images or default_count))


def _montage(run: Run, options: PlotOptions):
    dataset = run.dataset
    return data_figures.montage(dataset.train_images, dataset.train_labels, run.classes,
                                per_class=options.images or 10)


def _histogram(run: Run, options: PlotOptions):
    images = run.dataset.train_images[: options.images or 1000]
    if run.checkpoint_path.exists():
        images = to_model_input(images, run.meta)
    return data_figures.pixel_histogram(images)


def _curves(run: Run, options: PlotOptions):
    if not run.has_history:
        raise CheckpointError(f"{run.path.name} holds weights only, no training history")
    return data_figures.learning_curves(run.metrics)


def _evaluation(run: Run, options: PlotOptions):
    """The model on the test images the run itself tested on: all of them, as summary.json and
    ``cnnlab evaluate`` count, or the first ``limit_test``; ``evaluation_limit`` caps it."""
    limits = [int(run.config["limit_test"])] if run.config.get("limit_test") else []
    limits += [options.evaluation_limit] if options.evaluation_limit else []
    return run.evaluate(min(limits) if limits else None)


def _confusion(run: Run, options: PlotOptions):
    evaluation = _evaluation(run, options)
    matrix = data_figures.confusion_counts(evaluation.labels, evaluation.predictions, len(run.classes))
    return data_figures.confusion_matrix(matrix, run.classes)


def _mistakes(run: Run, options: PlotOptions):
    evaluation = _evaluation(run, options)
    return data_figures.mistakes(evaluation.images, evaluation.labels, evaluation.probabilities,
                                 run.classes, k=options.images or 8)


def _filters(run: Run, options: PlotOptions):
    return model_figures.filters(run.model, max_filters=options.images or 64)


def _features(run: Run, options: PlotOptions):
    indices = _chosen_indices(options, 2)
    inputs, labels = run.test_inputs(indices)
    titles = [f"test image {index}: {run.classes[int(label)]}"
              for index, label in zip(indices, labels)]
    return model_figures.feature_maps(run.model, inputs, titles=titles)


def _saliency(run: Run, options: PlotOptions):
    inputs, labels = run.test_inputs(_chosen_indices(options, 4))
    return model_figures.saliency(run.model, inputs, labels=labels, classes=run.classes)


def _weights(run: Run, options: PlotOptions):
    return model_figures.weight_histograms(run.model, run.gradients)


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    draw: Callable


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("montage", "training samples, one row per class (--images: per class, default 10)", _montage),
    Kind("histogram", "histogram of the pixel values the network sees (--images: how many, default 1000)", _histogram),
    Kind("curves", "loss and accuracy per step and per epoch: train, test, validation", _curves),
    Kind("confusion", "confusion matrix and per-class accuracy (the run's test images, as cnnlab evaluate)", _confusion),
    Kind("mistakes", "the most confident mistakes with their probabilities (--images: how many, default 8)", _mistakes),
    Kind("filters", "conv filters as image grids; an MLP's first-layer weights as 28x28 images", _filters),
    Kind("features", "feature maps after every conv, activation and pool layer (--index: test images)", _features),
    Kind("saliency", "gradient of the predicted logit w.r.t. the input pixels (--index: test images)", _saliency),
    Kind("weights", "histograms of each layer's weights and their last gradients", _weights),
)}


def resolve_kind(name: str) -> Kind:
    """The kind called ``name``; ConfigError naming the closest kind otherwise."""
    if name in KINDS:
        return KINDS[name]
    close = difflib.get_close_matches(name, KINDS, n=1, cutoff=0.3)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"unknown plot kind '{name}': {hint}choose one of {', '.join(KINDS)}")


def plot_kind(name: str, run: Run | str, options: PlotOptions | None = None):
    """The Figure of kind ``name`` (see :data:`KINDS`) for the run folder ``run``."""
    kind = resolve_kind(name)
    run = run if isinstance(run, Run) else Run(run)
    return kind.draw(run, options or PlotOptions())
