"""Shared fixtures.

Tests take real data the way the product does: Fashion-MNIST from cnnlab's usual places
(Debian's ``dataset-fashion-mnist`` puts it in /usr/share/datasets/fashion-mnist; the README's
test command installs it), or from ../shared/data where a checkout has that folder. Tests of the
real MNIST digits need MNIST's test set (../shared/data/mnist, or cnnlab's usual places): they
skip where it is absent, except in CI (``CI=true``), where missing data fails them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_data(what: str, how: str):
    """Fail in CI (where the data always exists), skip elsewhere."""
    message = f"{what} not found: {how}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _first_folder_with(folders, names) -> Path | None:
    return next((folder for folder in folders
                 if all((folder / name).is_file() for name in names)), None)


def _fashion_mnist_folder() -> Path | None:
    from cnnlab.data.datasets import locate
    from cnnlab.data.registry import FILE_NAMES

    found = locate("fashion-mnist")
    if found is not None and all((found / name).is_file() for name in FILE_NAMES.values()):
        return found
    return _first_folder_with([SHARED_DATA / "fashion-mnist"], FILE_NAMES.values())


def _mnist_test_folder() -> Path | None:
    from cnnlab.data.datasets import search_folders

    return _first_folder_with([SHARED_DATA / "mnist", *search_folders("mnist")], TEST_FILES)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data folder as ``--data-dir`` takes it: ``fashion-mnist/`` (the full Fashion-MNIST) and,
    where the real MNIST test set exists, ``mnist/`` holding only its two test files (symbolic
    links: nothing big is copied)."""
    from cnnlab.data.registry import FILE_NAMES

    fashion = _fashion_mnist_folder()
    if fashion is None:
        missing_data("Fashion-MNIST", "install Debian's dataset-fashion-mnist (the README's "
                     "test command does), or run 'cnnlab data download fashion-mnist'")
    root = tmp_path_factory.mktemp("data")
    (root / "fashion-mnist").mkdir()
    for name in FILE_NAMES.values():
        (root / "fashion-mnist" / name).symlink_to(fashion / name)
    mnist = _mnist_test_folder()
    if mnist is not None:
        (root / "mnist").mkdir()
        for name in TEST_FILES:
            (root / "mnist" / name).symlink_to(mnist / name)
    return root


@pytest.fixture(scope="session")
def real_mnist(data_root) -> Path:
    """The folder holding the real MNIST test set (10,000 digits)."""
    if not (data_root / "mnist").is_dir():
        missing_data("the real MNIST test set", f"these tests read {' and '.join(TEST_FILES)} "
                     f"from {SHARED_DATA / 'mnist'} or cnnlab's data folders "
                     "('cnnlab data download mnist')")
    return data_root / "mnist"


def _kernel_levels() -> list[str]:
    """The compiled levels this CPU runs (the portable one among them), or just "portable"
    when the modules are not built (the tests that need them then fail, saying so)."""
    try:
        from cnnlab.backend import _loops, _sgemm
    except ImportError:
        return ["portable"]
    return [level for level in _loops.cpu_levels() if level in _sgemm.cpu_levels()]


@pytest.fixture(params=_kernel_levels())
def kernel_level(request):
    """Runs the test with both compiled modules (_loops, _sgemm) at one level, each level this
    CPU runs in turn; the level in use before is restored afterwards."""
    from cnnlab.backend import _loops, _sgemm

    saved = [(module, module.get_level()) for module in (_loops, _sgemm)]
    for module, _ in saved:
        module.set_level(request.param)
    yield request.param
    for module, level in saved:
        module.set_level(level)
    _forget_gemm_choice()


def _forget_gemm_choice():
    """The ops' GEMM choice is made once per process from the level in use (``_sgemm.avx512()``
    until the backend chooses per level); a choice made at a level a test forced must not
    outlive the test (later tests, and runs in subprocesses, would use another product)."""
    try:
        from cnnlab.ops import _gemm
    except ImportError:
        return
    with _gemm._lock:
        _gemm._native, _gemm._tried = None, False


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make any unpickling (by cnnlab, or by numpy on its behalf) fail the test."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.fixture(autouse=True)
def _torch_single_thread():
    """Two pytest workers share two cores: torch's thread pool fighting the other worker makes
    tiny ops 100x slower. Benchmarks set their own thread count; it is restored after each test.
    Only where a test module imported torch: the tests that never use it run without it."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny_dataset(data_root: Path, folder: Path, train: int = 600, test: int = 300) -> Path:
    """A folder dataset: the first images of the real Fashion-MNIST, with its class names."""
    from cnnlab.data import read_idx, write_idx

    source = data_root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte"
            write_idx(folder / name, read_idx(source / f"{name}.gz")[:count])
    (folder / "classes.txt").write_text("\n".join(FASHION_CLASSES) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_fashion(data_root, tmp_path_factory) -> Path:
    """2,048 training and 1,000 test images of the real Fashion-MNIST, as a dataset folder."""
    return make_tiny_dataset(data_root, tmp_path_factory.mktemp("tiny-fashion"), 2048, 1000)


def _train_tiny_run(base: Path, data_root: Path) -> Path:
    from cnnlab.cli import main

    data = make_tiny_dataset(data_root, base / "tiny-fashion")
    run_dir = base / "run"
    status = main(["train", "--model", "cnn", "--dataset", str(data), "--limit-train", "512",
                   "--limit-test", "256", "--epochs", "1", "--log-every", "1",
                   "--run-dir", str(run_dir), "--no-progress", "--seed", "0"])
    assert status == 0, "cnnlab train failed"
    assert (run_dir / "checkpoint.npz").is_file()
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_root) -> Path:
    """A real run: the lecture CNN trained 1 epoch on 512 Fashion-MNIST images.

    Trained once per test session and shared (read-only) by the figure and report tests, also
    across pytest-xdist workers: the first to create the lock folder trains, the others wait.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    base, done, failed = root / "cnnlab-tiny-run", root / "cnnlab-tiny-run.done", root / "cnnlab-tiny-run.failed"
    try:
        os.mkdir(root / "cnnlab-tiny-run.lock")
    except FileExistsError:
        deadline = time.monotonic() + 600
        while not done.exists():
            assert not failed.exists(), "training the shared tiny run failed in another test worker"
            assert time.monotonic() < deadline, "timed out waiting for the shared tiny run"
            time.sleep(0.2)
        return base / "run"
    try:
        run_dir = _train_tiny_run(base, data_root)
    except BaseException:
        failed.touch()
        raise
    done.touch()
    return run_dir
