"""Batches for training and evaluation: seeded epoch order, augmentation, uint8 -> float32.

Images stay uint8 in memory (the full Fashion-MNIST training set is 47 MB); each batch
is augmented (cnnlab/data/augment.py) and converted to float32 (B, C, H, W) only when it
is needed.

The lectures draw a random contiguous window of the training set for each batch; that
visits some samples twice and others never. Here every epoch is a fresh permutation
(seeded by ``(seed, epoch)``), so each sample is seen exactly once per epoch and a run
resumed at epoch e batch b sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from cnnlab.errors import ConfigError, ShapeError
from cnnlab.utils.validation import positive_int

NORMALIZATIONS = ("unit", "standard")


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order samples are visited in during ``epoch``: a permutation of 0..N-1.

    Drawn from ``np.random.default_rng([seed, epoch])``: same seed and epoch, same order;
    every epoch a different one.

    Shape:
        Output: (num_samples,) int64
    """
    if int(num_samples) < 0:
        raise ConfigError(f"num_samples must be >= 0, got {num_samples}")
    if int(seed) < 0 or int(epoch) < 0:
        raise ConfigError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(num_samples))


def _as_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grayscale -> a (N, 1, H, W) view; (N, C, H, W) as it is."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise ShapeError(f"images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    return images


def to_float(images: np.ndarray, normalization: str = "unit", mean: float | None = None,
             std: float | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Convert uint8 images to the network's float32 input.

    "unit":     x = pixel / 255                   (the lectures' [0, 1] inputs)
    "standard": x = (pixel / 255 - mean) / std    (mean, std of pixel / 255 on the training
                set, over all channels)

    Args:
        images: uint8 (B, H, W) grayscale or (B, C, H, W).
        normalization: "unit" or "standard".
        mean, std: required for "standard" (see :func:`dataset_mean_std`).
        out: optional float32 (B, C, H, W) C-contiguous array to write into (no allocation).

    Shape:
        Input: (B, H, W) or (B, C, H, W)
        Output: (B, C, H, W) float32 (C = 1 for (B, H, W))
    """
    images = _as_nchw(np.asarray(images))
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization '{normalization}'; use 'unit' or 'standard'")
    if normalization == "standard":
        if mean is None or std is None:
            raise ConfigError("normalization 'standard' needs mean and std "
                              "(see cnnlab.data.dataset_mean_std)")
        if not std > 0:
            raise ConfigError(f"std must be > 0 for 'standard' normalization, got {std}")
    if out is None:
        out = np.empty(images.shape, dtype=np.float32)
    elif out.shape != images.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ShapeError(f"out must be a C-contiguous float32 array of shape "
                         f"{images.shape}, got {out.dtype} {out.shape}")
    np.divide(images, np.float32(255), out=out, dtype=np.float32, casting="unsafe")
    if normalization == "standard":
        out -= np.float32(mean)
        out /= np.float32(std)
    return out


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                    order: np.ndarray | None = None, normalization: str = "unit",
                    mean: float | None = None, std: float | None = None, start_batch: int = 0,
                    drop_last: bool = False, reuse_buffer: bool = False, augment=None,
                    augment_seed: tuple[int, ...] = (0,)
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` batches: x float32 (B, C, H, W), y int64 (B,).

    Args:
        images: uint8 (N, H, W) or (N, C, H, W); labels: integer (N,).
        batch_size: samples per batch (use a large one, e.g. 1000, for evaluation).
        order: the visiting order (from :func:`epoch_order`); None means 0..N-1 in turn.
        normalization, mean, std: as in :func:`to_float`.
        start_batch: skip the first batches (resuming in the middle of an epoch).
        drop_last: leave out a last batch smaller than ``batch_size``.
        reuse_buffer: write every full batch into the same x array (no allocation); the
            previous x is then overwritten, so only use it when each x is consumed at once.
        augment: a :class:`cnnlab.data.augment.Augmentation` applied to each uint8 batch
            before it is converted, or None.
        augment_seed: batch b is augmented with ``default_rng([*augment_seed, b])`` (the
            trainer passes (seed, epoch)): the same batch gets the same draws, resumed or not.
    """
    images = _as_nchw(np.asarray(images))
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ShapeError(f"labels must be (N,) with N = {len(images)} images, "
                         f"got shape {labels.shape}")
    batch_size = positive_int(batch_size, "batch_size")
    if int(start_batch) < 0:
        raise ConfigError(f"start_batch must be >= 0, got {start_batch}")
    if order is None:
        order = np.arange(len(images))
    elif len(order) and (np.max(order) >= len(images) or np.min(order) < -len(images)):
        raise ShapeError(f"order holds indices outside 0..{len(images) - 1}")
    to_float(images[:0], normalization, mean, std)  # reject bad options before the first batch
    return _batches(images, labels, int(batch_size), np.asarray(order), normalization, mean,
                    std, int(start_batch), drop_last, reuse_buffer, augment,
                    tuple(int(part) for part in augment_seed))


def _batches(images, labels, batch_size, order, normalization, mean, std, start_batch,
             drop_last, reuse_buffer, augment, augment_seed):
    sample_shape = images.shape[1:]
    gathered = np.empty((batch_size,) + sample_shape, dtype=images.dtype)
    buffer = np.empty((batch_size,) + sample_shape, np.float32) if reuse_buffer else None
    for batch_index, start in enumerate(range(start_batch * batch_size, len(order), batch_size),
                                        start=start_batch):
        indices = order[start:start + batch_size]
        size = len(indices)
        if drop_last and size < batch_size:
            return
        np.take(images, indices, axis=0, out=gathered[:size])
        batch = gathered[:size]
        if augment is not None:
            batch = augment(batch, np.random.default_rng([*augment_seed, batch_index]))
        out = buffer if (buffer is not None and size == batch_size) else None
        x = to_float(batch, normalization, mean, std, out=out)
        yield x, labels[indices].astype(np.int64)


def split_validation(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                     stratified: bool = True, what: str = "validation"):
    """Hold out ``fraction`` of the training set for validation, seeded.

    Stratified (the default): each class gives the same share, so the validation set has
    the training set's class balance. Both parts keep the original order.

    Args:
        what: the held-out part's name in error messages ("validation", "test").

    Returns:
        (train_images, train_labels, val_images, val_labels)
    """
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ShapeError(f"{len(images)} images but {len(labels)} labels")
    if not 0 < fraction < 1:
        raise ConfigError(f"{what} fraction must be between 0 and 1 (exclusive), "
                          f"got {fraction}")
    total = len(labels)
    count = int(round(fraction * total))
    if count == 0 or count == total:
        raise ConfigError(f"a {what} fraction of {fraction} of {total} samples leaves one "
                          f"part empty; choose a fraction that keeps both parts non-empty")
    rng = np.random.default_rng([int(seed), 0x5A11D])
    shuffled = rng.permutation(total)
    if stratified:
        chosen = _stratified_pick(labels, shuffled, count)
    else:
        chosen = shuffled[:count]
    is_val = np.zeros(total, dtype=bool)
    is_val[chosen] = True
    return images[~is_val], labels[~is_val], images[is_val], labels[is_val]


def _stratified_pick(labels: np.ndarray, shuffled: np.ndarray, count: int) -> np.ndarray:
    """``count`` indices, each class contributing in proportion (largest remainder)."""
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    classes, starts, sizes = np.unique(labels[grouped], return_index=True, return_counts=True)
    quotas = sizes * count / len(labels)
    takes = np.floor(quotas).astype(np.int64)
    remainder = count - int(takes.sum())
    takes[np.argsort(-(quotas - takes), kind="stable")[:remainder]] += 1
    return np.concatenate([grouped[start:start + take] for start, take in zip(starts, takes)])


_HISTOGRAM_CHUNK = 1 << 22


def dataset_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of pixel / 255 over all images (for "standard").

    Exact and without a float copy of the images: computed from the 256-bin histogram of
    the uint8 pixel values.
    """
    images = np.asarray(images)
    if images.size == 0:
        raise ShapeError("cannot compute the mean and std of an empty image set")
    if images.dtype == np.uint8:
        # bincount casts its input to int64: count in chunks so the full training set
        # (47 M pixels) never needs a 376 MB temporary.
        flat = images.reshape(-1)
        counts = np.zeros(256, dtype=np.int64)
        for start in range(0, flat.size, _HISTOGRAM_CHUNK):
            counts += np.bincount(flat[start:start + _HISTOGRAM_CHUNK], minlength=256)
        counts = counts.astype(np.float64)
        values = np.arange(256, dtype=np.float64) / 255.0
        mean = float(counts @ values / images.size)
        variance = float(counts @ (values - mean) ** 2 / images.size)
        return mean, variance ** 0.5
    scaled = images.astype(np.float64) / 255.0
    return float(scaled.mean()), float(scaled.std())
