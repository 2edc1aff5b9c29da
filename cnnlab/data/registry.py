"""The named datasets: files, published checksums, download mirrors and class names.

Checksums: ``md5`` is the MD5 of the ``.gz`` file as its authors publish it; ``sha256`` is
the SHA-256 of the *decompressed* file, which survives recompression (Debian's
``dataset-fashion-mnist`` recompressed the files, so their MD5 differs). A file is
accepted when either matches.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from cnnlab.errors import ConfigError

# The four files of an MNIST-style dataset: key -> standard (gzip) file name.
FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class FileInfo:
    """One file of a named dataset and what it must hash to."""

    name: str                 # standard file name, e.g. "train-images-idx3-ubyte.gz"
    md5: str | None           # MD5 of the published .gz
    sha256: str | None        # SHA-256 of the decompressed IDX bytes
    size: int | None = None   # decompressed size in bytes, where known


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset cnnlab knows by name."""

    name: str
    title: str
    classes: tuple[str, ...]
    files: dict[str, FileInfo]
    mirrors: tuple[str, ...]  # base URLs; a file's URL is mirror + file name
    homepage: str
    license: str
    apt_package: str | None = None
    verification: str = "MD5 of the published .gz, or SHA-256 of the decompressed content"
    notes: tuple[str, ...] = field(default_factory=tuple)
    # handwritten digits or characters: prepared like MNIST by predict, never flipped
    digits: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _files(md5: dict[str, str], sha256: dict[str, tuple[str, int]]) -> dict[str, FileInfo]:
    files = {}
    for key, name in FILE_NAMES.items():
        digest, size = sha256.get(key, (None, None))
        files[key] = FileInfo(name=name, md5=md5.get(key), sha256=digest, size=size)
    return files


MNIST = DatasetInfo(
    name="mnist",
    title="MNIST handwritten digits (LeCun, Cortes, Burges)",
    classes=tuple(str(digit) for digit in range(10)),
    files=_files(
        md5={"train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
             "test_images": "9fb629c4189551a2d022fa330f9573f3",
             "test_labels": "ec29112dd5afa0611ce80d1b7f02629c"},
        sha256={"test_images": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                                7840016),
                "test_labels": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                                10008)},
    ),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    homepage="http://yann.lecun.com/exdb/mnist/",
    license="CC BY-SA 3.0",
    verification="MD5 of the published .gz (training files), or MD5/SHA-256 of the "
                 "decompressed content (test files)",
    digits=True,
)

FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    title="Fashion-MNIST, Zalando article images (Xiao, Rasul, Vollgraf)",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"),
    files=_files(
        md5={"train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
             "test_images": "bef4ecab320f06d8554ea6380940ec79",
             "test_labels": "bb300cfdad3c16e7a12a480ee83cd310"},
        sha256={"train_images": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                                  47040016),
                "train_labels": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                                 60008),
                "test_images": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                                7840016),
                "test_labels": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                                10008)},
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/"
             "fashion/"),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    license="MIT",
    apt_package="dataset-fashion-mnist",
)

KMNIST = DatasetInfo(
    name="kmnist",
    title="Kuzushiji-MNIST, cursive Japanese hiragana (ROIS-DS CODH)",
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    # The MD5s of the .gz files as served by CODH (the same values torchvision checks).
    # No SHA-256 of the decompressed files is published, so a recompressed copy of
    # KMNIST cannot be verified and is refused: keep the files as downloaded.
    files=_files(
        md5={"train_images": "bdb82020997e1d708af4cf47b453dcf7",
             "train_labels": "e144d726b3acfaa3e44228e80efcd344",
             "test_images": "5c965bf0a639b31b8f53240b1b52f4d7",
             "test_labels": "7320c461ea6c1c855c0b718fb2a4b134"},
        sha256={},
    ),
    mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
             "https://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    homepage="https://github.com/rois-codh/kmnist",
    license="CC BY-SA 4.0",
    verification="MD5 of the .gz as served by CODH only (no content SHA-256 is published)",
    digits=True,
)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (MNIST, FASHION_MNIST, KMNIST)}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "fmnist": "fashion-mnist", "kuzushiji-mnist": "kmnist"}


def canonical_name(name: str) -> str | None:
    """The registry name for ``name`` (case and ``_``/``-`` insensitive), or None."""
    key = name.strip().lower()
    if key in DATASETS:
        return key
    return _ALIASES.get(key) or _ALIASES.get(key.replace("-", "_"))


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a named dataset; ConfigError suggesting the closest name."""
    canonical = canonical_name(name)
    if canonical is not None:
        return DATASETS[canonical]
    close = difflib.get_close_matches(name.strip().lower(), list(DATASETS) + list(_ALIASES),
                                      n=1, cutoff=0.5)
    suggestion = f"did you mean '{canonical_name(close[0])}'? " if close else ""
    raise ConfigError(f"unknown dataset '{name}': {suggestion}known datasets: "
                      f"{', '.join(DATASETS)}, or the path of a folder holding the four "
                      f"MNIST-format files")
