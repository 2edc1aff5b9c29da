"""The live view: a small file the trainer rewrites while it runs, which an open report polls.

``RUN/live.js`` holds one JSON object wrapped in a function call, ``cnnlabLive({...});``, so
that a page opened from disk (``file://``, where browsers refuse ``fetch``) can still load it
with a ``<script>`` tag; :func:`read_live` gives the object back in Python. It holds:

- ``status``: "running", "finished", "interrupted" (Ctrl-C or SIGTERM: the checkpoint of the
  step it reached is saved, ``--resume`` continues) or "failed" (the loss became NaN, an
  error); ``reason``, a line saying why a run that did not finish stopped; epoch, step, the
  time it was written;
- the learning curves: every epoch record and the step records (at most ``MAX_STEP_POINTS``,
  evenly thinned);
- the filters of every Conv2d layer (deeper layers: the mean over input channels) and the
  feature maps of one fixed test image after every Conv2d and pooling layer, each channel as
  uint8 scaled to its own range (``lo``, ``hi``), base64.

For the lecture CNN the file is about 70 KB; the trainer writes it at most every
``EVERY_SECONDS``, at the end of each epoch and when the run ends, whatever ends it
(:meth:`LiveWriter.stop`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError
from cnnlab.utils.fileio import atomic_write
from cnnlab.viz.explorer.data import encode_uint8, layer_inputs

LIVE_NAME = "live.js"
CALLBACK = "cnnlabLive"
EVERY_SECONDS = 2.0
#: A running run's page says the trainer may be gone after this long without a new live.js.
STALE_SECONDS = 60.0
MAX_STEP_POINTS = 400
#: Feature maps larger than this (values per layer) are left out of the live file.
MAX_MAP_VALUES = 65536


def _quantise(planes: np.ndarray) -> dict:
    """(C, ...) float -> uint8 per channel over [lo, hi], with lo and hi per channel."""
    flat = planes.reshape(len(planes), -1).astype(np.float64)
    flat[~np.isfinite(flat)] = 0.0   # a diverging run's overflow, drawn as zero
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.rint((flat - lo[:, None]) / span[:, None] * 255.0)
    return {"shape": list(planes.shape), "lo": [float(v) for v in lo], "hi": [float(v) for v in hi],
            "data": encode_uint8(scaled)}


#: What ``status`` may be: the run goes on, or how it ended.
STATUSES = ("running", "finished", "interrupted", "failed")


def live_state(model, image: np.ndarray, normalization: dict | None, records: list[dict],
               status: str, epochs: int | None = None, reason: str | None = None) -> dict:
    """The live file's object for ``model`` now (see the module docstring)."""
    from cnnlab.data.images import to_model_input
    from cnnlab.nn import layers as nn

    x = to_model_input(np.asarray(image, dtype=np.uint8)[None], normalization)
    values = layer_inputs(model, x)
    filters, maps = [], []
    for index, layer in enumerate(model):
        if isinstance(layer, nn.Conv2d):
            weight = layer.weight.data
            filters.append({"layer": index, **_quantise(weight[:, 0] if weight.shape[1] == 1
                                                        else weight.mean(axis=1))})
        output = values[index + 1][0]
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and output.ndim == 3 \
                and output.size <= MAX_MAP_VALUES:
            maps.append({"layer": index, "title": type(layer).__name__, **_quantise(output)})
    return {
        "status": status,
        "reason": reason,
        "time": time.time(),
        "epochs": epochs,
        **live_state_records(records),
        "image": {"shape": list(np.asarray(image).shape), "data": encode_uint8(image)},
        "logits": [float(v) for v in values[-1][0]],
        "filters": filters,
        "maps": maps,
    }


def live_state_records(records: list[dict]) -> dict:
    """The learning curves of the live file: epoch records and thinned step records."""
    epochs_done = [record for record in records if record.get("kind") == "epoch"]
    steps = [record for record in records if record.get("kind") == "step"]
    stride = max(1, math.ceil(len(steps) / MAX_STEP_POINTS))
    last = steps[-1] if steps else {}
    return {
        "epoch": epochs_done[-1]["epoch"] if epochs_done else 0,
        "step": last.get("step", 0),
        "epoch_records": epochs_done,
        "steps": [[record["step"], record.get("loss"), record.get("accuracy")]
                  for record in steps[::-1][::stride][::-1]],
    }


def write_live(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` as ``cnnlabLive({...});``, atomically."""
    with atomic_write(path, "w") as stream:
        stream.write(f"{CALLBACK}({json.dumps(state, separators=(',', ':'))});\n")


def read_live(run_dir: str | os.PathLike) -> dict:
    """The object in ``RUN/live.js`` (DataError if it is missing or damaged)."""
    path = Path(run_dir) / LIVE_NAME
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text[text.index("(") + 1:text.rindex(")")])
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None


class LiveWriter:
    """Keeps ``RUN/live.js`` current while a run trains, at most every ``every`` seconds.

    The trainer hands it each metrics record (:meth:`add`), asks :meth:`due` after each step
    and then calls :meth:`write`, as it does at the end of an epoch and of the run
    (:meth:`stop` for a run that does not finish). Drawing the state runs the model in eval
    mode on one image (no dropout draw, no batch-norm update), between steps.
    """

    def __init__(self, run_dir: Path, image: np.ndarray, normalization: dict | None,
                 epochs: int | None, every: float = EVERY_SECONDS, clock=time.monotonic):
        self.path = Path(run_dir) / LIVE_NAME
        self.run_dir = Path(run_dir)
        self.image = np.asarray(image, dtype=np.uint8)
        self.normalization = normalization
        self.epochs = epochs
        self.every = every
        self.clock = clock
        self.records: list[dict] | None = None   # read from metrics.jsonl on first use
        self.written_at: float | None = None
        self.last: dict | None = None            # the state last written

    def _records(self) -> list[dict]:
        if self.records is None:
            from cnnlab.training.runs import METRICS_FILE, read_metrics

            self.records = read_metrics(self.run_dir / METRICS_FILE)   # a resumed run's so far
        return self.records

    def add(self, record: dict) -> None:
        self._records().append(record)

    def due(self) -> bool:
        """Whether ``every`` seconds have passed since the last write (or none was made)."""
        return self.written_at is None or self.clock() - self.written_at >= self.every

    def write(self, model, status: str = "running", reason: str | None = None) -> None:
        self.written_at = self.clock()
        self.last = live_state(model, self.image, self.normalization, self._records(), status,
                               self.epochs, reason)
        write_live(self.path, self.last)

    def stop(self, model, status: str, reason: str) -> None:
        """The last write of a run that did not finish ("interrupted" or "failed", and why).

        Never raises: the trainer is stopping on an error of its own, which must reach the
        user. When the weights are no longer finite (a run that diverged), the filters and
        maps are the last good ones, and the curves and status are brought up to date.
        """
        try:
            finite = all(np.isfinite(parameter.data).all() for parameter in model.parameters())
            if finite or self.last is None:
                self.write(model, status, reason)
                return
        except Exception:   # noqa: BLE001 - whatever broke the run may break drawing it
            if self.last is None:
                self.last = {"epoch_records": [], "steps": [], "filters": [], "maps": [],
                             "image": None, "logits": None, "epochs": self.epochs}
        try:
            fresh = live_state_records(self._records())
            write_live(self.path, {**self.last, **fresh, "status": status, "reason": reason,
                                   "time": time.time()})
        except Exception as error:   # noqa: BLE001
            print(f"cnnlab: {self.path} not updated at the end of the run ({error})",
                  file=sys.stderr)
