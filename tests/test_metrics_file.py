"""metrics.jsonl is read by one function (cnnlab.runs.read_metrics), with one policy on bad lines."""

from __future__ import annotations

import json

import pytest

from cnnlab import plots
from cnnlab.errors import DataError
from cnnlab.runs import MetricsWriter, read_metrics

RECORDS = [{"kind": "step", "step": 1, "loss": 2.0}, {"kind": "epoch", "epoch": 1, "loss": 1.5}]


def _write(path, lines):
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_records_round_trip_and_a_missing_file_is_empty(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for record in RECORDS:
        writer.write(record)
    writer.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == RECORDS == plots.read_metrics(tmp_path)
    assert read_metrics(tmp_path / "none.jsonl") == []


def test_a_last_line_cut_short_by_an_interrupted_run_is_skipped_with_a_warning(tmp_path):
    path = _write(tmp_path / "metrics.jsonl", [json.dumps(r) for r in RECORDS] + ['{"kind": "st'])
    with pytest.warns(UserWarning, match="last line, which was cut short"):
        assert read_metrics(path) == RECORDS
    with pytest.warns(UserWarning):
        assert plots.read_metrics(tmp_path) == RECORDS


def test_a_damaged_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\n".join([json.dumps(RECORDS[0]).encode(), b'{"kind": \xff',
                                 json.dumps(RECORDS[1]).encode()]) + b"\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl line 2 is not JSON"):
        read_metrics(path)
    with pytest.raises(DataError, match="line 2"):
        plots.read_metrics(tmp_path)
