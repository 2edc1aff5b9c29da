"""Accuracy, loss, per-class accuracy and the confusion matrix of a model over a dataset.

The model runs in eval mode (Dropout off, BatchNorm on its running statistics) over large
batches, and is put back into the mode it was in. Used by ``cnnlab train`` after each epoch
and by ``cnnlab evaluate``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.utils.validation import positive_int


@contextlib.contextmanager
def _eval_forward(model, threads: int):
    """``model``'s forward in eval mode, each batch split over ``threads`` threads
    (cnnlab.backend.parallel.DataParallel); the model's mode is restored afterwards."""
    from cnnlab.backend.parallel import DataParallel

    parallel = DataParallel(model, threads)
    was_training = model.training
    model.eval()
    try:
        with parallel.hold_blas():
            yield parallel.forward
    finally:
        parallel.close()
        model.train(was_training)


def iterate_logits(model, inputs: np.ndarray, batch_size: int = 256, threads: int = 1,
                   prepare=None):
    """The one inference loop: ``model``'s logits, ``batch_size`` inputs at a time.

    The model runs in eval mode (Dropout off, BatchNorm on its running statistics) and is
    put back into its mode afterwards; each batch is split over ``threads`` threads.

    Args:
        model: an ``nn.Module``.
        inputs: (N, ...) array, sliced along the first axis.
        batch_size: inputs per forward pass.
        threads: threads sharing each batch (``cnnlab.backend.parallel.threads_for``).
        prepare: applied to each slice before the forward, e.g. uint8 images -> normalised
            floats (so only one batch is ever converted at a time); None: the slice as it is.

    Yields:
        ``(start, logits)``: the first index of the batch and its (B, K) logits.
    """
    positive_int(batch_size, "batch size")
    with _eval_forward(model, threads) as forward:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            yield start, forward(batch if prepare is None else prepare(batch))


def predict_logits(model, x: np.ndarray, batch_size: int = 256, threads: int = 1) -> np.ndarray:
    """Run ``model`` in eval mode on already-normalised inputs, ``batch_size`` at a time
    (:func:`iterate_logits`).

    Args:
        model: an ``nn.Module`` (usually the ``Sequential`` from ``build_model``).
        x: (N, C, H, W) or (N, F) float inputs, normalised as the model was trained.
        batch_size: images per forward pass; larger is faster and uses more memory.
        threads: each batch split over this many threads (``cnnlab.backend.parallel.threads_for``
            picks a good number for a model).

    Returns:
        logits, shape (N, K), in the dtype of the model's output.
    """
    outputs = [logits for _, logits in iterate_logits(model, x, batch_size, threads)]
    if not outputs:
        raise ShapeError("predict_logits: no inputs (the array has 0 samples)")
    return np.concatenate(outputs, axis=0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose largest logit is at the true label (the lectures' ``accuracy``)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return math.nan
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Returns:
        (K, K) int64; entry [i, j] is the number of samples of class i predicted as j, so the
        diagonal holds the correct ones and row i sums to the number of samples of class i.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ShapeError(
            f"labels range over {labels.min()}..{labels.max()} but the model has {num_classes} "
            "classes: is this the dataset the model was trained on?"
        )
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Diagonal over row sums: the recall of each class; nan for a class with no samples."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


@dataclass
class Evaluation:
    """The result of :func:`evaluate`.

    With ``keep_outputs=True`` it also holds what the figures need: the images as given,
    their labels and the softmax probabilities, so ``predictions`` is their argmax.
    """

    loss: float
    accuracy: float
    num_samples: int
    confusion: np.ndarray
    per_class_accuracy: np.ndarray
    images: np.ndarray | None = None          # (N, H, W) uint8, as given
    labels: np.ndarray | None = None          # (N,) int64
    probabilities: np.ndarray | None = None   # (N, K) softmax outputs

    @property
    def predictions(self) -> np.ndarray:
        """(N,) the most probable class of each image (needs ``keep_outputs=True``)."""
        if self.probabilities is None:
            raise ValueError("this Evaluation kept no outputs: call evaluate(..., keep_outputs=True)")
        return self.probabilities.argmax(axis=1)

    def to_dict(self, classes: list[str] | None = None) -> dict:
        """JSON-ready: floats and nested lists (nan becomes None)."""
        result = {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "num_samples": self.num_samples,
            "per_class_accuracy": [None if math.isnan(v) else float(v)
                                   for v in self.per_class_accuracy],
            "confusion": self.confusion.tolist(),
        }
        if classes is not None:
            result["classes"] = list(classes)
        return result


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256,
             normalization: str = "unit", mean: float | None = None, std: float | None = None,
             num_classes: int | None = None, threads: int = 1,
             keep_outputs: bool = False) -> Evaluation:
    """Loss, accuracy and confusion matrix of ``model`` over uint8 images.

    Args:
        model: the network; run in eval mode, then put back into its previous mode.
        images: (N, H, W) uint8, as ``Dataset.test_images``.
        labels: (N,) integer class indices.
        batch_size: images per forward pass (default 256).
        normalization, mean, std: as ``cnnlab.data.to_float`` (the ones used in training).
        num_classes: K; by default the width of the model's output.
        threads: each batch split over this many threads, as in :func:`predict_logits`.
        keep_outputs: also keep the images, labels and softmax probabilities (for figures).

    Returns:
        :class:`Evaluation`. The loss is the mean cross-entropy
        :math:`-\\frac{1}{N}\\sum_n \\log \\mathrm{softmax}(z_n)_{y_n}`.
    """
    from cnnlab.data import to_float
    from cnnlab.ops.activation import log_softmax, softmax

    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ShapeError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ShapeError("cannot evaluate on an empty dataset (0 images)")
    total_loss = 0.0
    predictions = np.empty(len(labels), dtype=np.int64)
    probabilities = []

    def normalized(batch):
        return to_float(batch, normalization=normalization, mean=mean, std=std)

    for start, logits in iterate_logits(model, images, batch_size, threads, prepare=normalized):
        if num_classes is None:
            num_classes = logits.shape[1]
        batch_labels = labels[start:start + len(logits)]
        _check_labels(batch_labels, logits.shape[1])
        log_probabilities = log_softmax(logits.astype(np.float64), axis=1)
        total_loss -= float(log_probabilities[np.arange(len(batch_labels)), batch_labels].sum())
        predictions[start:start + len(batch_labels)] = np.argmax(logits, axis=1)
        if keep_outputs:
            probabilities.append(softmax(logits, axis=1))
    confusion = confusion_matrix(labels, predictions, num_classes)
    return Evaluation(
        loss=total_loss / len(labels),
        accuracy=float(np.mean(predictions == labels)),
        num_samples=int(len(labels)),
        confusion=confusion,
        per_class_accuracy=per_class_accuracy(confusion),
        images=images if keep_outputs else None,
        labels=labels if keep_outputs else None,
        probabilities=np.concatenate(probabilities) if keep_outputs else None,
    )


def format_confusion(confusion: np.ndarray, classes: list[str] | None = None) -> str:
    """The confusion matrix as a text table: rows are true classes, columns predictions.

    Columns are headed by class index (names are often too long for a column); each row starts
    with index and name.
    """
    num_classes = confusion.shape[0]
    names = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
    width = max(4, len(str(int(confusion.max()))) + 1 if confusion.size else 4)
    label_width = max(len(f"{i} {name}") for i, name in enumerate(names))
    header = " " * label_width + " |" + "".join(f"{j:>{width}}" for j in range(num_classes))
    lines = ["true \\ predicted".ljust(len(header)), header, "-" * len(header)]
    for i, name in enumerate(names):
        cells = "".join(f"{int(count):>{width}}" for count in confusion[i])
        lines.append(f"{f'{i} {name}':<{label_width}} |{cells}")
    return "\n".join(line.rstrip() for line in lines)


def _check_labels(labels: np.ndarray, num_outputs: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_outputs):
        raise ShapeError(
            f"labels range over {labels.min()}..{labels.max()} but the model has {num_outputs} "
            "outputs: is this the dataset the model was trained on?"
        )
