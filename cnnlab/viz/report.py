"""The report of a run: ONE self-contained HTML file with every figure of :mod:`cnnlab.viz.plots`.

``write_report(run_dir)`` writes ``RUN/report.html``: the run summary, then samples, learning
curves, confusion matrix, mistakes, filters, feature maps, saliency, weight histograms and the
explorer (cnnlab/viz/explorer: click a pixel, see what the layer computed there). Images are
inline PNG data URIs, the scripts and the style sheet are inline, so the file opens offline in any
browser and can be mailed or archived alone. While the run goes on, a live section polls the
run folder's ``live.js`` (rewritten by the trainer every few seconds) and redraws the curves,
filters and feature maps in place: the page never reloads, the reader keeps their place.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.utils.fileio import atomic_write

REPORT_NAME = "report.html"
REPORT_DPI = 72


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    kinds: tuple[str, ...]
    text: str


SECTIONS = (
    Section("samples", "Samples", ("montage", "histogram"),
            "Training images, one row per class, and the histogram of the pixel values the "
            "network sees (after normalization)."),
    Section("curves", "Learning curves", ("curves",),
            "Loss and accuracy: thin line per logged training step, dots per epoch for the "
            "train, validation and test sets. Dotted lines mark the ends of epochs."),
    Section("confusion", "Confusion matrix", ("confusion",),
            "Rows are the true classes, columns the predicted ones; the bars give each class's "
            "accuracy (the share of its images classified correctly)."),
    Section("mistakes", "Most confident mistakes", ("mistakes",),
            "Test images the network got wrong with the highest probability, with the "
            "probability it gave every class (green: true class, red: predicted)."),
    Section("filters", "Filters", ("filters",),
            "The learned convolution kernels (deeper layers: mean over input channels), or for "
            "a fully connected network the first layer's weights as images."),
    Section("features", "Feature maps", ("features",),
            "What each conv, activation and pool layer outputs for a few test images "
            "(each channel scaled to its own range)."),
    Section("saliency", "Saliency", ("saliency",),
            "The gradient of the predicted class's logit with respect to the input pixels: "
            "the pixels whose change would move the score the most."),
    Section("weights", "Weights and gradients", ("weights",),
            "Histograms of each layer's weights and of their gradients at the last training step."),
)

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
header { background: #1f3b5c; color: white; padding: 16px 32px; }
header h1 { margin: 0; font-size: 24px; }
header p { margin: 4px 0 0; opacity: 0.85; }
nav { padding: 8px 32px; background: #e8edf3; font-size: 14px; }
nav a { margin-right: 14px; color: #1f3b5c; }
main { padding: 8px 32px 32px; max-width: 1300px; }
section { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 4px 20px 16px;
          margin: 16px 0; }
h2 { font-size: 20px; border-bottom: 1px solid #eee; padding-bottom: 4px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
th { background: #f2f2f2; }
.status-running { color: #b35900; font-weight: bold; }
.status-finished { color: #1a7f37; font-weight: bold; }
.missing { color: #a00; font-style: italic; }
.grid { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
"""


def _escape(value) -> str:
    return html.escape(str(value), quote=True)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _table(rows) -> str:
    cells = "".join(f"<tr><th>{_escape(key)}</th><td>{_escape(_format(value))}</td></tr>"
                    for key, value in rows)
    return f"<table>{cells}</table>"


def _summary_rows(run) -> list[tuple[str, object]]:
    summary = run.summary or {}
    config = run.config
    epochs = [record for record in run.metrics if record.get("kind") == "epoch"]
    steps = [record for record in run.metrics if record.get("kind") == "step"]
    last_epoch = epochs[-1] if epochs else {}
    rows = [
        ("model", summary.get("model", config.get("model"))),
        ("dataset", summary.get("dataset", config.get("dataset"))),
        ("epochs done", f"{len(epochs)} of {summary.get('epochs') or config.get('epochs') or '?'}"
         if run.has_history else None),
        ("test accuracy", summary.get("test_accuracy", last_epoch.get("test_accuracy"))),
        ("test loss", summary.get("test_loss", last_epoch.get("test_loss"))),
        ("train accuracy (last epoch)", last_epoch.get("train_accuracy")),
        ("validation accuracy", last_epoch.get("val_accuracy")),
        ("training time (s)", summary.get("train_seconds",
                                          sum(record.get("seconds", 0) for record in epochs) or None)),
        ("images per second", summary.get("images_per_second",
                                          steps[-1].get("images_per_second") if steps else None)),
        ("seed", summary.get("seed", config.get("seed"))),
    ]
    return [(key, value) for key, value in rows if value is not None]


def _summary_section(run) -> str:
    if run.finished:
        status = '<span class="status-finished">finished</span>'
    else:
        status = ('<span class="status-running">running</span> (the live section below '
                  "follows it)")
    parts = [f'<section id="summary"><h2>Run summary</h2><p>Status: {status}</p><div class="grid">',
             "<div><h3>Results</h3>" + _table(_summary_rows(run)) + "</div>"]
    if run.config:
        parts.append("<div><h3>Config</h3>" + _table(run.config.items()) + "</div>")
    versions = (run.summary or {}).get("versions")
    if isinstance(versions, dict) and versions:
        parts.append("<div><h3>Versions</h3>" + _table(versions.items()) + "</div>")
    parts.append("</div></section>")
    return "".join(parts)


def _figure_html(kind: str, run, options) -> str:
    from cnnlab.viz.plots import figure_to_png, plot_kind

    try:
        figure = plot_kind(kind, run, options)
    except CnnlabError as error:
        return f'<p class="missing">{_escape(kind)}: not available yet ({_escape(error)})</p>'
    data = base64.b64encode(figure_to_png(figure, dpi=REPORT_DPI)).decode("ascii")
    return f'<img alt="{_escape(kind)}" src="data:image/png;base64,{data}">'


def _explorer_html(run) -> str:
    from cnnlab.viz.explorer.data import run_payload
    from cnnlab.viz.explorer.page import explorer_section

    try:
        return explorer_section(run_payload(run))
    except CnnlabError as error:
        return (f'<section id="explorer"><h2>Explorer</h2><p class="missing">not available yet '
                f"({_escape(error)})</p></section>")


def build_report(run_dir, out: str | os.PathLike | None = None) -> str:
    """The report of the run folder ``run_dir`` (or a ``plots.Run``) as one HTML string (see
    :func:`write_report`); ``out``, where it will be written, places the live view's link to
    ``RUN/live.js``."""
    from cnnlab.viz.explorer.page import live_section, live_src_for
    from cnnlab.viz.plots import PlotOptions, Run, require_matplotlib

    require_matplotlib()
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    options = PlotOptions()
    navigation = " ".join(f'<a href="#{section.anchor}">{_escape(section.title)}</a>'
                          for section in SECTIONS) + ' <a href="#explorer">Explorer</a>'
    body = [_summary_section(run)]
    if not run.finished:
        page = Path(out) if out is not None else run.path / REPORT_NAME
        body.append(live_section(live_src_for(run.path, page), finished=False))
    for section in SECTIONS:
        figures = "".join(_figure_html(kind, run, options) for kind in section.kinds)
        body.append(f'<section id="{section.anchor}"><h2>{_escape(section.title)}</h2>'
                    f"<p>{_escape(section.text)}</p>{figures}</section>")
    body.append(_explorer_html(run))
    title = f"cnnlab report: {run.path.name}"
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_escape(title)}</h1><p>{_escape(run.path.resolve())} &middot; "
        f"generated {generated}</p></header><nav>{navigation}</nav>"
        f"<main>{''.join(body)}</main></body></html>\n"
    )


def default_report_path(source: str | os.PathLike) -> Path:
    """``RUN/report.html`` for a run folder, ``NAME.report.html`` beside a weights file."""
    source = Path(source)
    return source.with_suffix(".report.html") if source.is_file() else source / REPORT_NAME


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the self-contained HTML report of ``run_dir``, atomically.

    Args:
        run_dir: a run folder made by ``cnnlab train``, or a ``plots.Run`` (a
            ``plots.WeightsRun`` for a weights file without a run folder).
        out: the HTML file to write (default :func:`default_report_path`).

    Returns:
        the path written.

    Raises:
        CnnlabError: matplotlib is not installed (``pip install 'cnnlab[plot]'``) or the run
            folder does not exist. A figure whose inputs are not there yet (no checkpoint, the
            dataset not on this machine) becomes a note in the page instead.
    """
    path = Path(out) if out is not None else default_report_path(getattr(run_dir, "path", run_dir))
    document = build_report(run_dir, path)
    with atomic_write(path, "wb") as stream:
        stream.write(document.encode("utf-8"))
    return path
