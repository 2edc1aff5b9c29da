"""The progress bar: fits the terminal, keeps its numbers' width, redraws in place in notebooks."""

from __future__ import annotations

import io
import time

import pytest

from cnnlab import progress
from cnnlab.progress import ProgressBar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeKernelStream(io.StringIO):
    """Stands for ipykernel's OutStream: not a terminal, from the ipykernel package."""


FakeKernelStream.__module__ = "ipykernel.iostream"


def _lines(stream: FakeTerminal) -> list[str]:
    return [line.rstrip("\n") for line in stream.getvalue().split("\r\033[K")[1:]]


def _epoch(stream, total: int = 60000, steps: int = 12, **options) -> ProgressBar:
    bar = ProgressBar(total, "epoch 1/10", unit="img", stream=stream, **options)
    bar.start -= 19   # an epoch under way: real rates and times
    for step in range(steps):
        bar.update(total // steps, loss=2.0 / (step + 1), acc=0.1 + step / 20)
        bar._draw(time.perf_counter())   # every step, whatever the clock says
    bar.close()
    return bar


@pytest.mark.parametrize("columns", [80, 40])
def test_the_bar_fits_the_terminal_and_keeps_its_width(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))   # what shutil.get_terminal_size reads first
    stream = FakeTerminal()
    _epoch(stream)
    lines = _lines(stream)
    assert len(lines) >= 12
    assert all(len(line) <= columns - 1 for line in lines), lines
    assert len({len(line) for line in lines}) == 1, lines   # no jitter from start to end
    assert stream.getvalue().count("\n") == 1               # one line, ended once
    assert all(line.startswith("epoch 1/10") and "/60000" in line for line in lines)
    assert "loss" in lines[-1]
    if columns == 80:
        assert "[" in lines[0] and "eta" in lines[0] and "acc" in lines[0]
        assert "#" * 10 in lines[-1] and "took 00:19" in lines[-1]


def test_a_wide_terminal_shows_everything(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    stream = FakeTerminal()
    _epoch(stream)
    last = _lines(stream)[-1]
    for part in ("[" + "#" * 24 + "]", "60000/60000", "took 00:19", "img/s", "loss 0.1667",
                 "acc 0.6500"):
        assert part in last
    assert "5000/60000" in _lines(stream)[0] and " 5000/60000" in _lines(stream)[0]


def test_a_file_gets_plain_lines_at_most_every_log_every_seconds():
    stream = io.StringIO()
    bar = ProgressBar(100, "epoch 1/1", stream=stream, log_every=3600)
    for _ in range(100):
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and "\033" not in text
    assert text.count("\n") == 2      # the first update, then (within log_every) the last
    assert " 100/100" in text.splitlines()[-1]


def test_in_a_notebook_one_output_line_is_updated_in_place(monkeypatch):
    shown = []

    class RecordingLine:
        def __init__(self):
            shown.append([])

        def show(self, line):
            shown[-1].append(line)

    monkeypatch.setattr(progress, "_NotebookLine", RecordingLine)
    stream = FakeKernelStream()
    _epoch(stream)
    assert len(shown) == 1 and len(shown[0]) >= 12    # one display, updated every draw
    assert stream.getvalue() == ""                    # nothing printed as new lines
    assert "60000/60000" in shown[0][-1] and "#" * 24 in shown[0][-1]


def test_in_a_notebook_without_ipython_the_line_redraws_with_carriage_returns(monkeypatch):
    def no_ipython():
        raise ImportError("No module named 'IPython'")

    monkeypatch.setattr(progress, "_NotebookLine", no_ipython)
    stream = FakeKernelStream()
    _epoch(stream, columns=100)
    text = stream.getvalue()
    assert text.count("\r") >= 12 and text.count("\n") == 1


def test_disabled_bar_draws_nothing():
    stream = FakeTerminal()
    bar = ProgressBar(10, stream=stream, enabled=False)
    bar.update(10)
    bar.close()
    assert stream.getvalue() == ""
