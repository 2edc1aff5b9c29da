"""A small terminal progress bar (no dependency), used by training and downloads.

On a terminal it redraws one line in place; when the output is a file or a pipe
(CI logs), it prints a plain line at most every ``log_every`` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class ProgressBar:
    """``bar = ProgressBar(total, "epoch 1/3")``; ``bar.update(n, loss=0.3)``; ``bar.close()``.

    Args:
        total: number of units (batches, bytes) expected, or None if unknown.
        description: text shown before the bar.
        unit: name of a unit, shown in the rate when ``show_rate`` is true.
        stream: where to draw (default: standard error).
        enabled: False turns every call into a no-op.
        log_every: seconds between lines when the stream is not a terminal.
    """

    def __init__(self, total: int | None, description: str = "", unit: str = "it",
                 stream: TextIO | None = None, enabled: bool = True, width: int = 24,
                 log_every: float = 10.0, show_rate: bool = True):
        self.total = total
        self.description = description
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.width = width
        self.log_every = log_every
        self.show_rate = show_rate
        self.count = 0
        self.fields: dict[str, object] = {}
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn_count = -1   # the count shown by the last line drawn
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._closed = False

    def update(self, n: int = 1, **fields) -> None:
        """Advance by ``n`` units and set the fields shown after the bar (loss=..., acc=...)."""
        self.count += n
        self.fields.update(fields)
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.total is not None and self.count >= self.total
        interval = 0.1 if self._interactive else self.log_every
        if finished or now - self._last_draw >= interval:
            self._last_draw = now
            self._draw(now)

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        parts = [self.description] if self.description else []
        if self.total:
            fraction = min(1.0, self.count / self.total)
            filled = int(round(fraction * self.width))
            parts.append(f"[{'#' * filled}{'.' * (self.width - filled)}] {self.count}/{self.total}")
            if 0 < fraction < 1:
                parts.append(f"eta {format_seconds(elapsed * (1 - fraction) / fraction)}")
        else:
            parts.append(f"{self.count} {self.unit}")
        parts.append(format_seconds(elapsed))
        if self.show_rate and elapsed > 0:
            parts.append(f"{self.count / elapsed:,.0f} {self.unit}/s")
        for key, value in self.fields.items():
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        self._drawn_count = self.count
        line = self._line(now)
        if self._interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._interactive:
            self._draw(now)
            self.stream.write("\n")
        elif self._drawn_count != self.count:
            self.stream.write(self._line(now) + "\n")
        self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
