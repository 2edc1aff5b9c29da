"""Reading image files, and preparing a picture the way a model's training images were prepared.

Training images come from IDX files, CIFAR binaries or folders of PNG/JPEG/BMP/WebP files
(cnnlab.data); :func:`decode_image` turns one file into uint8 (C, H, W) pixels and
:func:`resize_pixels` brings them to the training size, for the folders and for
``cnnlab predict`` alike, so a picture given to predict is prepared exactly as the training
pictures were. The checkpoint records how (``meta["preprocess"]``, see
:func:`preprocess_record` and docs/architecture.md):

- ``"digit"`` (MNIST, KMNIST and folders marked as digits): MNIST digits are white ink on
  black, anti-aliased, scaled so the longer side of the ink is 20 pixels (aspect ratio kept),
  and pasted into a 28x28 field so that the ink's centre of mass is at the centre (LeCun et
  al.'s description of the dataset). :func:`prepare_digit` does the same to any picture:
  grayscale, invert when the background is light (decided by the border pixels), stretch the
  contrast, crop to the ink, scale, centre by mass.
- ``"resize"`` (everything else): the training set's channels (grayscale by ITU-R 601-2 luma,
  or RGB), inverted when its background is the opposite of the training images' (light
  against dark), resized to the training size (Pillow's antialiased bilinear filter).
- ``"none"``: channels converted, nothing else; the picture must have the training size.

PNG, JPEG and the other formats Pillow reads need Pillow (``pip install 'cnnlab[images]'``,
imported only when such a file is read); IDX files (like MNIST's own) are read with NumPy, and
each image of a 3-D IDX array is one input.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError, DataError, ImageError, ShapeError

MAX_PIXELS = 10_000 * 10_000
# the ink must differ from the background by at least this many gray levels (of 255)
MIN_CONTRAST = 16
# pixels brighter than this fraction of the ink's peak count as ink for the bounding box
INK_THRESHOLD = 0.1
_IDX_TYPE_CODES = {0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E}
INSTALL_HINT = "pip install 'cnnlab[images]'"
#: The file types read as images in dataset folders (matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: How ``cnnlab predict`` may prepare a picture (see the module docstring).
PREPARATIONS = ("digit", "resize", "none")
#: Pillow modes decoded as colour; every other mode is grayscale.
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "P", "PA")
# a training set's background is "dark" ("light") when at least this share of its images
# have a border darker (lighter) than mid-gray
_POLARITY_SHARE = 0.9


@dataclass
class InputImage:
    """One prepared input: its name (file, or file[index] for IDX) and uint8 (H, W) pixels."""

    name: str
    pixels: np.ndarray


def load_inputs(paths, image_size=(28, 28), preprocess: dict | None = None) -> list[InputImage]:
    """Read every path (PNG/JPEG/... or IDX) and prepare each image as the training images were.

    Args:
        paths: image files; an IDX file may hold many images.
        image_size: (H, W) the model expects, used when ``preprocess`` is None.
        preprocess: a checkpoint's ``meta["preprocess"]`` (:func:`preprocess_record`); None
            means the MNIST digit preparation at ``image_size``, one channel.

    Returns:
        list of :class:`InputImage`: uint8 (H, W) for one channel, (C, H, W) for more.
    """
    if preprocess is None:
        preprocess = preprocess_record("digit", 1, image_size, None)
    kind = preprocess["kind"]
    if kind not in PREPARATIONS:
        raise ImageError(f"unknown preparation '{kind}'; use one of {', '.join(PREPARATIONS)}")
    if kind == "digit" and int(preprocess["channels"]) != 1:
        raise ImageError("the digit preparation makes grayscale images, but this model takes "
                         f"{preprocess['channels']} channels: use --prepare resize")
    inputs = []
    for path in paths:
        path = Path(path)
        if _is_idx(path):
            inputs.extend(_idx_inputs(path, preprocess))
        elif kind == "digit":
            gray = read_image(path)
            inputs.append(InputImage(str(path), _prepare_named(gray, preprocess, path)))
        else:
            pixels = decode_image(path, int(preprocess["channels"]))
            inputs.append(InputImage(str(path), _prepare_named(pixels, preprocess, path)))
    return inputs


def _prepare_named(pixels: np.ndarray, preprocess: dict, name) -> np.ndarray:
    try:
        return prepare(pixels, preprocess)
    except ImageError as error:
        raise ImageError(f"{name}: {error}") from None


def prepare(pixels: np.ndarray, preprocess: dict) -> np.ndarray:
    """One picture prepared as ``preprocess`` says (see the module docstring).

    Args:
        pixels: "digit": (H, W) gray levels in [0, 255]; "resize" and "none": uint8
            (C, H, W) with the training channels (from :func:`decode_image`).
        preprocess: a :func:`preprocess_record`.

    Returns:
        uint8 (H, W) for one channel, (C, H, W) for more, at the training size.
    """
    size = tuple(int(side) for side in preprocess["size"])
    if preprocess["kind"] == "digit":
        return prepare_digit(pixels, size)
    pixels = np.asarray(pixels, dtype=np.uint8)
    if preprocess["kind"] == "resize":
        pixels = match_polarity(pixels, preprocess.get("polarity"))
        pixels = resize_pixels(pixels, size)
    elif pixels.shape[1:] != size:
        raise ImageError(f"the image is {pixels.shape[1]}x{pixels.shape[2]} pixels (height x "
                         f"width) but the model takes {size[0]}x{size[1]}; --prepare none uses "
                         "images as they are: resize it, or use --prepare resize")
    return pixels[0] if len(pixels) == 1 else pixels


def preprocess_record(kind: str, channels: int, size, normalization: dict | None,
                      polarity: str | None = None) -> dict:
    """How a model's training images were prepared: the checkpoint's ``meta["preprocess"]``.

    Args:
        kind: "digit", "resize" or "none": what ``cnnlab predict`` does to a new picture.
        channels: 1 (grayscale) or 3 (RGB).
        size: (H, W) of the training images.
        normalization: {"kind": "unit" or "standard", "mean", "std"} (of pixel / 255).
        polarity: the training images' background, "dark", "light" or "mixed"
            (:func:`background_polarity`).
    """
    return {"kind": kind, "channels": int(channels), "size": [int(side) for side in size],
            "polarity": polarity, "grayscale": "ITU-R 601-2 luma (Pillow mode L)",
            "resize": "bilinear, antialiased (Pillow)",
            "normalization": dict(normalization or {"kind": "unit", "mean": None, "std": None})}


def default_preprocess(meta: dict) -> dict:
    """``meta["preprocess"]``, or for a checkpoint saved before it existed what it implies:
    the digit preparation, except for Fashion-MNIST (resize, dark background)."""
    if isinstance(meta.get("preprocess"), dict):
        return meta["preprocess"]
    shape = tuple(meta.get("input_shape", (1, 28, 28)))
    dataset = meta.get("dataset")
    kind = "resize" if dataset == "fashion-mnist" or shape[0] != 1 else "digit"
    return preprocess_record(kind, shape[0], shape[-2:], meta.get("normalization"),
                             "dark" if dataset == "fashion-mnist" else None)


# reading

def _load_image(path: str | os.PathLike):
    """The decoded, EXIF-rotated Pillow image of ``path``; every failure is an ImageError."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image; give image files")
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise CnnlabError(f"{path}: reading PNG/JPEG images needs Pillow: "
                          f"{INSTALL_HINT} (IDX files work without it)") from None
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
                return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (use PNG, JPEG, BMP, WebP, GIF, "
                         "TIFF or an IDX file)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: the image is too large (the limit is {MAX_PIXELS:,} "
                         "pixels): shrink it first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{path}: cannot decode the image, it is truncated or corrupt "
                         f"({' '.join(str(error).split())[:100]})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A picture file as float64 (H, W) gray levels in [0, 255] (Pillow; lazy import).

    Palette, 1-bit, RGB, CMYK and YCbCr images are converted to gray; 16-bit and 32-bit
    images are scaled to [0, 255]; transparent pixels become the background (the colour
    opposite to the ink). EXIF rotation (phone photos) is applied.

    Raises:
        ImageError: missing file, not an image, corrupt, larger than 10,000 x 10,000, or an
            unsupported mode. A CnnlabError when Pillow is not installed.
    """
    return _to_gray(_load_image(path), Path(path))


def decode_image(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    """A picture file as uint8 (C, H, W) pixels: the way dataset folders are decoded.

    Args:
        channels: 1 (grayscale: ITU-R 601-2 luma, as Pillow's mode "L"), 3 (RGB; a grayscale
            picture gets three equal channels), or None: what the file is (3 for colour and
            palette modes, 1 for the others).

    Transparent pixels become the background (:func:`read_image`); 16-bit images are scaled
    to [0, 255]; EXIF rotation is applied.

    Raises:
        ImageError: as :func:`read_image`.
    """
    path = Path(path)
    image = _load_image(path)
    if channels is None:
        channels = 3 if image.mode in _COLOUR_MODES else 1
    if channels == 1 or image.mode not in _COLOUR_MODES:
        gray = np.clip(np.rint(_to_gray(image, path)), 0, 255).astype(np.uint8)
        return np.repeat(gray[None], channels, axis=0)
    if image.mode in ("RGBA", "PA", "RGBa") or "transparency" in image.info:
        rgb = _composite_alpha_rgb(image.convert("RGBA"), path)
    else:
        rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


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


def _composite_alpha_rgb(image, path: Path) -> np.ndarray:
    """RGB (H, W, 3) uint8 with transparent pixels set to the background, as in
    :func:`_composite_alpha`."""
    rgba = np.asarray(image, dtype=np.float64)
    alpha = rgba[..., 3:] / 255.0
    if alpha.min() == 1.0:
        return rgba[..., :3].astype(np.uint8)
    opaque = alpha[..., 0] > 0.5
    if not opaque.any():
        raise ImageError(f"{path}: the image is fully transparent: nothing to classify")
    background = 255.0 if rgba[..., :3][opaque].mean() < 128 else 0.0
    blended = rgba[..., :3] * alpha + background * (1.0 - alpha)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


# converting pixels

def to_gray(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., 3, H, W) RGB -> (..., 1, H, W) gray by ITU-R 601-2 luma, bit for bit as
    Pillow's ``convert("L")``: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    pixels = np.asarray(pixels)
    red, green, blue = (pixels[..., index:index + 1, :, :].astype(np.uint32) for index in range(3))
    return ((19595 * red + 38470 * green + 7471 * blue + 0x8000) >> 16).astype(np.uint8)


def convert_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., C, H, W) -> (..., channels, H, W): gray to RGB repeats the channel, RGB
    to gray is :func:`to_gray`."""
    have = pixels.shape[-3]
    if have == channels:
        return pixels
    if have == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=-3)
    if have == 3 and channels == 1:
        return to_gray(pixels)
    raise ShapeError(f"cannot convert {have} channels to {channels}; use 1 or 3")


def resize_pixels(pixels: np.ndarray, size) -> np.ndarray:
    """uint8 (C, H, W) -> (C, size[0], size[1]) with Pillow's antialiased bilinear filter
    (the one resize of the training folders and of ``cnnlab predict``)."""
    height, width = (int(side) for side in size)
    if pixels.shape[1:] == (height, width):
        return pixels
    try:
        from PIL import Image
    except ImportError:
        raise CnnlabError(f"resizing images needs Pillow: {INSTALL_HINT}") from None
    channels = pixels.shape[0]
    if channels == 3:
        image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB")
        return np.asarray(image.resize((width, height), Image.BILINEAR)).transpose(2, 0, 1).copy()
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(plane), "L")
                         .resize((width, height), Image.BILINEAR)) for plane in pixels]
    return np.stack(planes)


def border_level(pixels: np.ndarray) -> np.ndarray:
    """The median of each image's border pixels (mean over channels): uint8 (N, C, H, W) or
    (N, H, W) -> (N,) float. Small for a dark background, large for a light one."""
    pixels = np.asarray(pixels, dtype=np.float32)
    gray = pixels if pixels.ndim == 3 else pixels.mean(axis=1)
    border = np.concatenate([gray[:, 0], gray[:, -1], gray[:, 1:-1, 0], gray[:, 1:-1, -1]], axis=1)
    return np.median(border, axis=1)


def background_polarity(pixels: np.ndarray) -> str:
    """"dark" when at least 90% of the images have a border darker than mid-gray (MNIST,
    Fashion-MNIST), "light" when at least 90% have a lighter one, otherwise "mixed"."""
    levels = border_level(pixels)
    dark = float(np.mean(levels < 127.5))
    if dark >= _POLARITY_SHARE:
        return "dark"
    if 1.0 - dark >= _POLARITY_SHARE:
        return "light"
    return "mixed"


def match_polarity(pixels: np.ndarray, polarity: str | None) -> np.ndarray:
    """Invert uint8 (C, H, W) pixels whose background is the opposite of ``polarity``
    ("dark" or "light"; "mixed" or None leaves them as they are)."""
    if polarity not in ("dark", "light"):
        return pixels
    light = bool(border_level(pixels[None])[0] > 127.5)
    return 255 - pixels if light == (polarity == "dark") else pixels


def _is_idx(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            start = stream.read(4)
    except OSError:
        return False
    if start[:2] == b"\x1f\x8b":
        return "idx" in path.name.lower() or "ubyte" in path.name.lower()
    return len(start) == 4 and start[:2] == b"\x00\x00" and start[2] in _IDX_TYPE_CODES


def _idx_inputs(path: Path, preprocess: dict) -> list[InputImage]:
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
    size = tuple(int(side) for side in preprocess["size"])
    inputs = []
    for index, image in enumerate(array):
        name = f"{path}[{index}]" if len(array) > 1 else str(path)
        if preprocess["kind"] == "digit":
            # an IDX image of the model's size is an MNIST-style image already
            pixels = (np.ascontiguousarray(image) if image.shape == size
                      else _prepare_named(image.astype(np.float64), preprocess, name))
        else:
            gray = convert_channels(image[None], int(preprocess["channels"]))
            pixels = _prepare_named(gray, preprocess, name)
        inputs.append(InputImage(name, pixels))
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
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) normalised as the model was
    trained.

    Args:
        normalization: the checkpoint's ``meta["normalization"]``: {"kind": "unit" or
            "standard", "mean", "std"}; None means "unit" (pixel / 255).
    """
    from cnnlab.data import to_float

    normalization = normalization or {}
    return to_float(pixels, normalization=normalization.get("kind", "unit"),
                    mean=normalization.get("mean"), std=normalization.get("std"))
