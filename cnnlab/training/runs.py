"""Run folders: making them, finding them, and the files in them.

A run folder (docs/architecture.md) holds ``config.json``, ``metrics.jsonl``,
``checkpoint.npz``, ``summary.json`` and ``report.html``. New folders are named
``<model>-<dataset>-<YYYYmmdd-HHMMSS>[-N]`` under the runs root; ``os.mkdir`` is
the lock, so two runs started in the same second get two folders.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import warnings
from pathlib import Path

import numpy as np

from cnnlab.errors import ConfigError, DataError

DEFAULT_RUNS_ROOT = "runs"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.npz"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


def _slug(text: str, limit: int = 24) -> str:
    """A file-name-safe short form of a model spec or dataset folder."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].strip("-") or "run"


def run_name_stem(model: str, dataset: str) -> str:
    dataset_name = Path(dataset).name if os.sep in dataset or Path(dataset).is_dir() else dataset
    return f"{_slug(model)}-{_slug(dataset_name)}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """Raise :class:`ConfigError` unless ``run_dir`` is a new or an empty folder."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--run-dir {path} is a file; give a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"--run-dir {path} is not empty; give a new folder, "
                          f"or continue that run with --resume {path}")
    return path


def make_run_dir(model: str, dataset: str, run_dir: str | None = None,
                 runs_root: str | None = None) -> Path:
    """Create and return a new, empty run folder.

    Args:
        run_dir: an explicit folder; it must not exist or be empty.
        runs_root: where a named folder is made when ``run_dir`` is None (default ``runs/``).

    Raises:
        ConfigError: ``run_dir`` is a file or a folder that already holds files.
    """
    if run_dir is not None:
        path = check_run_dir(run_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create --run-dir {path}: {error.strerror}") from None
        return path
    root = Path(runs_root if runs_root is not None else DEFAULT_RUNS_ROOT)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--runs-root {root} is a file; give a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create --runs-root {root}: {error.strerror}") from None
    stem = run_name_stem(model, dataset)
    for attempt in range(1, 10_000):
        path = root / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"cannot find a free run folder name under {root}")


def find_run(run: str, runs_root: str | None = None) -> Path:
    """The run folder ``run`` (a path, or a folder name under the runs root) to resume."""
    path = Path(run)
    if not path.is_dir():
        under_root = Path(runs_root if runs_root is not None else DEFAULT_RUNS_ROOT) / run
        if under_root.is_dir():
            path = under_root
        else:
            raise ConfigError(f"--resume {run}: no such run folder")
    if not (path / CHECKPOINT_FILE).is_file():
        raise ConfigError(f"--resume {path}: it has no {CHECKPOINT_FILE} (the run stopped "
                          "before its first checkpoint); start a new run instead")
    return path


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl, flushed after every record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stream = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Every record of a metrics.jsonl file, in order ([] when there is no file yet).

    The file is appended one line per record while a run trains, so an interrupted run can
    leave its last line cut short: that line is skipped with a warning. A damaged line
    anywhere else means the file itself is damaged: a DataError names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                warnings.warn(f"{path}: skipped its last line, which was cut short (the run was "
                              "interrupted while writing it)", stacklevel=2)
                break
            raise DataError(f"{path} line {number} is not JSON ({error.msg}); is the run folder "
                            "damaged?") from None
    return records


def truncate_metrics(path: Path, epochs_done: int, global_step: int) -> None:
    """Keep only the records up to a checkpoint, so a resumed run does not repeat any."""
    from cnnlab.utils.fileio import atomic_write

    kept = [record for record in read_metrics(path)
            if (record.get("kind") == "epoch" and record.get("epoch", 0) <= epochs_done)
            or (record.get("kind") != "epoch" and record.get("step", 0) <= global_step)]
    with atomic_write(path, "w") as stream:
        for record in kept:
            stream.write(json.dumps(record) + "\n")


def blas_name() -> str | None:
    """The BLAS library NumPy was built with, when NumPy can say (numpy >= 1.25)."""
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            info = np.show_config(mode="dicts")
        return info["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - older NumPy has no mode="dicts"; the name is optional
        return None


def versions() -> dict:
    from cnnlab import __version__

    return {"python": platform.python_version(), "numpy": np.__version__,
            "cnnlab": __version__, "blas": blas_name()}
