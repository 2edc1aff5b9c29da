"""Datasets from folders of pictures: one subfolder per class (torchvision's ImageFolder).

Two layouts are read::

    DIR/cat/001.png  DIR/dog/002.jpg  ...           one folder per class; the test split is
                                                    a seeded, stratified share (test_fraction)
    DIR/train/cat/...  DIR/test/cat/...             split already: train/ and test/ (or val/);
    DIR/val/cat/...                                 with both test/ and val/, val/ is the
                                                    validation split

Files ending in .png, .jpg, .jpeg, .bmp or .webp (any case) are images; hidden files and
other files are left out (and counted). Class names are the subfolder names, sorted; label i
is the i-th name. Images are decoded once (:func:`cnnlab.data.images.decode_image`), in parallel
worker processes with a progress bar, into uint8 arrays that the cache keeps
(cnnlab/data/cache.py): the next run with the same folder and options starts at once.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data import cache
from cnnlab.errors import CnnlabError, ConfigError, DataError, ImageError

SPLIT_NAMES = ("train", "test", "val")
TEST_FOLDERS = ("test", "val")
#: the seed of the train/test split of a folder without train/ and test/: fixed, so runs
#: with different --seed values are compared on the same test images
SPLIT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2
#: bad files named in the error message
SHOWN_BAD_FILES = 5
# decoding goes to worker processes when the files after the first chunk would take longer
# than this here: starting the workers costs about as much
_PARALLEL_AFTER = 1.0
_CHUNK = 256
_MAX_WORKERS = 8


@dataclass
class FolderListing:
    """What a folder holds: image files per split and class, before any is decoded."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[int, str]]]    # split -> [(label, path), ...] in sorted order
    split_by_folders: bool
    ignored: int = 0                            # files that are not images (by extension)
    folder_of: dict[str, str] = field(default_factory=dict)   # split -> its folder's name
    stats: list[tuple[str, int, int]] = field(default_factory=list)  # (relative, size, mtime)

    @property
    def count(self) -> int:
        return sum(len(items) for items in self.files.values())


def _image_files(folder: str, relative: str) -> tuple[list[tuple[str, int, int]], int]:
    """The image files under ``folder`` (sorted, recursively) as (path relative to the dataset
    folder, size, mtime_ns), and how many other files there are. os.scandir and plain strings:
    pathlib took 5 s to list 70,000 files, this takes a tenth of that."""
    from cnnlab.data.images import IMAGE_EXTENSIONS

    images, ignored = [], 0
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found, skipped = _image_files(entry.path, f"{relative}/{entry.name}")
            images += found
            ignored += skipped
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            status = entry.stat()
            images.append((f"{relative}/{entry.name}", status.st_size, status.st_mtime_ns))
        else:
            ignored += 1
    return images, ignored


def _class_folders(folder: Path) -> list[Path]:
    return sorted((child for child in folder.iterdir()
                   if child.is_dir() and not child.name.startswith(".")), key=lambda p: p.name)


def looks_like_image_folder(folder: Path) -> bool:
    """True when ``folder`` has a subfolder holding image files (directly or one level down)."""
    from cnnlab.data.images import IMAGE_EXTENSIONS

    for child in _class_folders(folder):
        for grandchild in child.iterdir():
            if grandchild.is_file() and grandchild.name.lower().endswith(IMAGE_EXTENSIONS):
                return True
            if grandchild.is_dir() and any(
                    item.name.lower().endswith(IMAGE_EXTENSIONS) for item in grandchild.iterdir()):
                return True
    return False


def list_folder(folder: str | os.PathLike) -> FolderListing:
    """The classes and image files of ``folder`` (either layout), with each file's size and
    modification time for the cache key.

    Raises:
        DataError: no class folders, a class without images, or a test class missing from train/.
    """
    root = Path(folder)
    subfolders = {child.name: child for child in _class_folders(root)}
    split_by_folders = "train" in subfolders and any(name in subfolders for name in TEST_FOLDERS)
    per_split: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    ignored = 0
    if split_by_folders:
        for split in SPLIT_NAMES:
            if split in subfolders:
                per_split[split] = {}
                for class_folder in _class_folders(subfolders[split]):
                    files, skipped = _image_files(str(class_folder),
                                                  f"{split}/{class_folder.name}")
                    per_split[split][class_folder.name] = files
                    ignored += skipped
        folder_of = {split: split for split in per_split}
        if "test" not in per_split:   # train/ and val/ only: val/ is the test split
            per_split["test"] = per_split.pop("val")
            folder_of = {"train": "train", "test": "val"}
    else:
        per_split["all"], folder_of = {}, {}
        for class_folder in subfolders.values():
            files, skipped = _image_files(str(class_folder), class_folder.name)
            per_split["all"][class_folder.name] = files
            ignored += skipped
    first = "train" if split_by_folders else "all"
    classes = sorted(per_split[first])
    if not classes:
        raise DataError(f"{root}: has no class folders; put each class's images in a folder of "
                        f"its own ({root}/CLASS/IMAGE.png, or {root}/train/CLASS/... and "
                        f"{root}/test/CLASS/...)")
    for name in classes:
        if not per_split[first][name]:
            where = root / ("train" if split_by_folders else "") / name
            raise DataError(f"{where}: holds no PNG, JPEG, BMP or WebP images; every class "
                            "folder needs at least one")
    for split, by_class in per_split.items():
        extra = sorted(set(by_class) - set(classes))
        if extra:
            raise DataError(f"{root / split / extra[0]}: class '{extra[0]}' has {split} images "
                            f"but no folder in {root / first}; add its training images or "
                            "remove the folder from the split")
    files, stats = {}, []
    prefix = str(root) + os.sep
    for split, by_class in per_split.items():
        files[split] = [(label, prefix + item[0]) for label, name in enumerate(classes)
                        for item in by_class.get(name, [])]
        stats += [item for name in classes for item in by_class.get(name, [])]
    return FolderListing(root, classes, files, split_by_folders, ignored, folder_of, stats)


# --------------------------------------------------------------------------- decoding

def _decode_chunk(paths: list[str], channels: int | None, size) -> list:
    """Decode ``paths`` (in a worker process): each an array (C, H, W) or the error's text."""
    from cnnlab.data.images import decode_image, resize_pixels

    results = []
    for path in paths:
        try:
            pixels = decode_image(path, channels)
            results.append(resize_pixels(pixels, size) if size is not None else pixels)
        except ImageError as error:
            results.append(str(error))
    return results


def worker_count(tasks: int) -> int:
    """Worker processes for ``tasks`` chunks: one per available core, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_WORKERS, tasks))


def _decode_all(paths: list, channels, size, progress: bool, description: str) -> list:
    """Decode ``paths`` in order: the first chunk here, and the rest in worker processes
    when that chunk's pace says the rest would take more than :data:`_PARALLEL_AFTER`
    seconds here (starting workers costs ~0.3-1 s: they import NumPy and Pillow)."""
    from cnnlab.utils.progress import ProgressBar

    texts = [str(path) for path in paths]
    chunks = [texts[start:start + _CHUNK] for start in range(0, len(texts), _CHUNK)]
    results: list = [None] * len(chunks)
    bar = ProgressBar(len(texts), description, unit="img", enabled=progress)
    try:
        started = time.perf_counter()
        results[0] = _decode_chunk(chunks[0], channels, size)
        bar.update(len(chunks[0]))
        remaining = (time.perf_counter() - started) / len(chunks[0]) * (len(texts) - len(chunks[0]))
        workers = worker_count(len(chunks) - 1)
        if workers > 1 and remaining > _PARALLEL_AFTER:
            # forkserver: the training process has threads (BLAS, the GEMM pool), which a
            # plain fork would copy in whatever state they are in
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() \
                else "spawn"
            with concurrent.futures.ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context(method)) as pool:
                futures = {pool.submit(_decode_chunk, chunks[index], channels, size): index
                           for index in range(1, len(chunks))}
                for future in concurrent.futures.as_completed(futures):
                    index = futures[future]
                    results[index] = future.result()
                    bar.update(len(chunks[index]))
        else:
            for index in range(1, len(chunks)):
                results[index] = _decode_chunk(chunks[index], channels, size)
                bar.update(len(chunks[index]))
    finally:
        bar.close()
    return [item for chunk in results for item in chunk]


def _size_text(shape) -> str:
    return f"{shape[-2]}x{shape[-1]}"


def _check_sizes(decoded: list, paths: list[Path], root: Path) -> None:
    sizes: dict[tuple, list[Path]] = {}
    for pixels, path in zip(decoded, paths):
        if not isinstance(pixels, str):
            sizes.setdefault(pixels.shape[1:], []).append(path)
    if len(sizes) > 1:
        ranked = sorted(sizes.items(), key=lambda item: -len(item[1]))
        counts = ", ".join(f"{len(files)} {'is' if len(files) == 1 else 'are'} "
                           f"{_size_text(shape)} (e.g. {files[0]})" for shape, files in ranked[:3])
        raise DataError(f"{root}: the images have {len(sizes)} different sizes (height x width): "
                        f"{counts}; give --image-size to resize them all, e.g. --image-size "
                        f"{_size_text(ranked[0][0])}")


def decode_folder(listing: FolderListing, channels: int | None = None, size=None,
                  progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Decode every image of ``listing``, or read them from the cache.

    Returns:
        arrays {"images": uint8 (N, C, H, W), "labels": int64 (N,), "splits": uint8 (N,)
        (index into the listing's split names)} and info {"splits": names, "bad": [[path,
        message], ...], "seconds": decoding time, "cached": bool, "cache": path}.
    """
    options = {"channels": channels, "size": list(size) if size is not None else None}
    key = cache.content_key(listing.stats, options)
    path = cache.entry_path(listing.root, options)
    entry = cache.load_entry(path, key)
    if entry is not None:
        arrays, info = entry
        return arrays, dict(info, cached=True, cache=str(path))
    split_names = list(listing.files)
    paths = [item for split in split_names for _, item in listing.files[split]]
    labels = np.array([label for split in split_names for label, _ in listing.files[split]],
                      dtype=np.int64)
    splits = np.array([index for index, split in enumerate(split_names)
                       for _ in listing.files[split]], dtype=np.uint8)
    started = time.perf_counter()
    decoded = _decode_all(paths, channels, size, progress, f"decoding {listing.root.name}")
    seconds = time.perf_counter() - started
    bad = [[str(item), message] for item, message in zip(paths, decoded) if isinstance(message, str)]
    good = np.array([not isinstance(item, str) for item in decoded], dtype=bool)
    if size is None:
        _check_sizes(decoded, paths, listing.root)
    pixels = [item for item in decoded if not isinstance(item, str)]
    if not pixels:
        raise DataError(f"{listing.root}: none of its {len(paths)} image files can be decoded "
                        f"(first: {bad[0][1]})")
    target = max(item.shape[0] for item in pixels)  # channels None: colour wins over gray
    images = np.stack([item if item.shape[0] == target else np.repeat(item, target, axis=0)
                       for item in pixels])
    arrays = {"images": images, "labels": labels[good], "splits": splits[good]}
    info = {"splits": split_names, "bad": bad, "seconds": seconds, "source": str(listing.root),
            "classes": listing.classes}
    stored = cache.save_entry(path, key, arrays, info)
    return arrays, dict(info, cached=False, cache=str(path) if stored else None)


# --------------------------------------------------------------------------- the dataset

def parse_image_size(text) -> tuple[int, int] | None:
    """ "32" -> (32, 32), "48x64" -> (48, 64) (height x width); None stays None."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)) and len(text) == 2:
        parts = [str(side) for side in text]
    else:
        parts = str(text).lower().replace(",", "x").split("x")
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1 or max(size) > 4096:
        raise ConfigError(f"--image-size must be H or HxW (height x width, 1 to 4096 pixels), "
                          f"like 32 or 48x64, got '{text}'")
    return size


def load_image_folder(folder: str | os.PathLike, channels: int | None = None, image_size=None,
                      test_fraction: float = DEFAULT_TEST_FRACTION,
                      skip_bad_images: bool = False, progress: bool = True):
    """A :class:`cnnlab.data.Dataset` from a folder of class folders (module docstring).

    Args:
        channels: 1 or 3; None: 3 when any image is in colour, otherwise 1.
        image_size: (H, W) every image is resized to; None: the images' own size, which
            must then be the same for all (otherwise a DataError suggests --image-size).
        test_fraction: the test share of a folder without train/ and test/ subfolders,
            split per class with the fixed :data:`SPLIT_SEED`.
        skip_bad_images: leave out files that cannot be decoded (they are listed in
            ``Dataset.skipped``) instead of raising a DataError naming the first ones.
        progress: a progress bar while decoding.
    """
    from cnnlab.data.datasets import Dataset
    from cnnlab.data.loader import split_validation

    if channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    size = parse_image_size(image_size)
    listing = list_folder(folder)
    arrays, info = decode_folder(listing, channels, size, progress)
    bad = info["bad"]
    if bad and not skip_bad_images:
        shown = "; ".join(f"{message}" for _, message in bad[:SHOWN_BAD_FILES])
        more = f" and {len(bad) - SHOWN_BAD_FILES} more" if len(bad) > SHOWN_BAD_FILES else ""
        raise DataError(f"{listing.root}: {len(bad)} of {listing.count} image files cannot be "
                        f"decoded: {shown}{more}; replace them, or pass --skip-bad-images to "
                        "train without them")
    images, labels = arrays["images"], arrays["labels"]
    if images.shape[1] == 1:
        images = images[:, 0]                     # grayscale: (N, H, W), like the IDX datasets
    split_of = {name: index for index, name in enumerate(info["splits"])}
    parts = {name: np.flatnonzero(arrays["splits"] == index) for name, index in split_of.items()}
    val_images = val_labels = None
    if listing.split_by_folders:
        train, test = parts["train"], parts["test"]
        if len(test) == 0:
            raise DataError(f"{listing.root}: the test folder holds no images that can be decoded")
        if "val" in parts:
            val_images, val_labels = images[parts["val"]], labels[parts["val"]]
        train_images, train_labels = images[train], labels[train]
        test_images, test_labels = images[test], labels[test]
        layout = "split by folders: " + ", ".join(
            f"{listing.folder_of[name]}/ ({role})" for name, role in
            (("train", "training"), ("test", "test"), ("val", "validation")) if name in parts)
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"--test-fraction must be between 0 and 1 (exclusive), "
                              f"got {test_fraction}")
        train_images, train_labels, test_images, test_labels = split_validation(
            images, labels, test_fraction, SPLIT_SEED, what="test")
        layout = f"class folders, {test_fraction:g} of each class held out for testing"
    if len(train_labels) == 0:
        raise DataError(f"{listing.root}: no training image can be decoded")
    dataset = Dataset(
        name=listing.root.resolve().name or str(listing.root), classes=list(listing.classes),
        train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels,
        source=str(listing.root), verified=False, val_images=val_images, val_labels=val_labels,
        skipped=[path for path, _ in bad], kind="images", layout=layout,
        cache={"path": info.get("cache"), "hit": info["cached"], "seconds": info["seconds"],
               "ignored_files": listing.ignored})
    return dataset
