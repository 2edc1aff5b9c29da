"""Loss functions: each returns the mean loss as a Python float and its gradient."""

from __future__ import annotations

import numpy as np

from cnnlab.errors import DataError, ShapeError
from cnnlab.ops.activation import log_softmax
from cnnlab.utils.validation import check_input


def _check_labels(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    check_input(logits, "cross_entropy", "logits")
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ShapeError(f"cross_entropy expects logits of shape (N, num_classes), "
                         f"got {logits.shape}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ShapeError(f"cross_entropy got an empty batch of logits {logits.shape}; "
                         "give at least one sample and one class")
    if labels.shape != (logits.shape[0],):
        raise ShapeError(f"cross_entropy labels have shape {labels.shape}, expected "
                         f"({logits.shape[0]},): one class index per sample")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"cross_entropy labels must be integer class indices, got dtype "
                          f"{labels.dtype}; convert with labels.astype(np.int64)")
    num_classes = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"cross_entropy labels must lie in [0, {num_classes - 1}], got values "
                          f"from {labels.min()} to {labels.max()}")
    return labels


def cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy of class scores against integer labels, as ``F.cross_entropy``.

    loss = -(1/N) sum_n log softmax(logits_n)[labels_n]

    Takes raw **logits** and applies log-softmax itself. Do not feed it
    probabilities: the lecture notes call ``cross_entropy(softmax(out), y)`` with a
    helper that already applies softmax, so softmax runs twice and the loss is wrong.
    Computed via the stable log-softmax, so logits of +-1e4 give a finite loss.

    Args:
        logits: unnormalised class scores.
        labels: the correct class of each sample, integers in [0, C).

    Shape:
        - logits: (N, C)
        - labels: (N,)
        - dlogits: (N, C), equal to (softmax(logits) - onehot(labels)) / N

    Returns:
        ``(loss, dlogits)``: the loss as a Python float and its gradient.
    """
    labels = _check_labels(logits, labels)
    batch = logits.shape[0]
    log_probabilities = log_softmax(logits, axis=1)
    rows = np.arange(batch)
    loss = -float(log_probabilities[rows, labels].sum()) / batch
    dlogits = np.exp(log_probabilities, out=log_probabilities)
    dlogits[rows, labels] -= 1
    dlogits /= batch
    return loss, dlogits


def mse_loss(prediction: np.ndarray, target: np.ndarray):
    """Mean squared error over all elements, as ``F.mse_loss`` (reduction="mean").

    loss = (1/M) sum (prediction - target)^2, with M the number of elements.

    Shape:
        - prediction, target: the same shape (any)
        - dprediction: same shape, equal to 2 (prediction - target) / M

    Returns:
        ``(loss, dprediction)``: the loss as a Python float and its gradient.
    """
    check_input(prediction, "mse_loss", "prediction")
    target = np.asarray(target)
    if prediction.shape != target.shape:
        raise ShapeError(f"mse_loss prediction {prediction.shape} and target {target.shape} "
                         "must have the same shape")
    difference = prediction - target.astype(prediction.dtype, copy=False)
    count = max(difference.size, 1)
    loss = float(np.vdot(difference, difference)) / count
    difference *= np.asarray(2 / count, dtype=difference.dtype)
    return loss, difference
