"""Loading what the figures need from a run folder (see docs/architecture.md, "Run folder").

:class:`Run` reads each file once, when first asked for, so the report and ``cnnlab plot``
load the checkpoint and the dataset at most once::

    run = Run("runs/cnn-fashion-mnist-20250101-120000")
    plots.learning_curves(run.metrics)
    model = run.model
    evaluation = run.evaluate()     # the test set, as `cnnlab evaluate` sees it
    plots.mistakes(evaluation.images, evaluation.labels, evaluation.probabilities, run.classes)
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.training.evaluation import Evaluation
from cnnlab.training.runs import CHECKPOINT_FILE as CHECKPOINT_NAME
from cnnlab.training.runs import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE


def resolve_run(run: str | os.PathLike) -> Path:
    """The run folder named by ``run`` (a run folder, or the checkpoint.npz inside one)."""
    path = Path(run)
    if path.is_file() and path.suffix == ".npz":
        path = path.parent
    if not path.is_dir():
        raise ConfigError(f"run folder {str(path)!r} not found: give a folder made by 'cnnlab train' (runs/...)")
    if not any((path / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_NAME)):
        raise ConfigError(f"{path}: not a run folder (no config.json, metrics.jsonl or checkpoint.npz); "
                          "give a folder made by 'cnnlab train'")
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}; is the run folder damaged?") from error


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (:func:`cnnlab.training.runs.read_metrics`: a last line cut
    short is skipped with a warning, a damaged line elsewhere raises DataError)."""
    from cnnlab.training.runs import read_metrics as read_metrics_file

    return read_metrics_file(resolve_run(run) / METRICS_FILE)


def to_model_input(images: np.ndarray, meta: dict) -> np.ndarray:
    """uint8 images (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W), normalized as the
    checkpoint's model was trained."""
    from cnnlab.data.images import to_model_input as normalize

    return normalize(images, meta.get("normalization"))


def predict_probabilities(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Softmax outputs (N, classes) of ``model`` on ``x`` (N, C, H, W), in eval mode, in batches
    (:func:`cnnlab.training.evaluation.predict_logits`)."""
    from cnnlab.ops.activation import softmax
    from cnnlab.training.evaluation import predict_logits

    if len(x) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return softmax(predict_logits(model, x, batch_size), axis=1)


class Run:
    """A run folder's files, each read on first use."""

    has_history = True   # metrics.jsonl: learning curves (a WeightsRun has none)

    def __init__(self, run: str | os.PathLike):
        self.path = resolve_run(run)
        self._evaluations: dict[int, Evaluation] = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @cached_property
    def config(self) -> dict:
        path = self.path / CONFIG_FILE
        return _read_json(path) if path.exists() else {}

    @cached_property
    def summary(self) -> dict | None:
        """summary.json, or None while the run has not written one."""
        path = self.path / SUMMARY_FILE
        return _read_json(path) if path.exists() else None

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished"))

    @cached_property
    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def _require_checkpoint(self) -> Path:
        if not self.checkpoint_path.exists():
            raise CheckpointError(
                f"no {CHECKPOINT_NAME} in {self.path} yet: training writes it after the first epoch"
            )
        return self.checkpoint_path

    @cached_property
    def _model_and_meta(self):
        from cnnlab.training.checkpoint import load_model

        return load_model(self._require_checkpoint())

    @property
    def model(self):
        """The network of the latest checkpoint (an ``nn.Sequential``)."""
        return self._model_and_meta[0]

    @property
    def meta(self) -> dict:
        return self._model_and_meta[1]

    @cached_property
    def gradients(self) -> dict[str, np.ndarray]:
        """Parameter name -> gradient of the last training step (the checkpoint's ``grad/`` arrays)."""
        try:
            with np.load(self._require_checkpoint(), allow_pickle=False) as archive:
                return {key[len("grad/"):]: archive[key] for key in archive.files if key.startswith("grad/")}
        except (OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {self.checkpoint_path}: {error}") from error

    @cached_property
    def dataset(self):
        """The run's dataset, from the local data folder (never downloaded for a figure)."""
        from cnnlab.data import load_dataset
        from cnnlab.data.datasets import dataset_options

        meta_dataset = self.meta.get("dataset") if self.checkpoint_path.exists() else None
        reference = self.config.get("dataset") or meta_dataset
        if isinstance(reference, dict):
            reference = reference.get("source") or reference.get("name")
        if not reference:
            raise DataError(f"{self.path} does not say which dataset it was trained on")
        return load_dataset(reference, data_dir=self.config.get("data_dir"), download=False,
                            progress=False, **dataset_options(self.config))

    @property
    def classes(self) -> list[str]:
        classes = self.meta.get("classes") if self.checkpoint_path.exists() else None
        return list(classes or self.dataset.classes)

    def test_inputs(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Test images ``indices`` as model input (N, C, H, W) float32, and their labels."""
        indices = np.asarray(list(indices), dtype=np.int64)
        count = len(self.dataset.test_labels)
        bad = indices[(indices < 0) | (indices >= count)]
        if len(bad):
            raise ConfigError(f"test image index {int(bad[0])} is out of range: the test set has {count} images (0..{count - 1})")
        return to_model_input(self.dataset.test_images[indices], self.meta), self.dataset.test_labels[indices]

    def evaluate(self, limit: int | None = None) -> Evaluation:
        """The model on the first ``limit`` test images (None: all of them, as ``cnnlab
        evaluate``), with their images, labels and probabilities kept
        (:func:`cnnlab.training.evaluation.evaluate` with ``cnnlab evaluate``'s batches and threads;
        computed once per limit)."""
        from cnnlab.backend.parallel import threads_for
        from cnnlab.training.evaluation import evaluate

        if limit not in self._evaluations:
            normalization = self.meta.get("normalization") or {}
            batch_size = 256  # cnnlab evaluate's default
            input_shape = tuple(self.meta.get("input_shape", (1, *self.dataset.image_shape)))
            self._evaluations[limit] = evaluate(
                self.model, self.dataset.test_images[:limit], self.dataset.test_labels[:limit],
                batch_size=batch_size, normalization=normalization.get("kind", "unit"),
                mean=normalization.get("mean"), std=normalization.get("std"),
                num_classes=len(self.classes), keep_outputs=True,
                threads=threads_for(self.model, input_shape, batch_size))
        return self._evaluations[limit]


class WeightsRun(Run):
    """The figures of weights without a run folder: a ``.safetensors`` file (trained in PyTorch,
    or exported) or a checkpoint ``.npz``, with the dataset to show them on.

    There is no training history, so the learning curves and gradient figures are left out;
    everything computed from the weights and the test set is there::

        run = WeightsRun("lecture-cnn.safetensors", model="cnn", dataset="mnist")
        plots.filters(run.model)
    """

    def __init__(self, path: str | os.PathLike, model: str | None = None,
                 dataset: str | None = None, data_dir: str | None = None):
        from cnnlab.training.checkpoint import load_weights, model_from_checkpoint

        checkpoint = load_weights(path, model)
        meta = dict(checkpoint.meta)
        if dataset is not None:
            meta["dataset"] = dataset
        if not meta.get("dataset"):
            raise ConfigError(f"{path} does not say which dataset it was trained on: give "
                              "--dataset NAME")
        self.path = Path(checkpoint.path)
        self._evaluations = {}
        # what Run reads from the folder's files, filled in from the weights file
        self.__dict__.update({
            "_model_and_meta": (model_from_checkpoint(checkpoint), meta),
            "config": {key: value for key, value in (
                ("model", meta.get("model")), ("dataset", meta.get("dataset")),
                ("data_dir", data_dir), ("weights", str(self.path))) if value is not None},
            "summary": None, "metrics": [], "gradients": dict(checkpoint.grads)})

    @property
    def checkpoint_path(self) -> Path:
        return self.path

    has_history = False

    @property
    def finished(self) -> bool:
        return True   # nothing is training: the report does not reload itself
