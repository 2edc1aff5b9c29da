"""Running inside a Jupyter kernel: figures inline, without importing IPython anywhere else.

cnnlab's figures are built without pyplot (:mod:`cnnlab.viz.plots._backend`), so IPython has no
display formatter for them until something imports pyplot; :func:`show_figures_inline` registers
one, so a cell ending in ``plots.filters(model)`` shows the figure. Nothing here imports IPython:
it is looked up in ``sys.modules``, where a kernel has put it.
"""

from __future__ import annotations

import sys

INLINE_DPI = 80


def kernel_shell():
    """The IPython shell of a Jupyter kernel this code runs in, or None (a script, a terminal)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def _png(figure) -> bytes:
    from cnnlab.viz.plots._backend import figure_to_png

    return figure_to_png(figure, dpi=INLINE_DPI)


def show_figures_inline() -> bool:
    """In a kernel, make matplotlib Figures display as PNG; returns whether it is a kernel."""
    shell = kernel_shell()
    if shell is None:
        return False
    from matplotlib.figure import Figure

    formatter = shell.display_formatter.formatters["image/png"]
    try:
        formatter.lookup_by_type(Figure)   # pyplot's inline backend registered its own
    except KeyError:
        formatter.for_type(Figure, _png)
    return True


def show_now(figure) -> bool:
    """Display ``figure`` in the cell's output now (as ``plt.show()`` would); False outside."""
    if not show_figures_inline():
        return False
    from IPython.display import display

    display(figure)
    return True
