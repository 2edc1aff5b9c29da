"""CIFAR-10 and CIFAR-100 in their binary format (the "binary version" of the dataset).

CIFAR-10: ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``, each a run of
10,000 records of 3,073 bytes: the label (0-9), then the 32x32 image as 1,024 red, 1,024
green and 1,024 blue bytes, row by row. ``batches.meta.txt`` names the classes, one a line.
CIFAR-100: ``train.bin`` and ``test.bin`` with 3,074-byte records (coarse label, fine label,
pixels); the fine labels are used, named by ``fine_label_names.txt``.

The folder may be the one holding the files or its parent (the archive unpacks into
``cifar-10-batches-bin/`` or ``cifar-100-binary/``). Read with NumPy only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError

PIXELS = 3 * 32 * 32
CIFAR10_TRAIN = tuple(f"data_batch_{index}.bin" for index in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
_LAYOUTS = {
    # name: (training files, test file, label bytes per record, classes file, class count)
    "cifar-10": (CIFAR10_TRAIN, CIFAR10_TEST, 1, "batches.meta.txt", 10),
    "cifar-100": (("train.bin",), "test.bin", 2, "fine_label_names.txt", 100),
}
_SUBFOLDERS = ("", "cifar-10-batches-bin", "cifar-100-binary")


def find_cifar(folder: str | os.PathLike) -> tuple[str, Path] | None:
    """("cifar-10" or "cifar-100", the folder holding the files), or None when it holds neither."""
    for subfolder in _SUBFOLDERS:
        where = Path(folder) / subfolder
        for name, (train, test, _, _, _) in _LAYOUTS.items():
            if (where / test).is_file() and any((where / file).is_file() for file in train):
                return name, where
    return None


def read_records(path: Path, label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one binary batch file."""
    record = label_bytes + PIXELS
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    if data.size == 0 or data.size % record:
        other = 3074 if record == 3073 else 3073
        hint = (f" (a multiple of {other}: is it a {'CIFAR-100' if other == 3074 else 'CIFAR-10'}"
                " file?)") if data.size and data.size % other == 0 else ""
        raise DataError(f"{path}: {data.size} bytes is not a whole number of {record}-byte "
                        f"records{hint}: the file is truncated or not a CIFAR binary batch")
    records = data.reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int64)
    if labels.max() >= num_classes:
        row = int(np.argmax(labels >= num_classes))
        raise DataError(f"{path}: record {row} has label {labels[row]}, but there are only "
                        f"{num_classes} classes: the file is corrupt or not a CIFAR batch")
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def load_cifar(folder: str | os.PathLike):
    """A :class:`cnnlab.data.Dataset` of the CIFAR files in ``folder`` (module docstring)."""
    from cnnlab.data.datasets import Dataset

    found = find_cifar(folder)
    if found is None:
        raise DataError(f"{folder}: holds no CIFAR binary files ({CIFAR10_TEST} with "
                        f"data_batch_1.bin ..., or CIFAR-100's test.bin with train.bin)")
    name, where = found
    train_names, test_name, label_bytes, classes_name, count = _LAYOUTS[name]
    classes_path = where / classes_name
    if classes_path.is_file():
        try:
            classes = [line.strip() for line in classes_path.read_text("utf-8").splitlines()
                       if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{classes_path}: cannot be read as text ({error})") from None
        if len(classes) != count:
            raise DataError(f"{classes_path}: names {len(classes)} classes, {name} has {count}")
    else:
        classes = [str(index) for index in range(count)]
    parts = [read_records(where / file, label_bytes, count) for file in train_names
             if (where / file).is_file()]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    test_images, test_labels = read_records(where / test_name, label_bytes, count)
    present = [file for file in train_names if (where / file).is_file()]
    return Dataset(name=name, classes=classes, train_images=train_images,
                   train_labels=train_labels, test_images=test_images, test_labels=test_labels,
                   source=str(where), verified=False, kind="cifar",
                   layout=f"{name} binary: {', '.join(present)} (training), {test_name} (test)",
                   files={"train_images": str(where / present[0]),
                          "test_images": str(where / test_name)})
