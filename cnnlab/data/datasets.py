"""Finding, verifying and loading datasets: named ones (mnist, fashion-mnist, kmnist), a
folder holding the four MNIST-format files, CIFAR binary files (cnnlab/data/cifar.py) or
class folders of pictures (cnnlab/data/folders.py).

Where a named dataset is looked for, in order (the first folder holding all four files
wins; see docs/data.md):

1. the ``data_dir`` argument (``--data-dir``): ``DIR/<name>/``, then ``DIR/`` itself;
2. ``$CNNLAB_DATA_DIR/<name>/``;
3. the user cache: ``$XDG_CACHE_HOME/cnnlab/<name>/`` or ``~/.cache/cnnlab/<name>/``;
4. system folders: ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist``),
   overridable with ``$CNNLAB_SYSTEM_DATA_DIRS`` (paths separated by ``os.pathsep``);
5. otherwise the files are downloaded into ``DIR/<name>/`` (with ``data_dir``) or the cache.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data.download import download_file
from cnnlab.data.idx import IdxContent, decode_idx, read_file_bytes
from cnnlab.data.registry import DATASETS, FILE_NAMES, DatasetInfo, canonical_name, get_dataset_info
from cnnlab.errors import ConfigError, DataError, DownloadError

SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)
CLASSES_FILE = "classes.txt"
_KEY_TEXT = {"train_images": "training images", "train_labels": "training labels",
             "test_images": "test images", "test_labels": "test labels"}


@dataclass
class Dataset:
    """A loaded dataset: uint8 images and int64 labels for the training and test splits.

    Attributes:
        name: the registry name, or the folder's name for a user dataset.
        classes: class names, index = label.
        train_images: uint8 (N_train, H, W) for grayscale, (N_train, C, H, W) for colour.
        train_labels: (N_train,) int64.
        test_images, test_labels: the same for the test split.
        source: the folder the files were read from.
        verified: True when every file matched its published checksum.
        files: key ("train_images", ...) -> path of the file read.
        verification: key -> how that file was verified ("md5", "sha256", "structure").
        val_images, val_labels: a validation split the data came with (a folder's val/), or None.
        digits: handwritten digits or characters (MNIST, KMNIST, or a folder marked so):
            predict prepares pictures like MNIST digits, and flips are refused.
        kind: "idx", "cifar" or "images" (a folder of pictures).
        layout: how the splits were found, in words.
        skipped: image files left out because they could not be decoded.
        cache: for a folder of pictures, {"path", "hit", "seconds", "ignored_files"}.
    """

    name: str
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    verified: bool
    files: dict[str, str] = field(default_factory=dict)
    verification: dict[str, str] = field(default_factory=dict)
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    digits: bool = False
    kind: str = "idx"
    layout: str = "IDX files"
    skipped: list[str] = field(default_factory=list)
    cache: dict | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return tuple(self.train_images.shape[-2:])

    @property
    def channels(self) -> int:
        return 1 if self.train_images.ndim == 3 else int(self.train_images.shape[1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W): what a model of this dataset takes."""
        return (self.channels,) + self.image_shape

    def splits(self):
        """(name, images, labels) of each split: train, test, and val when there is one."""
        yield "train", self.train_images, self.train_labels
        yield "test", self.test_images, self.test_labels
        if self.val_images is not None:
            yield "val", self.val_images, self.val_labels


# ----------------------------------------------------------------------------- folders

def cache_root() -> Path:
    """``$XDG_CACHE_HOME/cnnlab`` or ``~/.cache/cnnlab``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnlab"


def system_roots() -> list[Path]:
    """System-wide dataset roots: ``$CNNLAB_SYSTEM_DATA_DIRS`` or :data:`SYSTEM_DATA_DIRS`."""
    value = os.environ.get("CNNLAB_SYSTEM_DATA_DIRS")
    roots = value.split(os.pathsep) if value is not None else SYSTEM_DATA_DIRS
    return [Path(root) for root in roots if root]


def search_folders(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders looked in for the named dataset ``name``, in order."""
    folders = []
    if data_dir is not None:
        folders += [Path(data_dir) / name, Path(data_dir)]
    if os.environ.get("CNNLAB_DATA_DIR"):
        folders.append(Path(os.environ["CNNLAB_DATA_DIR"]) / name)
    folders.append(cache_root() / name)
    folders += [root / name for root in system_roots()]
    return folders


def download_folder(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where a download of ``name`` goes: ``data_dir/<name>`` or the user cache."""
    return (Path(data_dir) if data_dir is not None else cache_root()) / name


def _candidates(standard_name: str) -> list[str]:
    """Accepted names for a file: the .gz, the uncompressed one, and the dotted variant."""
    raw = standard_name[:-3]
    dotted = raw.replace("-idx", ".idx")  # "train-images.idx3-ubyte", as some unzippers make
    return [standard_name, raw, dotted + ".gz", dotted]


SPLITS = ("train", "test")


def split_keys(splits=SPLITS) -> list[str]:
    """The file keys of ``splits``: ("test",) -> ["test_images", "test_labels"]."""
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise ConfigError(f"unknown split {unknown[0] if unknown else '(none)'}: use "
                          f"{' and/or '.join(SPLITS)}")
    return [key for key in FILE_NAMES if key.split("_")[0] in splits]


def find_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The dataset files present in ``folder``: key -> path (missing keys are absent)."""
    folder = Path(folder)
    found = {}
    for key, standard_name in FILE_NAMES.items():
        for candidate in _candidates(standard_name):
            path = folder / candidate
            if path.is_file():
                found[key] = path
                break
    return found


def locate(name: str, data_dir: str | os.PathLike | None = None, splits=SPLITS) -> Path | None:
    """The first search folder holding the files of ``splits`` (default: all four files) of
    dataset ``name``, or None."""
    keys = split_keys(splits)
    for folder in search_folders(name, data_dir):
        found = find_files(folder)
        if all(key in found for key in keys):
            return folder
    return None


# ------------------------------------------------------------------------ verification

def _verify(content: IdxContent, data: bytes, info: DatasetInfo, key: str, path: Path) -> str:
    """How the file matched ("md5" or "sha256"); DataError if it matches neither."""
    expected = info.files[key]
    if expected.md5 and content.compressed and hashlib.md5(data).hexdigest() == expected.md5:
        return "md5"
    if expected.sha256:
        digest = hashlib.sha256(content.header)
        digest.update(memoryview(content.payload))
        if digest.hexdigest() == expected.sha256:
            return "sha256"
    if expected.md5 and not content.compressed and not expected.sha256:
        raise DataError(f"{path}: cannot be checked against {info.name}'s published "
                        f"{expected.name}: {info.name} publishes only the MD5 of the .gz, so "
                        f"keep the file compressed as downloaded")
    raise DataError(f"{path}: is not the published {info.name} file {expected.name} (its "
                    f"checksum differs: other data, altered or damaged); to train on your own "
                    f"files give their folder as --dataset {path.parent}; for the published "
                    f"{info.name}, run 'cnnlab data download {info.name}' (into the cache, or "
                    f"--data-dir with another folder)")


def verify_file(path: str | os.PathLike, name: str, key: str) -> str:
    """Check one file of a named dataset against its published checksums.

    Args:
        path: the file (.gz or decompressed).
        name: dataset name, e.g. "mnist".
        key: "train_images", "train_labels", "test_images" or "test_labels".

    Returns:
        "md5" when the .gz matched the published MD5, "sha256" when the decompressed content
        matched (a recompressed or un-gzipped copy).

    Raises:
        DataError: the file is unreadable, not valid IDX, or matches neither checksum.
    """
    info = get_dataset_info(name)
    if key not in FILE_NAMES:
        raise ConfigError(f"unknown file key '{key}'; use one of {', '.join(FILE_NAMES)}")
    path = Path(path)
    data = read_file_bytes(path)
    return _verify(decode_idx(data, str(path)), data, info, key, path)


# ----------------------------------------------------------------------------- loading

def _read_split(files: dict[str, Path], info: DatasetInfo | None):
    """Read the four files; returns arrays and how each was verified."""
    arrays, verification = {}, {}
    for key, path in files.items():
        data = read_file_bytes(path)
        content = decode_idx(data, str(path))
        verification[key] = _verify(content, data, info, key, path) if info else "structure"
        arrays[key] = content.array
        del data
    return arrays, verification


def _check_split(images: np.ndarray, labels: np.ndarray, split: str, files: dict[str, Path]):
    images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
    if images.ndim != 3:
        raise DataError(f"{images_path}: holds an array of shape {images.shape}; {split} images "
                        f"must be 3-D (count, height, width)")
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: holds {images.dtype} values; images must be 0-255 "
                        f"unsigned bytes (IDX type 0x08)")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds an array of shape {labels.shape}; labels must be "
                        f"1-D (count,)")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path}: holds {labels.dtype} values; labels must be integers")
    if len(images) != len(labels):
        raise DataError(f"{images_path.name} has {len(images)} images but {labels_path.name} has "
                        f"{len(labels)} labels (in {images_path.parent}); the files do not belong "
                        f"together: replace them with a matching pair")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images; the {split} split must not be empty")
    if labels.min() < 0:
        raise DataError(f"{labels_path}: has a negative label ({int(labels.min())}); labels must "
                        f"be class indices 0..K-1")


def _check_labels_in_range(labels: np.ndarray, path: Path, classes: list[str], origin: str):
    largest = int(labels.max())
    if largest >= len(classes):
        raise DataError(f"{path}: has label {largest} but {origin} names only {len(classes)} "
                        f"classes (labels 0..{len(classes) - 1})")


def _read_classes_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({error})") from None
    classes = [line.strip() for line in text.splitlines() if line.strip()]
    if not classes:
        raise DataError(f"{path}: has no class names; write one name per line")
    return classes


def _check_no_gaps(label_files: dict[str, np.ndarray], folder: Path) -> None:
    """Class indices taken from the labels must all occur: one stray label 200 among 0-9 would
    otherwise make a 201-class problem."""
    found = np.unique(np.concatenate(list(label_files.values())))
    if len(found) == int(found[-1]) + 1:
        return
    missing = np.setdiff1d(np.arange(int(found[-1]) + 1), found)
    raise DataError(f"{folder}: the labels found are {_ranges(found)}, so no image has label "
                    f"{_ranges(missing)}; fix the stray labels, or if these really are "
                    f"{int(found[-1]) + 1} classes, name them in {folder / CLASSES_FILE} "
                    f"(one name per line, line k for label k)")


def _ranges(values: np.ndarray) -> str:
    """[0 1 2 3 7 200] -> "0-3, 7, 200" (at most 8 runs shown)."""
    runs, start = [], int(values[0])
    for previous, value in zip(values[:-1], values[1:]):
        if value != previous + 1:
            runs.append((start, int(previous)))
            start = int(value)
    runs.append((start, int(values[-1])))
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:8]]
    return ", ".join(text) + (f", ... ({len(runs) - 8} more runs)" if len(runs) > 8 else "")


def _build(name: str, folder: Path, files: dict[str, Path], info: DatasetInfo | None) -> Dataset:
    arrays, verification = _read_split(files, info)
    splits = [split for split in SPLITS if f"{split}_labels" in files]
    for split in splits:
        _check_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, files)
    if "train_images" not in arrays:  # a test-only load (cnnlab evaluate): an empty train split
        image_shape = arrays["test_images"].shape[1:]
        arrays["train_images"] = np.zeros((0, *image_shape), np.uint8)
        arrays["train_labels"] = np.zeros(0, np.int64)
    if "test_images" not in arrays:
        arrays["test_images"] = np.zeros((0, *arrays["train_images"].shape[1:]), np.uint8)
        arrays["test_labels"] = np.zeros(0, np.int64)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(f"{folder}: training images are {arrays['train_images'].shape[1:]} but "
                        f"test images are {arrays['test_images'].shape[1:]}; "
                        f"both must have one size")
    if info is not None:
        classes, origin = list(info.classes), f"dataset {info.name}"
    elif (folder / CLASSES_FILE).is_file():
        classes, origin = _read_classes_file(folder / CLASSES_FILE), str(folder / CLASSES_FILE)
    else:
        if "train" in splits:  # a test-only load takes its classes from the model
            _check_no_gaps({split: arrays[f"{split}_labels"] for split in splits}, folder)
        top = max(int(arrays[f"{split}_labels"].max()) for split in splits)
        classes, origin = [str(label) for label in range(top + 1)], "the labels"
    for split in splits:
        _check_labels_in_range(arrays[f"{split}_labels"], files[f"{split}_labels"], classes, origin)
    return Dataset(
        name=name, classes=classes,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        source=str(folder), verified=info is not None,
        files={key: str(path) for key, path in files.items()}, verification=verification,
    )


def load_folder(folder: str | os.PathLike, info: DatasetInfo | None = None,
                splits=SPLITS) -> Dataset:
    """Load the four files in ``folder`` (or those of ``splits``: ("test",) leaves the training
    split empty); verified against ``info`` when given.

    Without ``info`` (a user's own data) only the structure is checked: valid IDX, images
    3-D uint8, labels 1-D integers, counts agreeing, labels within the classes (from
    ``classes.txt``, one name per line, or "0".."K-1", where every label 0..K-1 must occur).
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: no such folder; give a dataset name "
                        f"({', '.join(DATASETS)}) or a folder holding the four IDX files")
    if not folder.is_dir():
        raise DataError(f"{folder}: is not a folder; give a dataset name "
                        f"({', '.join(DATASETS)}) or a folder holding the four IDX files")
    keys = split_keys(splits)
    files = {key: path for key, path in find_files(folder).items() if key in keys}
    missing = [FILE_NAMES[key] for key in keys if key not in files]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (the .gz or uncompressed); a "
                        f"dataset folder holds {', '.join(FILE_NAMES.values())}")
    name = info.name if info else (folder.resolve().name or str(folder))
    dataset = _build(name, folder, files, info)
    dataset.digits = info is not None and info.digits
    return dataset


def load_user_folder(folder: str | os.PathLike, channels: int | None = None, image_size=None,
                     test_fraction: float | None = None, skip_bad_images: bool = False,
                     progress: bool = True, splits=SPLITS) -> Dataset:
    """A user's folder, whatever it holds: the four IDX files, CIFAR binary batches, or class
    folders of pictures (``DIR/CLASS/*.png``, optionally under ``train/`` and ``test/``).
    ``splits`` as in :func:`load_dataset` (IDX folders read only those files)."""
    from cnnlab.data import cifar, folders

    folder = Path(folder)
    if folder.is_dir() and not find_files(folder):
        if cifar.find_cifar(folder) is not None:
            return adapt_images(cifar.load_cifar(folder), channels, image_size)
        if folders.looks_like_image_folder(folder):
            return folders.load_image_folder(
                folder, channels, image_size,
                folders.DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
                skip_bad_images, progress)
        raise DataError(f"{folder}: holds no dataset; use the four IDX files "
                        f"({', '.join(FILE_NAMES.values())}), CIFAR binary batches "
                        "(data_batch_1.bin ... test_batch.bin), or one folder of images per "
                        f"class ({folder}/CLASS/IMAGE.png, see docs/data.md)")
    return adapt_images(load_folder(folder, splits=splits), channels, image_size)


def adapt_images(dataset: Dataset, channels: int | None = None, image_size=None) -> Dataset:
    """``dataset`` with its images converted to ``channels`` and resized to ``image_size``
    (the conversions of cnnlab.data.images, as for folders of pictures); None keeps them."""
    from cnnlab.data.folders import parse_image_size
    from cnnlab.data.images import convert_channels, resize_pixels

    if channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    size = parse_image_size(image_size)
    if (channels in (None, dataset.channels)) and size in (None, dataset.image_shape):
        return dataset

    def convert(images):
        if images is None:
            return None
        batch = images[:, None] if images.ndim == 3 else images
        batch = convert_channels(batch, channels or batch.shape[1])
        if size is not None and batch.shape[-2:] != size:
            batch = np.stack([resize_pixels(image, size) for image in batch])
        return batch[:, 0] if batch.shape[1] == 1 else batch

    dataset.train_images = convert(dataset.train_images)
    dataset.test_images = convert(dataset.test_images)
    dataset.val_images = convert(dataset.val_images)
    return dataset


def _looks_like_path(text: str) -> bool:
    return os.sep in text or (os.altsep or os.sep) in text or text.startswith((".", "~"))


def load_dataset(name_or_folder: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 download: bool = True, progress: bool = True,
                 timeout: float | None = None, channels: int | None = None, image_size=None,
                 test_fraction: float | None = None, skip_bad_images: bool = False,
                 splits=SPLITS) -> Dataset:
    """Load a named dataset (finding or downloading it) or a folder: IDX files, CIFAR binary
    batches, or class folders of pictures (see :func:`load_user_folder`).

    Args:
        name_or_folder: "mnist", "fashion-mnist", "kmnist", or a folder path. A registry
            name wins over a folder of the same name; write "./mnist" for the folder.
        data_dir: a folder to look in first (``DIR/<name>/``, then ``DIR/``); downloads go to
            ``DIR/<name>/``. Default: the search order in this module's docstring.
        download: fetch a named dataset that is not found anywhere.
        progress: show download progress, and say on standard error when a folder's data is
            not verified.
        timeout: seconds a download may wait to connect or for data (default 30).
        channels: 1 or 3 to convert the images to (None: as they are).
        image_size: (H, W) or "HxW" to resize them to (None: as they are).
        test_fraction: a picture folder without train/ and test/: the test share (default 0.2).
        skip_bad_images: a picture folder: leave out files that cannot be decoded.
        splits: the splits needed: ("test",) for an evaluation, which then needs (and
            downloads) only the test files; the training split is left empty.

    Returns:
        A :class:`Dataset`; ``verified`` is True for checksummed named datasets.

    Raises:
        ConfigError: unknown dataset name (suggesting the closest).
        DataError: a file is corrupt, fails its checksum, or the files disagree; ``data_dir``
            is not a folder.
        DownloadError: not found locally and every mirror failed (or ``download=False``).
    """
    check_data_dir(data_dir)
    text = os.fspath(name_or_folder)
    canonical = None if _looks_like_path(text) else canonical_name(text)
    if canonical is None:
        folder = Path(text).expanduser()
        if folder.is_dir():
            dataset = load_user_folder(folder, channels, image_size, test_fraction,
                                       skip_bad_images, progress, splits)
            if progress and dataset.kind == "idx":
                print(f"cnnlab: {folder}: user data, checked for structure only "
                      f"(no published checksums)", file=sys.stderr)
            return dataset
        if _looks_like_path(text) or folder.exists():
            load_folder(folder)  # raises the DataError that says what is wrong
        get_dataset_info(text)  # raises ConfigError with the closest name
    info = DATASETS[canonical]
    folder = locate(info.name, data_dir, splits)
    if folder is None:
        folder = download_dataset(info.name, data_dir=data_dir, progress=progress,
                                  timeout=timeout, allow=download, splits=splits)
    return adapt_images(load_folder(folder, info, splits), channels, image_size)


def check_data_dir(data_dir: str | os.PathLike | None) -> None:
    """DataError unless ``data_dir`` (``--data-dir``) is None or an existing folder: a mistyped
    folder must not silently fall through to another copy of the data."""
    if data_dir is None:
        return
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "no such folder"
        raise DataError(f"--data-dir {path}: {what}; check the path, or create the folder "
                        f"(mkdir -p {path}) for downloads to go there")


def dataset_options(config: dict) -> dict:
    """The keyword arguments of :func:`load_dataset` recorded in a run's config (a dict)."""
    return {"channels": config.get("channels"), "image_size": config.get("image_size"),
            "test_fraction": config.get("test_fraction"),
            "skip_bad_images": bool(config.get("skip_bad_images", False))}


# ---------------------------------------------------------------------------- download

def how_to_get(info: DatasetInfo, data_dir: str | os.PathLike | None = None) -> str:
    """One line telling where to put the four files and how to get them."""
    folders = ", ".join(str(folder) for folder in search_folders(info.name, data_dir))
    urls = " or ".join(info.mirrors)
    apt = (f", or 'sudo apt-get install {info.apt_package}'" if info.apt_package else "")
    partial = ""
    for folder in search_folders(info.name, data_dir):
        found = find_files(folder) if folder.is_dir() else {}
        if 0 < len(found) < len(FILE_NAMES):
            missing = [FILE_NAMES[key] for key in FILE_NAMES if key not in found]
            partial += f" ({folder} lacks {', '.join(missing)})"
    return (f"put the four files ({', '.join(FILE_NAMES.values())}) in one of: {folders}{partial}; "
            f"get them from {urls}{apt}; or point --data-dir (or $CNNLAB_DATA_DIR) "
            f"at a folder that holds them")


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, progress: bool = True,
                     timeout: float | None = None, retries: int | None = None,
                     backoff: float | None = None, mirrors: tuple[str, ...] | None = None,
                     allow: bool = True, splits=SPLITS) -> Path:
    """Download the missing or unverified files of a named dataset (those of ``splits``); the
    folder they are in.

    Files already in the target folder that pass verification are kept. ``mirrors``
    overrides the registry's (for tests and private mirrors).
    """
    info = get_dataset_info(name)
    keys = split_keys(splits)
    folder = download_folder(info.name, data_dir)
    present = find_files(folder) if folder.is_dir() else {}
    todo = []
    for key in keys:
        file_info = info.files[key]
        path = present.get(key)
        if path is not None:
            try:
                verify_file(path, info.name, key)
                continue
            except DataError:
                if path.name != file_info.name:
                    raise
        todo.append(key)
    if todo and not allow:
        raise DownloadError(f"{info.name} was not found; run 'cnnlab data download {info.name}' "
                            f"to fetch it, or {how_to_get(info, data_dir)}"
                            f"{_present_instead(info, data_dir)}")
    for key in todo:
        file_info = info.files[key]
        urls = [base + file_info.name for base in (mirrors or info.mirrors)]
        try:
            download_file(urls, folder / file_info.name, _verifier(info, key), timeout=timeout,
                          retries=retries, backoff=backoff, progress=progress)
        except DownloadError as error:
            raise DownloadError(f"{error}. To use {info.name} offline, "
                                f"{how_to_get(info, data_dir)}"
                                f"{_present_instead(info, data_dir)}") from None
    return folder


def _present_instead(info: DatasetInfo, data_dir: str | os.PathLike | None) -> str:
    """``; fashion-mnist is on this machine (FOLDER): --dataset fashion-mnist`` for the other
    named datasets found locally, or ``""``."""
    present = [(other, locate(other, data_dir)) for other in DATASETS if other != info.name]
    present = [(name, folder) for name, folder in present if folder is not None]
    return "".join(f"; {name} is on this machine ({folder}): --dataset {name}"
                   for name, folder in present)


def _verifier(info: DatasetInfo, key: str):
    """Accept a download whose .gz MD5 or decompressed SHA-256 matches (mirrors may recompress)."""
    expected = info.files[key]

    def verify(path: Path) -> None:
        data = read_file_bytes(path)
        try:
            content = decode_idx(data, expected.name)
        except DataError as error:
            raise DataError(f"not a valid IDX file ({error})") from None
        try:
            _verify(content, data, info, key, path)
        except DataError:
            digest = hashlib.md5(data).hexdigest()
            raise DataError(f"bad checksum (MD5 {digest}, expected {expected.md5})") from None

    return verify
