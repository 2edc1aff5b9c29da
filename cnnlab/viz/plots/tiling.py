"""Arranging many small images into one (NumPy only; no matplotlib needed)."""

from __future__ import annotations

import math

import numpy as np


def pad_images(images: np.ndarray, pad: int = 1, value: float = 0.0) -> np.ndarray:
    """Pad each image of ``images`` (N, H, W) by ``pad`` pixels of ``value`` on every side.

    The lecture's ``montage_plot`` does this with ``np.pad(x, ((0, 0), (1, 1), (1, 1)))`` so
    neighbouring tiles stay apart.

    Shape:
        - images: (N, H, W)
        - output: (N, H + 2 * pad, W + 2 * pad)
    """
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="constant", constant_values=value)


def tile(images: np.ndarray, columns: int | None = None, pad: int = 1, value: float = 0.0,
         rows: int | None = None) -> np.ndarray:
    """Tile ``images`` (N, H, W) row by row into one 2-D image, each tile padded by ``pad``.

    Args:
        images: the tiles, all the same size.
        columns: tiles per row; default ceil(sqrt(N)), the lecture's square montage.
        pad: border added around each tile.
        value: value of the border and of empty slots.
        rows: rows of tiles; default as many as the images fill, ceil(N / columns).

    Shape:
        - images: (N, H, W)
        - output: (rows * (H + 2 * pad), columns * (W + 2 * pad)), float32 (float64 input
          stays float64)
    """
    images = np.asarray(images)
    if images.dtype != np.float64:
        images = images.astype(np.float32)
    count, height, width = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(rows or 1, math.ceil(count / columns))
    padded = pad_images(images, pad, value)
    tile_h, tile_w = padded.shape[1:]
    canvas = np.full((rows * columns, tile_h, tile_w), value, dtype=images.dtype)
    canvas[:count] = padded
    # (rows, columns, tile_h, tile_w) -> (rows, tile_h, columns, tile_w): rows of tiles side by side.
    canvas = canvas.reshape(rows, columns, tile_h, tile_w).transpose(0, 2, 1, 3)
    return canvas.reshape(rows * tile_h, columns * tile_w)


def normalize_each(images: np.ndarray) -> np.ndarray:
    """Scale each image of ``images`` (N, H, W) to [0, 1] on its own (a constant image -> 0.5)."""
    images = np.asarray(images, dtype=np.float32)
    low = images.min(axis=(1, 2), keepdims=True)
    high = images.max(axis=(1, 2), keepdims=True)
    span = high - low
    scaled = (images - low) / np.where(span > 0, span, 1.0)
    return np.where(span > 0, scaled, 0.5).astype(np.float32)


def tile_channels(images: np.ndarray, columns: int | None = None, pad: int = 1,
                  value: float = 0.0) -> np.ndarray:
    """Tile (N, H, W) images into (rows*(H+2p), columns*(W+2p)), or (N, C, H, W) colour
    images channel by channel into (rows*(H+2p), columns*(W+2p), C), for ``imshow``."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        return tile(images, columns, pad, value)
    return np.stack([tile(images[:, channel], columns, pad, value)
                     for channel in range(images.shape[1])], axis=-1)


def normalize_each_image(images: np.ndarray) -> np.ndarray:
    """Scale each image of (N, H, W) or (N, C, H, W) to [0, 1] on its own, over all of its
    channels together (so a colour image keeps its hues); a constant image -> 0.5."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        return normalize_each(images)
    flat = normalize_each(images.reshape(len(images), images.shape[1], -1))
    return flat.reshape(images.shape)
