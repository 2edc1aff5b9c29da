"""Figures to see inside a network and its training (matplotlib, imported only when drawing).

Every figure function returns a :class:`matplotlib.figure.Figure`, ready for a notebook or
for :func:`save_png`. Figures never go through pyplot, so nothing needs a display.

Data and results (:mod:`cnnlab.viz.plots.data_figures`):
    montage, pixel_histogram, learning_curves, confusion_matrix, mistakes
Inside the network (:mod:`cnnlab.viz.plots.model_figures`):
    filters, feature_maps, saliency (input_gradient), weight_histograms
Loading a run folder (:mod:`cnnlab.viz.plots.runs`):
    Run, read_metrics, predict_probabilities
Drawing the figure of each ``cnnlab plot`` kind from a run (:mod:`cnnlab.viz.plots.kinds`):
    KINDS, plot_kind
"""

from cnnlab.viz.plots._backend import DEFAULT_DPI, figure_to_png, require_matplotlib, save_png
from cnnlab.viz.plots.data_figures import (
    confusion_counts,
    confusion_matrix,
    learning_curves,
    mistakes,
    montage,
    most_confident_mistakes,
    per_class_accuracy,
    pixel_histogram,
)
from cnnlab.viz.plots.kinds import KINDS, PlotOptions, plot_kind, resolve_kind
from cnnlab.viz.plots.model_figures import (
    feature_maps,
    filters,
    input_gradient,
    layer_outputs,
    saliency,
    weight_histograms,
)
from cnnlab.viz.plots.runs import Evaluation, Run, predict_probabilities, read_metrics, to_model_input
from cnnlab.viz.plots.tiling import tile

__all__ = [
    "DEFAULT_DPI", "figure_to_png", "require_matplotlib", "save_png",
    "confusion_counts", "confusion_matrix", "learning_curves", "mistakes", "montage",
    "most_confident_mistakes", "per_class_accuracy", "pixel_histogram",
    "KINDS", "PlotOptions", "plot_kind", "resolve_kind",
    "feature_maps", "filters", "input_gradient", "layer_outputs", "saliency", "weight_histograms",
    "Evaluation", "Run", "predict_probabilities", "read_metrics", "to_model_input", "tile",
]
