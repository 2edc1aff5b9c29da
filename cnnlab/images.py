"""Reading images for ``cnnlab predict`` and preparing them the way MNIST was prepared.

MNIST digits are white ink on black, anti-aliased, scaled so the longer side of the ink is
20 pixels (aspect ratio kept), and pasted into a 28x28 field so that the ink's centre of mass
is at the centre (LeCun et al.'s description of the dataset). :func:`prepare_digit` does the
same to any picture: grayscale, invert when the background is light (decided by the border
pixels), stretch the contrast, crop to the ink, scale, centre by mass.

PNG, JPEG and the other formats Pillow reads need Pillow (``pip install 'cnnlab[plot]'``,
imported only when such a file is read); IDX files (like MNIST's own) are read with NumPy, and
each image of a 3-D IDX array is one input, used as it is when it already has the model's size.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError, DataError, ImageError

MAX_PIXELS = 10_000 * 10_000
# the ink must differ from the background by at least this many gray levels (of 255)
MIN_CONTRAST = 16
# pixels brighter than this fraction of the ink's peak count as ink for the bounding box
INK_THRESHOLD = 0.1
_IDX_TYPE_CODES = {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}


@dataclass
class InputImage:
    """One prepared input: its name (file, or file[index] for IDX) and uint8 (H, W) pixels."""

    name: str
    pixels: np.ndarray


def load_inputs(paths, image_size=(28, 28)) -> list[InputImage]:
    """Read every path (PNG/JPEG/... or IDX) and prepare each image as MNIST.

    Args:
        paths: image files; an IDX file may hold many images.
        image_size: (H, W) the model expects.

    Returns:
        list of :class:`InputImage`, uint8 (H, W), white ink on black.
    """
    inputs = []
    for path in paths:
        path = Path(path)
        if _is_idx(path):
            inputs.extend(_idx_inputs(path, image_size))
        else:
            gray = read_image(path)
            inputs.append(InputImage(str(path), _prepare_named(gray, image_size, path)))
    return inputs


def _prepare_named(gray: np.ndarray, image_size, name) -> np.ndarray:
    try:
        return prepare_digit(gray, image_size)
    except ImageError as error:
        raise ImageError(f"{name}: {error}") from None


# reading

def read_image(path: str | os.PathLike) -> np.ndarray:
    """A picture file as float64 (H, W) gray levels in [0, 255] (Pillow; lazy import).

    Palette, 1-bit, RGB, CMYK and YCbCr images are converted to gray; 16-bit and 32-bit
    images are scaled to [0, 255]; transparent pixels become the background (the colour
    opposite to the ink). EXIF rotation (phone photos) is applied.

    Raises:
        ImageError: missing file, not an image, corrupt, larger than 10,000 x 10,000, or an
            unsupported mode. A CnnlabError when Pillow is not installed.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image; give image files")
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise CnnlabError(f"{path}: reading PNG/JPEG images needs Pillow: "
                          "pip install 'cnnlab[plot]' (IDX files work without it)") from None
    try:
        with warnings.catch_warnings():
            # the size is checked below, before decoding; Pillow's warning would repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"{path}: {width}x{height} pixels is too large (the limit "
                                     f"is {MAX_PIXELS:,} pixels): shrink it first")
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_gray(image, path)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (use PNG, JPEG, BMP, GIF, "
                         "TIFF or an IDX file)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: the image is too large (the limit is {MAX_PIXELS:,} "
                         "pixels): shrink it first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{path}: cannot decode the image, it is truncated or corrupt "
                         f"({' '.join(str(error).split())[:100]})") from None


def _to_gray(image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float64)
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float64) / 257.0
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        return (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_alpha(image.convert("RGBA"), path)
    if mode in ("RGB", "RGBX", "CMYK", "YCbCr"):
        return np.asarray(image.convert("RGB").convert("L"), dtype=np.float64)
    raise ImageError(f"{path}: image mode {mode} is not supported: save it as a grayscale or "
                     "RGB PNG or JPEG")


def _composite_alpha(image, path: Path) -> np.ndarray:
    """Gray levels with transparent pixels set to the background, the colour opposite the ink."""
    rgba = np.asarray(image, dtype=np.float64)
    alpha = rgba[..., 3] / 255.0
    gray = np.asarray(image.convert("RGB").convert("L"), dtype=np.float64)
    if alpha.min() == 1.0:
        return gray
    opaque = alpha > 0.5
    if not opaque.any():
        raise ImageError(f"{path}: the image is fully transparent: nothing to classify")
    background = 255.0 if gray[opaque].mean() < 128 else 0.0
    return gray * alpha + background * (1.0 - alpha)


def _is_idx(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            start = stream.read(4)
    except OSError:
        return False
    if start[:2] == b"\x1f\x8b":
        return "idx" in path.name.lower() or "ubyte" in path.name.lower()
    return len(start) == 4 and start[:2] == b"\x00\x00" and start[2] in _IDX_TYPE_CODES


def _idx_inputs(path: Path, image_size) -> list[InputImage]:
    from cnnlab.data.idx import read_idx

    try:
        array = read_idx(path)
    except DataError as error:
        raise ImageError(str(error)) from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] == 0:
        raise ImageError(f"{path}: IDX array of shape {array.shape} holds no images (expected "
                         "(N, H, W) or (H, W); a 1-D file holds labels)")
    if array.dtype != np.uint8:
        array = _to_uint8_range(array.astype(np.float64))
    inputs = []
    for index, image in enumerate(array):
        name = f"{path}[{index}]" if len(array) > 1 else str(path)
        if image.shape == tuple(image_size):
            inputs.append(InputImage(name, np.ascontiguousarray(image, dtype=np.uint8)))
        else:
            inputs.append(InputImage(name, _prepare_named(image.astype(np.float64), image_size,
                                                          name)))
    return inputs


def _to_uint8_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if 0.0 <= low and high <= 1.0:
        values = values * 255.0
    elif low < 0.0 or high > 255.0:
        values = (values - low) * (255.0 / (high - low)) if high > low else values * 0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# MNIST-style preparation

def prepare_digit(gray: np.ndarray, image_size=(28, 28)) -> np.ndarray:
    """Prepare one picture the way MNIST digits were prepared.

    Steps: make the background dark (invert when the median border pixel is light); subtract
    the background level and stretch the ink to 255; crop to the bounding box of the pixels
    above ``INK_THRESHOLD`` of the peak; scale the longer side to 20/28 of the field
    (anti-aliased, aspect ratio kept); paste so that the centre of mass is at the centre.

    Args:
        gray: (H, W) gray levels in [0, 255], any polarity.
        image_size: (H_out, W_out) of the result, (28, 28) for MNIST.

    Returns:
        uint8 (H_out, W_out), white ink on black.

    Raises:
        ImageError: the image is empty or blank (no contrast between ink and background).
    """
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2 or gray.size == 0:
        raise ImageError(f"expected a 2-D image with pixels, got shape {gray.shape}")
    if not np.isfinite(gray).all():
        raise ImageError("the image has NaN or infinite values")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 127.5:
        gray, background = 255.0 - gray, 255.0 - background
    ink = np.clip(gray - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ImageError(f"the image is blank: the ink differs from the background by at most "
                         f"{peak:.0f} of 255 gray levels")
    ink *= 255.0 / peak
    rows = np.flatnonzero((ink > INK_THRESHOLD * 255.0).any(axis=1))
    columns = np.flatnonzero((ink > INK_THRESHOLD * 255.0).any(axis=0))
    ink = ink[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    scaled = _scale_longer_side(ink, image_size)
    return _paste_centred(scaled, image_size)


def _scale_longer_side(ink: np.ndarray, image_size) -> np.ndarray:
    box = max(1, round(min(image_size) * 20 / 28))
    height, width = ink.shape
    factor = box / max(height, width)
    new_height = max(1, round(height * factor))
    new_width = max(1, round(width * factor))
    return resample_matrix(height, new_height) @ ink @ resample_matrix(width, new_width).T


def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of a triangle (linear) filter, widened when shrinking.

    Like Pillow's anti-aliased bilinear resize: each output pixel averages the input pixels
    within ``max(1, in/out)`` input pixels of its centre, weighted by distance.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    positions = np.arange(in_size) + 0.5
    weights = np.clip(1.0 - np.abs(positions[None, :] - centres[:, None]) / support, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def _paste_centred(scaled: np.ndarray, image_size) -> np.ndarray:
    """Shift by whole pixels so the centre of mass lands at the field's centre (H/2, W/2)."""
    field_height, field_width = image_size
    height, width = scaled.shape
    total = scaled.sum()
    centre_row = (scaled.sum(axis=1) @ np.arange(height)) / total
    centre_column = (scaled.sum(axis=0) @ np.arange(width)) / total
    top = int(np.clip(round(field_height / 2 - centre_row), 0, field_height - height))
    left = int(np.clip(round(field_width / 2 - centre_column), 0, field_width - width))
    canvas = np.zeros(image_size, dtype=np.float64)
    canvas[top:top + height, left:left + width] = scaled
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def to_model_input(pixels: np.ndarray, normalization: dict | None = None) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) normalised as the model was trained.

    Args:
        normalization: the checkpoint's ``meta["normalization"]``: {"kind": "unit" or
            "standard", "mean", "std"}; None means "unit" (pixel / 255).
    """
    from cnnlab.data import to_float

    normalization = normalization or {}
    return to_float(pixels, normalization=normalization.get("kind", "unit"),
                    mean=normalization.get("mean"), std=normalization.get("std"))
