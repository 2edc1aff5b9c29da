"""What the export, import and notebook tests share: optional packages, real data, torch twins."""

from __future__ import annotations

import gzip
import importlib
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Debian's dataset-fashion-mnist (installed on the development machines and in CI)
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = [f"{split}-{kind}-ubyte" for split in ("train", "t10k")
             for kind in ("images-idx3", "labels-idx1")]


def require(module: str):
    """Import ``module``; CI installs it (the 'test' extra), so there a missing one fails."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed "
                               "(pip install -e '.[test]' installs it)")


def fashion_source() -> Path:
    """A folder with the real Fashion-MNIST .gz files: ../shared/data, else Debian's package.

    Skips where neither is on the machine (a fresh clone elsewhere), fails in CI.
    """
    for folder in (SHARED_DATA / "fashion-mnist", DEBIAN_FASHION):
        if all((folder / f"{name}.gz").is_file() for name in IDX_NAMES):
            return folder
    message = (f"the real Fashion-MNIST is in neither {SHARED_DATA / 'fashion-mnist'} nor "
               f"{DEBIAN_FASHION} (apt-get install dataset-fashion-mnist)")
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def real_dataset(folder: Path, train: int, test: int) -> Path:
    """A dataset folder holding the first ``train`` and ``test`` real Fashion-MNIST images."""
    from cnnlab.data import read_idx, write_idx

    from conftest import FASHION_CLASSES

    source = fashion_source()
    folder.mkdir(parents=True, exist_ok=True)
    for name in IDX_NAMES:
        count = train if name.startswith("train") else test
        write_idx(folder / name, read_idx(source / f"{name}.gz")[:count])
    (folder / "classes.txt").write_text("\n".join(FASHION_CLASSES) + "\n", encoding="utf-8")
    return folder


def synthetic_dataset(folder: Path, train: int = 256, test: int = 128, seed: int = 0) -> Path:
    """A small learnable dataset (class k: a bright bar at row 2k+4) in IDX files, gzipped."""
    from cnnlab.data import write_idx

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 * label + 4: 2 * label + 6, 4:24] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            plain = folder / f"{split}-{kind}-ubyte"
            write_idx(plain, array)
            with open(plain, "rb") as source, gzip.open(f"{plain}.gz", "wb") as target:
                target.write(source.read())
            plain.unlink()
    return folder


def torch_twin(model):
    """The same network as a ``torch.nn.Sequential`` with the same state_dict keys and shapes.

    Built from the layers' own attributes, not from cnnlab code, so a test comparing the two
    checks that the exported keys and shapes mean in PyTorch what they mean in cnnlab.
    """
    import torch

    layers = []
    for layer in model:
        kind = type(layer).__name__
        if kind == "Conv2d":
            twin = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                   layer.stride, layer.padding, layer.dilation, layer.groups,
                                   bias=layer.bias is not None)
        elif kind == "Linear":
            twin = torch.nn.Linear(layer.in_features, layer.out_features,
                                   bias=layer.bias is not None)
        elif kind in ("BatchNorm1d", "BatchNorm2d"):
            twin = getattr(torch.nn, kind)(layer.num_features, eps=layer.eps,
                                           momentum=layer.momentum)
        elif kind in ("MaxPool2d", "AvgPool2d"):
            twin = getattr(torch.nn, kind)(layer.kernel_size, layer.stride, layer.padding)
        elif kind == "LeakyReLU":
            twin = torch.nn.LeakyReLU(layer.negative_slope)
        elif kind == "Dropout":
            twin = torch.nn.Dropout(layer.p)
        elif kind == "Flatten":
            twin = torch.nn.Flatten(layer.start_dim)
        else:
            twin = getattr(torch.nn, kind)()
        layers.append(twin)
    return torch.nn.Sequential(*layers)


def randomize_batch_norm(model, rng: np.random.Generator) -> None:
    """Give every BatchNorm running statistics and an affine map far from the defaults."""
    for layer in model:
        if type(layer).__name__.startswith("BatchNorm"):
            size = layer.num_features
            layer.running_mean[...] = rng.normal(0, 0.5, size)
            layer.running_var[...] = rng.uniform(0.5, 2.0, size)
            layer.weight.data[...] = rng.uniform(0.5, 1.5, size)
            layer.bias.data[...] = rng.normal(0, 0.2, size)
            layer.num_batches_tracked[...] = 7
