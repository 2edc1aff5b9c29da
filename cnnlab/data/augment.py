"""Data augmentation for training batches: random shifts, horizontal flips, small rotations.

``--augment shift:2,flip,rotate:10`` (:func:`parse_augment`) gives each training image of a
batch, independently:

- ``flip``: a mirror image (left-right) with probability 1/2. A mirror image of a digit or
  a letter is another character (or none), so flips are refused for digit datasets (MNIST,
  KMNIST, folders marked ``--digits``); ``flip:force`` allows them anyway.
- ``shift:S``: a move by a whole number of pixels, dy and dx each uniform in -S..S, the
  uncovered border filled with 0 (black), as torchvision's ``RandomCrop(size, padding=S)``.
- ``rotate:D``: a rotation about the centre by an angle uniform in [-D, D] degrees, sampled
  bilinearly (the shift is applied in the same pass), outside pixels 0.

Every batch draws from ``np.random.default_rng([seed, epoch, batch])``: no generator state
to save, so a resumed run augments every batch exactly as the uninterrupted run did, and the
number of threads changes nothing. The work is a few vectorised NumPy passes over the uint8
batch (benchmarks/augment.py measures it against a training step).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import ConfigError

KINDS = ("shift", "flip", "rotate")
DEFAULTS = {"shift": 2, "rotate": 10.0}
_EXAMPLE = "e.g. --augment shift:2,flip,rotate:10"


@dataclass(frozen=True)
class Augmentation:
    """What to do to each training image (see the module docstring)."""

    shift: int = 0           # pixels, each direction
    flip: bool = False
    rotate: float = 0.0      # degrees, each direction
    force_flip: bool = False

    @property
    def spec(self) -> str:
        """The canonical ``--augment`` text ("shift:2,flip,rotate:10")."""
        parts = []
        if self.shift:
            parts.append(f"shift:{self.shift}")
        if self.flip:
            parts.append("flip:force" if self.force_flip else "flip")
        if self.rotate:
            parts.append(f"rotate:{self.rotate:g}")
        return ",".join(parts)

    def check(self, input_shape, digits: bool, dataset: str) -> None:
        """ConfigError when this does not suit the data: a flip of digits, a shift as large
        as half the image."""
        if self.flip and digits and not self.force_flip:
            raise ConfigError(f"--augment flip: {dataset} holds digits or characters, and a "
                              "mirrored character is another one (or none); leave flip out, or "
                              "write flip:force if a mirror image keeps your classes")
        height, width = input_shape[-2:]
        if 2 * self.shift >= min(height, width):
            raise ConfigError(f"--augment shift:{self.shift} would move a {height}x{width} image "
                              f"out of view; use at most shift:{max(1, (min(height, width) - 1) // 2)}")

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment uint8 (B, C, H, W) images with draws from ``rng``; returns a new array."""
        count = len(batch)
        out = batch
        if self.flip:
            flipped = rng.random(count) < 0.5
            out = batch.copy()
            out[flipped] = batch[flipped, :, :, ::-1]
        shifts = (rng.integers(-self.shift, self.shift + 1, size=(count, 2))
                  if self.shift else np.zeros((count, 2), dtype=np.int64))
        if self.rotate:
            angles = np.deg2rad(rng.uniform(-self.rotate, self.rotate, size=count))
            return rotate_and_shift(out, angles, shifts)
        if self.shift:
            return shift(out, shifts)
        return out if out is not batch else batch.copy()


def parse_augment(text: str | None) -> Augmentation | None:
    """``"shift:2,flip,rotate:10"`` -> :class:`Augmentation`; None or "" -> None.

    ``shift`` alone means shift:2, ``rotate`` alone rotate:10.
    """
    if text is None or not str(text).strip() or str(text).strip().lower() == "none":
        return None
    values: dict = {}
    force_flip = False
    for item in str(text).replace(" ", "").lower().split(","):
        if not item:
            continue
        name, _, value = item.partition(":")
        if name not in KINDS:
            close = difflib.get_close_matches(name, KINDS, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"--augment: unknown augmentation '{name}'{hint}; use "
                              f"{', '.join(KINDS)} ({_EXAMPLE})")
        if name in values:
            raise ConfigError(f"--augment: '{name}' is given twice ({_EXAMPLE})")
        if name == "flip":
            if value not in ("", "force"):
                raise ConfigError(f"--augment: flip takes no value, or 'force' (flip:force) to "
                                  f"flip digits anyway; got flip:{value}")
            force_flip = value == "force"
            values[name] = True
        elif name == "shift":
            try:
                pixels = int(value) if value else DEFAULTS["shift"]
            except ValueError:
                pixels = -1
            if not 1 <= pixels <= 64:
                raise ConfigError(f"--augment: shift takes a whole number of pixels from 1 to 64, "
                                  f"like shift:2; got shift:{value}")
            values[name] = pixels
        else:
            try:
                degrees = float(value) if value else DEFAULTS["rotate"]
            except ValueError:
                degrees = math.nan
            if not 0 < degrees <= 180:
                raise ConfigError(f"--augment: rotate takes degrees above 0 and at most 180, like "
                                  f"rotate:10; got rotate:{value}")
            values[name] = degrees
    if not values:
        return None
    return Augmentation(shift=values.get("shift", 0), flip=values.get("flip", False),
                        rotate=values.get("rotate", 0.0), force_flip=force_flip)


def shift(batch: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Move image b by ``shifts[b] = (dy, dx)`` pixels (down, right), filling with 0.

    Shape:
        batch: (B, C, H, W); shifts: (B, 2) integers; output: (B, C, H, W)
    """
    count, _, height, width = batch.shape
    pad = int(np.abs(shifts).max(initial=0))
    if pad == 0:
        return batch.copy()
    padded = np.pad(batch, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # windows[b, c, i, j] is the H x W window whose top-left corner is (i, j) of the padding
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(2, 3))
    return windows[np.arange(count), :, pad - shifts[:, 0], pad - shifts[:, 1]]


def rotate_and_shift(batch: np.ndarray, angles: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Rotate image b by ``angles[b]`` radians (counter-clockwise as displayed) about its
    centre, then move it by ``shifts[b]`` (dy, dx), in one bilinear pass; pixels from outside
    the image are 0.

    Output pixel p takes the input at ``R(-angle) (p - c - shift) + c`` (c the centre, in
    (row, column) coordinates), interpolated between its four neighbours.

    Shape:
        batch: uint8 (B, C, H, W); angles: (B,); shifts: (B, 2); output: uint8 (B, C, H, W)
    """
    count, channels, height, width = batch.shape
    centre_y, centre_x = (height - 1) / 2.0, (width - 1) / 2.0
    rows = (np.arange(height, dtype=np.float32)[None, :, None] - np.float32(centre_y)
            - shifts[:, 0, None, None].astype(np.float32))
    columns = (np.arange(width, dtype=np.float32)[None, None, :] - np.float32(centre_x)
               - shifts[:, 1, None, None].astype(np.float32))
    cos = np.cos(angles).astype(np.float32)[:, None, None]
    sin = np.sin(angles).astype(np.float32)[:, None, None]
    # where each output pixel comes from; rows grow downwards, hence the signs
    source_y = cos * rows + sin * columns + np.float32(centre_y + 2)   # +2: the zero border
    source_x = cos * columns - sin * rows + np.float32(centre_x + 2)
    top = np.floor(source_y)
    left = np.floor(source_x)
    weight_y = source_y - top
    weight_x = source_x - left
    # two pixels of 0 around each image: a neighbour outside the image reads 0, and a source
    # far outside is clamped to where both of its neighbours are border
    stride, plane = width + 4, (height + 4) * (width + 4)
    flat = np.pad(batch, ((0, 0), (0, 0), (2, 2), (2, 2))).reshape(-1)
    top = np.clip(top, 0, height + 2, out=top).astype(np.intp)
    left = np.clip(left, 0, width + 2, out=left).astype(np.intp)
    corner = (top * stride + left).reshape(count, 1, -1)
    corner = corner + (np.arange(count * channels, dtype=np.intp) * plane).reshape(count, channels, 1)
    weight_y = weight_y.reshape(count, 1, -1)
    weight_x = weight_x.reshape(count, 1, -1)
    upper = flat[corner] * (1 - weight_x) + flat[corner + 1] * weight_x
    lower = flat[corner + stride] * (1 - weight_x) + flat[corner + stride + 1] * weight_x
    result = upper + (lower - upper) * weight_y
    return np.rint(result, out=result).astype(np.uint8).reshape(batch.shape)
