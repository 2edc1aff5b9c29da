"""Matplotlib, imported only when a figure is drawn, and never through pyplot.

Figures are built from :class:`matplotlib.figure.Figure` directly, so nothing needs
a display or a GUI backend, and figures are garbage collected like any object
(pyplot keeps a global list of open figures). Saving renders with the Agg canvas.
"""

from __future__ import annotations

import io
import os

from cnnlab.errors import CnnlabError
from cnnlab.utils.fileio import atomic_write

INSTALL_HINT = "pip install 'cnnlab[plot]'"

# Pixels per inch for saved figures: small files, quick to render, still sharp on a screen.
DEFAULT_DPI = 80
# The width of a full-width figure: the report's content column (about 1,150 px at its 72 dpi),
# so no figure is shrunk in the page and 10-12 pt text stays 10-12 px there.
FULL_WIDTH = 16.0
# Font sizes (points) of the smallest text a figure draws: tick labels, counts, panel titles.
SMALL_FONT = 10
TITLE_FONT = 12


def require_matplotlib():
    """Import matplotlib or raise a CnnlabError saying how to install it."""
    try:
        import matplotlib
    except ImportError as error:
        raise CnnlabError(f"figures need matplotlib, which is not installed: {INSTALL_HINT}") from error
    return matplotlib


def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A new Figure of ``width`` x ``height`` inches, attached to an Agg canvas.

    ``layout=None`` suits grids of many panels: the caller places them with
    ``subplots_adjust``, which renders several times faster than constrained layout.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cnnlab.viz.notebook import show_figures_inline

    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    show_figures_inline()   # in a Jupyter kernel, a cell ending in a figure shows it
    return figure


def remove_unused(figure, grid, used: int) -> None:
    """Remove the axes of ``grid`` (a 2-D array of panels, filled row by row) past ``used``."""
    for axes in grid.ravel()[used:]:
        figure.delaxes(axes)


def figure_to_png(figure, dpi: int = DEFAULT_DPI) -> bytes:
    """Render ``figure`` as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def save_png(figure, path: str | os.PathLike, dpi: int = DEFAULT_DPI) -> None:
    """Write ``figure`` to ``path`` as PNG, atomically."""
    data = figure_to_png(figure, dpi=dpi)
    with atomic_write(path, "wb") as stream:
        stream.write(data)
