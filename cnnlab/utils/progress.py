"""A small progress bar (no dependency), used by training and downloads.

Where it draws decides how:

- a terminal: one line redrawn in place (``\\r``), as wide as the terminal
  (:func:`shutil.get_terminal_size`, read at every redraw so a resized window is followed).
  Parts that do not fit are left out, least useful first (the rate, the bar itself, the
  time), so an 80- or 40-column terminal never wraps it into a pile of lines;
- a Jupyter notebook (ipykernel's stream, which is not a terminal): one output line updated
  in place through an IPython display handle, or ``\\r`` where IPython is not importable;
- a file or a pipe (CI logs): a plain line at most every ``log_every`` seconds.

Numbers keep their width (the count padded to the total's digits, times as mm:ss, losses with
four decimals), so the line does not jitter as it redraws.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import TextIO

MIN_BAR = 10         # the narrowest bar worth drawing, brackets included
TERMINAL_INTERVAL = 0.1
NOTEBOOK_INTERVAL = 0.25   # each notebook update is a message to the front end


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def _format_field(key: str, value) -> str:
    if isinstance(value, float):
        return f"{key} {value:.4f}" if abs(value) < 1e4 else f"{key} {value:.3e}"
    return f"{key} {value}"


def _is_notebook_stream(stream) -> bool:
    """ipykernel's OutStream: a Jupyter (or VS Code, Colab) cell's output, not a terminal."""
    return type(stream).__module__.split(".")[0] == "ipykernel"


class _NotebookLine:
    """One output line of a notebook cell, replaced on every draw (IPython display handle)."""

    def __init__(self):
        from IPython.display import display

        self._handle = display({"text/plain": ""}, raw=True, display_id=True)

    def show(self, line: str) -> None:
        self._handle.update({"text/plain": line}, raw=True)


class ProgressBar:
    """``bar = ProgressBar(total, "epoch 1/3")``; ``bar.update(n, loss=0.3)``; ``bar.close()``.

    Args:
        total: number of units (batches, bytes) expected, or None if unknown.
        description: text shown before the bar.
        unit: name of a unit, shown in the rate when ``show_rate`` is true.
        stream: where to draw (default: standard error).
        enabled: False turns every call into a no-op.
        width: the widest bar, brackets excluded (it narrows to fit the terminal).
        log_every: seconds between lines when the stream is a file or a pipe.
        columns: the width to fit (default: the terminal's, on a terminal; none elsewhere).
    """

    def __init__(self, total: int | None, description: str = "", unit: str = "it",
                 stream: TextIO | None = None, enabled: bool = True, width: int = 24,
                 log_every: float = 10.0, show_rate: bool = True, columns: int | None = None):
        self.total = total
        self.description = description
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.log_every = log_every
        self.show_rate = show_rate
        self.columns = columns
        self.count = 0
        self.fields: dict[str, object] = {}
        self.start = time.perf_counter()
        self._last_draw = -math.inf   # the first update draws, whatever the clock reads
        self._drawn_count = -1   # the count shown by the last line drawn
        self._notebook = _is_notebook_stream(self.stream)
        self._terminal = not self._notebook and bool(
            getattr(self.stream, "isatty", lambda: False)())
        self._notebook_line: _NotebookLine | None = None
        self._closed = False

    @property
    def _in_place(self) -> bool:
        return self._terminal or self._notebook

    def update(self, n: int = 1, **fields) -> None:
        """Advance by ``n`` units and set the fields shown after the bar (loss=..., acc=...)."""
        self.count += n
        self.fields.update(fields)
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.total is not None and self.count >= self.total
        interval = (TERMINAL_INTERVAL if self._terminal else
                    NOTEBOOK_INTERVAL if self._notebook else self.log_every)
        if finished or now - self._last_draw >= interval:
            self._last_draw = now
            self._draw(now)

    # ------------------------------------------------------------------ the line

    def _available_columns(self) -> int | None:
        if self.columns is not None:
            return self.columns
        if self._terminal:
            return shutil.get_terminal_size((80, 24)).columns
        return None

    def _parts(self, now: float) -> tuple[list[tuple[int, str]], float | None]:
        """(drop order, text) of every part but the bar, and the bar's fraction (None: no bar).

        Drop order: parts with a higher number are left out first when the line is too wide.
        """
        elapsed = now - self.start
        parts: list[tuple[int, str]] = []
        if self.description:
            parts.append((0, self.description))
        fraction = None
        if self.total:
            fraction = min(1.0, self.count / self.total)
            digits = len(str(self.total))
            parts.append((0, f"{self.count:>{digits}}/{self.total}"))
            # one slot, the same width throughout: the time left, then the time it took
            if fraction < 1:
                remaining = elapsed * (1 - fraction) / fraction if fraction > 0 else None
                parts.append((3, f"eta  {format_seconds(remaining) if remaining is not None else '--:--'}"))
            else:
                parts.append((3, f"took {format_seconds(elapsed)}"))
        else:
            parts.append((0, f"{self.count} {self.unit}"))
            parts.append((3, format_seconds(elapsed)))
        if self.show_rate and elapsed > 0:
            parts.append((5, f"{self.count / elapsed:>7,.0f} {self.unit}/s"))
        for index, (key, value) in enumerate(self.fields.items()):
            parts.append((1 if index == 0 else 2, _format_field(key, value)))
        return parts, fraction

    def _line(self, now: float) -> str:
        parts, fraction = self._parts(now)
        show_bar = fraction is not None
        bar_width = self.width
        columns = self._available_columns()
        if columns is not None:
            limit = columns - 1   # writing the last column makes some terminals wrap
            # least useful first: the rate, the bar, the time, then the fields
            for dropping in (None, 5, "bar", 3, 2, 1):
                if dropping == "bar":
                    show_bar = False
                elif dropping is not None:
                    parts = [(rank, text) for rank, text in parts if rank != dropping]
                text_width = len("  ".join(text for _, text in parts))
                if text_width + (4 + MIN_BAR if show_bar else 0) <= limit:
                    break
            bar_width = min(self.width, limit - text_width - 4)
        texts = [text for _, text in parts]
        if show_bar and fraction is not None:
            filled = int(round(fraction * bar_width))
            texts.insert(1 if self.description else 0,
                         f"[{'#' * filled}{'.' * (bar_width - filled)}]")
        line = "  ".join(texts)
        if columns is not None and len(line) > columns - 1:
            line = line[:max(1, columns - 2)] + "~"
        return line

    def _draw(self, now: float) -> None:
        self._drawn_count = self.count
        line = self._line(now)
        if self._notebook:
            self._show_in_notebook(line)
            return
        if self._terminal:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _show_in_notebook(self, line: str) -> None:
        if self._notebook_line is None:
            try:
                self._notebook_line = _NotebookLine()
            except ImportError:   # ipykernel without IPython.display: \r redraws the line
                self._notebook = False
                self._terminal = True
                self._draw(time.perf_counter())
                return
        self._notebook_line.show(line)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._in_place:
            self._draw(now)
            if self._terminal:
                self.stream.write("\n")
        elif self._drawn_count != self.count:
            self.stream.write(self._line(now) + "\n")
        self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
