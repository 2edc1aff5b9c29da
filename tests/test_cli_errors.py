"""Bad input, across every command: one line on stderr, exit status 2, no file left behind.

Every case runs the real command line in-process (``cnnlab.cli.main``); a few run it as a
subprocess too, to prove that no traceback reaches the terminal. The Python API cases check
that the same mistakes raise a subclass of ``cnnlab.errors.CnnlabError``.

The messages printed here are the ones docs/errors.md lists (``pytest -rP`` shows them).
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnlab.data.download as download_module
from cnnlab.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.cli import main
from cnnlab.data import read_idx, write_idx
from cnnlab.data.datasets import load_dataset
from cnnlab.data.registry import DATASETS
from cnnlab.errors import (CheckpointError, CnnlabError, ConfigError, DataError, DownloadError,
                           ImageError, ShapeError)
from cnnlab.models import build_model

REPO = Path(__file__).resolve().parent.parent
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
SMALL_MODEL = "784-32-10"


# --------------------------------------------------------------------------- helpers

def listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (hidden temporary files included)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def expect_error(capsys, argv: list[str], *needles: str, folder: Path | None = None,
                 notes_ok: bool = False) -> str:
    """Run ``cnnlab ARGV``; assert exit status 2, one ``cnnlab: error:`` line holding every
    needle, no traceback, and ``folder`` unchanged. Returns the error line.

    ``notes_ok`` allows progress bars or notes printed before the error (never another error).
    """
    before = listing(folder) if folder is not None else None
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert status == 2, f"exit status {status}, stderr: {err!r}"
    lines = err.splitlines()
    assert lines, f"nothing on stderr; stdout: {out!r}"
    line = lines[-1]
    assert line.startswith("cnnlab: error: "), err
    if notes_ok:
        assert not any(other.startswith("cnnlab: error") for other in lines[:-1]), err
    else:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    for needle in needles:
        assert needle in line, f"{needle!r} missing from: {line}"
    if folder is not None:
        assert listing(folder) == before, "files were left behind"
    print(f"{' '.join(argv)}\n    -> {line}")
    return line


def write_dataset(folder: Path, train: int = 64, test: int = 32) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    write_idx(folder / TRAIN_IMAGES, rng.integers(0, 256, (train, 28, 28), dtype=np.uint8))
    write_idx(folder / TRAIN_LABELS, rng.integers(0, 10, train).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz",
              rng.integers(0, 256, (test, 28, 28), dtype=np.uint8))
    write_idx(folder / TEST_LABELS, rng.integers(0, 10, test).astype(np.uint8))
    return folder


def tiny_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data: Pillow reads the header first)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A valid 64/32-image dataset folder and a run trained on it for one epoch."""
    root = tmp_path_factory.mktemp("cli_errors")
    dataset = write_dataset(root / "dataset")
    run = root / "run"
    status = main(["train", "--model", SMALL_MODEL, "--dataset", str(dataset), "--epochs", "1",
                   "--batch-size", "16", "--run-dir", str(run), "--no-progress", "--no-report"])
    assert status == 0
    return {"dataset": dataset, "run": run, "checkpoint": run / "checkpoint.npz"}


@pytest.fixture
def copy_dataset(workspace, tmp_path):
    def make(name: str = "data") -> Path:
        return Path(shutil.copytree(workspace["dataset"], tmp_path / name))
    return make


# --------------------------------------------------------------------------- IDX files

def _raw(folder: Path, name: str = TRAIN_IMAGES) -> bytes:
    return gzip.decompress((folder / name).read_bytes())


def _replace(folder: Path, data: bytes, name: str = TRAIN_IMAGES, compress: bool = True):
    (folder / name).unlink()
    if compress:
        (folder / name).write_bytes(gzip.compress(data))
    else:
        (folder / name[:-3]).write_bytes(data)


def _truncate_gzip(folder):
    path = folder / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:500])


def _with_count(count: int):
    return lambda folder: _replace(folder, _raw(folder)[:4] + count.to_bytes(4, "big")
                                   + _raw(folder)[8:])


def _folder_instead(folder):
    (folder / TRAIN_IMAGES).unlink()
    (folder / TRAIN_IMAGES).mkdir()


# (id, how to corrupt a valid dataset folder, what the message must say)
IDX_CASES = [
    ("truncated-gzip", _truncate_gzip, [TRAIN_IMAGES, "truncated"]),
    ("truncated-payload", lambda f: _replace(f, _raw(f)[:-100]),
     [TRAIN_IMAGES, "50076", "50176", "truncated"]),
    ("truncated-payload-raw", lambda f: _replace(f, _raw(f)[:-100], compress=False),
     ["train-images-idx3-ubyte:", "50076", "50176"]),
    ("wrong-magic", lambda f: _replace(f, b"\x12\x34" + _raw(f)[2:]),
     [TRAIN_IMAGES, "not an IDX file", "12 34"]),
    ("wrong-dtype-code", lambda f: _replace(f, _raw(f)[:2] + b"\x07" + _raw(f)[3:]),
     [TRAIN_IMAGES, "0x07"]),
    ("count-larger-than-file", _with_count(65), [TRAIN_IMAGES, "65x28x28", "50960"]),
    ("count-smaller-than-file", _with_count(63), [TRAIN_IMAGES, "63x28x28", "784 extra bytes"]),
    ("images-labels-lengths-differ",
     lambda f: write_idx(f / TRAIN_LABELS, np.zeros(60, np.uint8)),
     [TRAIN_IMAGES, TRAIN_LABELS, "64 images", "60 labels"]),
    ("label-outside-classes-txt", lambda f: (f / "classes.txt").write_text("a\nb\nc\nd\ne\n"),
     [TRAIN_LABELS, "label 9", "5 classes", "0..4"]),
    ("negative-label", lambda f: write_idx(f / TRAIN_LABELS, np.full(64, -1, np.int8)),
     [TRAIN_LABELS, "negative label (-1)"]),
    ("empty-file", lambda f: (f / TRAIN_IMAGES).write_bytes(b""), [TRAIN_IMAGES, "empty"]),
    ("folder-instead-of-file", _folder_instead, ["missing", TRAIN_IMAGES]),
    ("file-missing", lambda f: (f / TRAIN_IMAGES).unlink(), ["missing", TRAIN_IMAGES]),
]


@pytest.mark.parametrize("corrupt, needles", [case[1:] for case in IDX_CASES],
                         ids=[case[0] for case in IDX_CASES])
def test_bad_dataset_file_is_one_line(capsys, copy_dataset, corrupt, needles):
    folder = copy_dataset()
    corrupt(folder)
    expect_error(capsys, ["data", "info", str(folder)], *needles, folder=folder)


def test_unreadable_dataset_file(capsys, copy_dataset, monkeypatch):
    folder = copy_dataset()
    real_read_bytes = Path.read_bytes

    def read_bytes(path):  # chmod 000 does not stop root, so refuse as the OS would
        if path.name == TRAIN_IMAGES:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    expect_error(capsys, ["data", "info", str(folder)], TRAIN_IMAGES, "permission denied",
                 folder=folder)
    with pytest.raises(DataError, match="permission denied"):
        read_idx(folder / TRAIN_IMAGES)


def test_dataset_path_that_is_a_file_or_nothing(capsys, workspace, tmp_path):
    expect_error(capsys, ["data", "info", str(workspace["dataset"] / TRAIN_IMAGES)],
                 "is not a folder")
    expect_error(capsys, ["data", "info", str(tmp_path / "nowhere")], "no such folder")


def test_bad_dataset_file_stops_train_and_evaluate(capsys, copy_dataset, workspace, tmp_path):
    folder = copy_dataset()
    _truncate_gzip(folder)
    runs = tmp_path / "runs"
    runs.mkdir()
    expect_error(capsys, ["train", "--model", SMALL_MODEL, "--dataset", str(folder),
                          "--epochs", "1", "--runs-root", str(runs), "--no-progress"],
                 TRAIN_IMAGES, "truncated", folder=runs)
    before = listing(workspace["run"])
    # evaluate reads only the test files: the damaged training images do not stop it
    assert main(["evaluate", str(workspace["run"]), "--dataset", str(folder)]) == 0
    test_labels = folder / TEST_LABELS
    test_labels.write_bytes(test_labels.read_bytes()[:20])
    expect_error(capsys, ["evaluate", str(workspace["run"]), "--dataset", str(folder)],
                 TEST_LABELS, "truncated")
    assert listing(workspace["run"]) == before


def test_labels_beyond_the_models_classes(capsys, copy_dataset, workspace):
    folder = copy_dataset()
    write_idx(folder / TEST_LABELS, np.full(32, 11, np.uint8))
    expect_error(capsys, ["evaluate", str(workspace["checkpoint"]), "--dataset", str(folder)],
                 "11", "10 outputs", notes_ok=True)


@pytest.mark.parametrize("corrupt", [case[1] for case in IDX_CASES[:7]],
                         ids=[case[0] for case in IDX_CASES[:7]])
def test_read_idx_raises_data_error(copy_dataset, corrupt):
    folder = copy_dataset()
    corrupt(folder)
    path = folder / TRAIN_IMAGES if (folder / TRAIN_IMAGES).exists() else \
        folder / TRAIN_IMAGES[:-3]
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        read_idx(path)
    with pytest.raises(DataError):
        load_dataset(str(folder), download=False, progress=False)


def test_read_idx_of_a_folder_and_of_nothing(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_idx(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nothing.gz")


# --------------------------------------------------------------------------- downloads

@pytest.fixture
def offline_mnist(monkeypatch, tmp_path):
    """mnist found nowhere locally, downloaded from a local folder (a file:// mirror)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CNNLAB_SYSTEM_DATA_DIRS", str(tmp_path / "nowhere"))
    monkeypatch.setattr(download_module, "DEFAULT_BACKOFF", 0.0)
    mirror = tmp_path / "mirror"
    mirror.mkdir()

    def use_mirror(folder: Path):
        info = dataclasses.replace(DATASETS["mnist"], mirrors=(folder.resolve().as_uri() + "/",))
        monkeypatch.setitem(DATASETS, "mnist", info)
    use_mirror(mirror)
    return mirror, use_mirror


def test_download_with_bad_checksum_leaves_nothing(capsys, offline_mnist, tmp_path):
    mirror, _ = offline_mnist
    for file_info in DATASETS["mnist"].files.values():
        (mirror / file_info.name).write_bytes(b"garbage")
    data_dir = tmp_path / "data"
    line = expect_error(capsys, ["data", "download", "mnist", "--data-dir", str(data_dir)],
                        "could not download", TRAIN_IMAGES, "not an IDX file", "offline",
                        notes_ok=True)
    assert line.count("cnnlab: error:") == 1
    assert not [path for path in data_dir.rglob("*") if path.is_file()]


def test_download_from_a_dead_mirror(capsys, offline_mnist, tmp_path):
    _, use_mirror = offline_mnist
    use_mirror(tmp_path / "gone")
    data_dir = tmp_path / "data"
    expect_error(capsys, ["data", "download", "mnist", "--data-dir", str(data_dir)],
                 "could not download", "No such file", "--data-dir")
    assert not [path for path in data_dir.rglob("*") if path.is_file()]
    with pytest.raises(DownloadError):
        load_dataset("mnist", data_dir=data_dir, progress=False)


def test_download_into_a_file(capsys, offline_mnist, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    expect_error(capsys, ["data", "download", "mnist", "--data-dir", str(target)],
                 "cannot create the folder", "a-file")
    assert target.read_text() == "not a folder"


# --------------------------------------------------------------------------- predict images

@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "notes.png").write_text("this is not an image")
    Image.new("LAB", (28, 28)).save(folder / "lab.tif")
    (folder / "huge.png").write_bytes(tiny_png(50_000, 50_000))
    digit = Image.new("L", (28, 28), 0)
    digit.paste(255, (10, 5, 18, 23))
    digit.save(folder / "digit.png")
    (folder / "cut.png").write_bytes((folder / "digit.png").read_bytes()[:60])
    Image.new("L", (28, 28), 0).save(folder / "blank.png")
    Image.new("RGBA", (28, 28), (0, 0, 0, 0)).save(folder / "clear.png")
    write_idx(folder / "labels.idx", np.arange(5, dtype=np.uint8))
    (folder / "subfolder").mkdir()
    return folder


IMAGE_CASES = [
    ("not-an-image", "notes.png", ["notes.png", "not an image"]),
    ("unusual-mode", "lab.tif", ["lab.tif", "mode LAB"]),
    ("huge-dimensions", "huge.png", ["huge.png", "too large", "100,000,000"]),
    ("truncated", "cut.png", ["cut.png", "truncated"]),
    ("blank", "blank.png", ["blank.png", "blank"]),
    ("fully-transparent", "clear.png", ["clear.png", "transparent"]),
    ("idx-of-labels", "labels.idx", ["labels.idx", "holds no images"]),
    ("missing", "absent.png", ["absent.png", "no such"]),
]


@pytest.mark.parametrize("name, needles", [case[1:] for case in IMAGE_CASES],
                         ids=[case[0] for case in IMAGE_CASES])
def test_bad_image_for_predict(capsys, workspace, images, name, needles):
    # a blank picture is only a problem for the digit preparation (there is no ink to centre);
    # this run's own preparation (resize) takes it as it is
    prepare = ["--prepare", "digit"] if name == "blank.png" else []
    expect_error(capsys, ["predict", str(workspace["checkpoint"]), str(images / "digit.png"),
                          str(images / name), *prepare], *needles, folder=images)


def test_folder_given_as_image(capsys, workspace, images):
    """A folder is not 'no such image file': say it is a folder."""
    line = expect_error(capsys, ["predict", str(workspace["checkpoint"]),
                                 str(images / "subfolder")], "subfolder", folder=images)
    assert "folder" in line.replace(str(images / "subfolder"), ""), line


def test_read_image_raises_image_error(images):
    from cnnlab.images import load_inputs

    for _, name, _ in IMAGE_CASES:
        with pytest.raises(ImageError, match=name.replace(".", r"\.")):
            load_inputs([images / name])


# --------------------------------------------------------------------------- checkpoints

@pytest.fixture
def bad_checkpoints(workspace, tmp_path) -> Path:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    good = workspace["checkpoint"].read_bytes()
    (folder / "notes.npz").write_text("hello, I am not a checkpoint\n")
    np.savez(folder / "plain.npz", weights=np.zeros(3))
    (folder / "half.npz").write_bytes(good[: len(good) // 2])
    (folder / "ten-bytes.npz").write_bytes(good[:10])
    np.savez(folder / "objects.npz", meta=np.array([{"model": "mlp"}], dtype=object))
    (folder / "pickle.npz").write_bytes(pickle.dumps({"model/0.weight": [1, 2, 3]}))
    other = build_model("784-16-10", np.random.default_rng(0))
    save_checkpoint(folder / "other.npz", other, meta={"model": SMALL_MODEL})
    return folder


CHECKPOINT_CASES = [
    ("not-a-checkpoint", "notes.npz", ["notes.npz", "not a .npz"]),
    ("npz-without-meta", "plain.npz", ["plain.npz", "not a cnnlab checkpoint"]),
    ("truncated-half", "half.npz", ["half.npz", "truncated or corrupt"]),
    ("truncated-ten-bytes", "ten-bytes.npz", ["ten-bytes.npz", "truncated or corrupt"]),
    ("object-array", "objects.npz", ["objects.npz", "'meta'", "refused"]),
    ("raw-pickle", "pickle.npz", ["pickle.npz", "pickle", "refused"]),
    ("other-architecture", "other.npz",
     ["other.npz", "1.weight (16,784) in file vs (32,784) in model", "1.bias (16)",
      "3.weight (10,16)"]),
    ("missing", "absent.npz", ["absent.npz", "no such checkpoint"]),
]


# summary reads the spec from meta and never loads the weights: no architecture mismatch there
CHECKPOINT_COMMAND_CASES = [(command, *case) for command in ("evaluate", "predict", "summary")
                            for case in CHECKPOINT_CASES
                            if not (command == "summary" and case[1] == "other.npz")]


@pytest.mark.parametrize("command, name, needles",
                         [(case[0], *case[2:]) for case in CHECKPOINT_COMMAND_CASES],
                         ids=[f"{case[0]}-{case[1]}" for case in CHECKPOINT_COMMAND_CASES])
def test_bad_checkpoint(capsys, workspace, bad_checkpoints, images, no_unpickling, command,
                        name, needles):
    argv = {"evaluate": ["evaluate", str(bad_checkpoints / name), "--dataset",
                         str(workspace["dataset"])],
            "predict": ["predict", str(bad_checkpoints / name), str(images / "digit.png")],
            "summary": ["summary", str(bad_checkpoints / name)]}[command]
    expect_error(capsys, argv, *needles, folder=bad_checkpoints)


def test_load_checkpoint_raises_checkpoint_error(bad_checkpoints, no_unpickling):
    from cnnlab.checkpoint import load_model

    for _, name, needles in CHECKPOINT_CASES:
        loader = load_model if name == "other.npz" else load_checkpoint
        with pytest.raises(CheckpointError) as caught:
            loader(bad_checkpoints / name)
        assert needles[0] in str(caught.value) and "\n" not in str(caught.value)


def test_folder_without_checkpoint(capsys, tmp_path):
    expect_error(capsys, ["evaluate", str(tmp_path)], "without checkpoint.npz", folder=tmp_path)


# --------------------------------------------------------------------------- options

TRAIN_OPTION_CASES = [
    ("zero-epochs", ["--epochs", "0"], ["--epochs", "0"]),
    ("negative-batch-size", ["--batch-size", "-1"], ["--batch-size", "-1"]),
    ("negative-lr", ["--lr", "-1"], ["--lr", "-1"]),
    ("zero-limit-train", ["--limit-train", "0"], ["--limit-train", "0"]),
    ("zero-threads", ["--threads", "0"], ["--threads", "0"]),
    ("val-fraction-above-one", ["--val-fraction", "1.5"], ["--val-fraction", "1.5"]),
    ("kernel-larger-than-input", ["--model", "c8k30-fc10"],
     ["'c8k30'", "kernel 30", "28x28"]),
    ("kernel-larger-after-pooling", ["--model", "c8k5-p2-c8k5-p2-c8k5-fc10"],
     ["layer 5", "kernel 5", "4x4"]),
    ("zero-channels", ["--model", "c0k3-fc10"], ["'c0k3'", "out channels", "0"]),
    ("unknown-model", ["--model", "cnm"], ["'cnm'", "did you mean 'cnn'"]),
    ("unknown-dataset", ["--dataset", "fashion"], ["'fashion'", "'fashion-mnist'"]),
    ("unknown-optimizer", ["--optimizer", "adamm"], ["'adamm'", "did you mean 'adam'"]),
    ("unknown-schedule", ["--schedule", "cosin"], ["'cosin'", "did you mean 'cosine'"]),
    ("unknown-normalization", ["--normalization", "std"], ["'std'", "'standard'"]),
    ("not-a-number", ["--epochs", "abc"], ["--epochs", "'abc'", "cnnlab train --help"]),
]


@pytest.mark.parametrize("options, needles", [case[1:] for case in TRAIN_OPTION_CASES],
                         ids=[case[0] for case in TRAIN_OPTION_CASES])
def test_bad_train_option(capsys, workspace, tmp_path, options, needles):
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = ["train", "--model", SMALL_MODEL, "--dataset", str(workspace["dataset"]),
            "--epochs", "1", "--batch-size", "16", "--runs-root", str(runs), "--no-progress",
            "--no-report", *options]
    expect_error(capsys, argv, *needles, folder=runs)


def test_unknown_model_is_named_once(capsys, workspace, tmp_path):
    line = expect_error(capsys, ["train", "--model", "cnm", "--dataset",
                                 str(workspace["dataset"]), "--run-dir", str(tmp_path / "run")])
    assert line.count("unknown model") == 1, line


def test_output_folder_that_is_a_file(capsys, workspace, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    train = ["train", "--model", SMALL_MODEL, "--dataset", str(workspace["dataset"]),
             "--epochs", "1", "--no-progress", "--no-report"]
    expect_error(capsys, train + ["--run-dir", str(target)], "a-file", "is a file",
                 folder=tmp_path)
    expect_error(capsys, train + ["--runs-root", str(target)], "a-file", "is a file",
                 folder=tmp_path)
    expect_error(capsys, ["evaluate", str(workspace["run"]), "--json", str(target / "e.json")],
                 "a-file", notes_ok=True, folder=tmp_path)
    expect_error(capsys, ["verify", "--ops", "relu", "--quick", "--no-torch", "--json",
                          str(target / "v.json")], "a-file", folder=tmp_path)
    expect_error(capsys, ["report", str(workspace["run"]), "--out", str(target / "r.html")],
                 "a-file", folder=tmp_path)
    expect_error(capsys, ["plot", "curves", str(workspace["run"]), "--out",
                          str(target / "c.png")], "a-file", folder=tmp_path)
    assert target.read_text() == "keep me"


def test_run_dir_not_empty(capsys, workspace, tmp_path):
    (tmp_path / "old.txt").write_text("x")
    expect_error(capsys, ["train", "--model", SMALL_MODEL, "--dataset", str(workspace["dataset"]),
                          "--run-dir", str(tmp_path)], "not empty", "--resume", folder=tmp_path)


def test_bad_config_file(capsys, workspace, tmp_path):
    (tmp_path / "broken.json").write_text("{broken")
    (tmp_path / "unknown.json").write_text('{"learning_rate": 0.1}')
    train = ["train", "--dataset", str(workspace["dataset"]), "--runs-root", str(tmp_path)]
    expect_error(capsys, train + ["--config", str(tmp_path / "broken.json")], "broken.json",
                 "not valid JSON", folder=tmp_path)
    expect_error(capsys, train + ["--config", str(tmp_path / "unknown.json")],
                 "'learning_rate'", folder=tmp_path)
    expect_error(capsys, train + ["--config", str(tmp_path / "absent.json")], "absent.json",
                 "does not exist", folder=tmp_path)


@pytest.mark.parametrize("argv, needles", [
    (["summary", "cnnn"], ["'cnnn'", "did you mean 'cnn'"]),
    (["summary", "cnn", "--input-shape", "1,0,28"], ["--input", "1,0,28"]),
    (["summary", "cnn", "--input-shape", "abc"], ["--input", "'abc'"]),
    (["summary", "cnn", "--num-classes", "0"], ["classes", "0"]),
    (["summary", "c8k5-p2-c8k5-p2-c8k5-fc10"], ["layer 5", "4x4"]),
    (["data", "info", "mnsit"], ["'mnsit'", "did you mean 'mnist'"]),
    (["data", "download", "fashon-mnist"], ["did you mean 'fashion-mnist'"]),
    (["data"], ["list, info or download"]),
    (["verify", "--ops", "conv2", "--no-torch"], ["conv2", "conv2d"]),
    (["verify", "--ops", "maxpool", "--no-torch"], ["maxpool", "did you mean 'max_pool2d'"]),
    (["summary", "784-500-11", "--num-classes", "10"], ["11", "10 classes are wanted",
                                                        "--num-classes"]),
    (["plot", "confusoin", "."], ["'confusoin'", "did you mean 'confusion'"]),
    (["trian"], ["'trian'", "'train'"]),
], ids=["summary-unknown-model", "summary-zero-size", "summary-shape-text",
        "summary-zero-classes", "summary-kernel-too-big", "unknown-dataset",
        "unknown-download", "data-without-action", "verify-unknown-op",
        "verify-op-suggestion", "summary-classes-mismatch", "plot-unknown-kind",
        "unknown-command"])
def test_bad_option_elsewhere(capsys, argv, needles):
    expect_error(capsys, argv, *needles)


def test_summary_of_a_size_list_takes_its_classes_from_the_list(capsys):
    assert main(["summary", "784-500-11"]) == 0
    out = capsys.readouterr().out
    assert "11 classes" in out and "dataset" not in out


def test_evaluate_zero_batch_size_before_any_work(capsys, workspace):
    expect_error(capsys, ["evaluate", str(workspace["run"]), "--batch-size", "0"],
                 "batch size", "0")


def test_predict_zero_top_k(capsys, workspace, images):
    expect_error(capsys, ["predict", str(workspace["checkpoint"]), str(images / "digit.png"),
                          "--top-k", "0"], "--top-k", "0")


def test_report_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    expect_error(capsys, ["report", str(tmp_path)], str(tmp_path), "run", folder=tmp_path)


# --------------------------------------------------------------------------- training

def test_nan_loss_stops_with_advice(capsys, workspace, tmp_path):
    run = tmp_path / "run"
    expect_error(capsys, ["train", "--model", SMALL_MODEL, "--dataset", str(workspace["dataset"]),
                          "--epochs", "2", "--batch-size", "16", "--optimizer", "sgd",
                          "--lr", "1e30", "--run-dir", str(run), "--no-progress", "--no-report"],
                 "the loss became nan", "--lr 1e+29")
    left = listing(run)
    assert not [name for name in left if name.endswith(".tmp")], left
    assert "checkpoint.npz" not in left


def test_interrupted_training_exits_130_and_keeps_a_checkpoint(workspace, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "train", "--model", SMALL_MODEL, "--dataset",
         str(workspace["dataset"]), "--epochs", "1000", "--batch-size", "16", "--run-dir",
         str(run), "--no-progress", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (run / "checkpoint.npz").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in out + err
    assert "--resume" in out
    assert not [name for name in listing(run) if name.endswith(".tmp")]
    load_checkpoint(run / "checkpoint.npz")


# --------------------------------------------------------------------------- real processes

@pytest.mark.parametrize("make_argv, needle", [
    (lambda ws, tmp: ["data", "info", str(_truncated_copy(ws, tmp))], "truncated"),
    (lambda ws, tmp: ["evaluate", str(_pickle_file(tmp))], "refused"),
    (lambda ws, tmp: ["train", "--model", "cnm", "--dataset", str(ws["dataset"]),
                      "--run-dir", str(tmp / "run"), "--no-progress"],
     "did you mean 'cnn'"),
], ids=["truncated-gzip", "pickled-checkpoint", "unknown-model"])
def test_real_process_prints_one_line(workspace, tmp_path, make_argv, needle):
    argv = make_argv(workspace, tmp_path)
    before = listing(tmp_path)
    result = subprocess.run([sys.executable, "-m", "cnnlab", *argv], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: ") and needle in lines[0]
    assert listing(tmp_path) == before


def _truncated_copy(workspace, tmp_path) -> Path:
    folder = Path(shutil.copytree(workspace["dataset"], tmp_path / "data"))
    _truncate_gzip(folder)
    return folder


def _pickle_file(tmp_path) -> Path:
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    return path


# --------------------------------------------------------------------------- Python API

def _api_cases():
    from cnnlab.data import iterate_batches, split_validation, to_float
    from cnnlab.nn.layers import Conv2d, Dropout, Linear, MaxPool2d
    from cnnlab.ops.conv import conv2d_forward, conv2d_output_size
    from cnnlab.ops.linear import linear_forward
    from cnnlab.ops.loss import cross_entropy
    from cnnlab.ops.pool import max_pool2d_forward
    from cnnlab.optim import SGD, Adam

    rng = np.random.default_rng(0)
    images, labels = np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64)
    params = lambda: Linear(4, 3, rng=rng).parameters()  # noqa: E731
    return [
        ("conv-kernel-larger-than-padded-input", lambda: conv2d_output_size((5, 5), 7),
         ShapeError, "7x7"),
        ("conv-zero-kernel", lambda: conv2d_output_size((5, 5), 0), ShapeError, "got 0"),
        ("conv-zero-stride", lambda: conv2d_output_size((5, 5), 3, stride=0), ShapeError,
         "stride"),
        ("conv-negative-padding", lambda: conv2d_output_size((5, 5), 3, padding=-1),
         ShapeError, "padding"),
        ("conv-forward-channels", lambda: conv2d_forward(np.zeros((1, 3, 8, 8), np.float32),
                                                         np.zeros((2, 1, 3, 3), np.float32)),
         ShapeError, "(2, 1, 3, 3)"),
        ("conv-forward-3d-input", lambda: conv2d_forward(np.zeros((3, 8, 8), np.float32),
                                                         np.zeros((2, 3, 3, 3), np.float32)),
         ShapeError, "(N, C, H, W)"),
        ("pool-kernel-too-big", lambda: max_pool2d_forward(np.zeros((1, 1, 2, 2), np.float32), 3),
         ShapeError, "3x3"),
        ("linear-mismatch", lambda: linear_forward(np.zeros((2, 3), np.float32),
                                                   np.zeros((4, 5), np.float32)),
         ShapeError, "(4, 5)"),
        ("cross-entropy-label-range", lambda: cross_entropy(np.zeros((2, 3), np.float32),
                                                            np.array([0, 5])),
         CnnlabError, "5"),
        ("Conv2d-zero-channels", lambda: Conv2d(1, 0, 3, rng=rng), ConfigError, "out_channels"),
        ("Conv2d-negative-kernel", lambda: Conv2d(1, 2, -3, rng=rng), ConfigError, "-3"),
        ("Conv2d-groups", lambda: Conv2d(3, 4, 3, groups=2, rng=rng), ConfigError, "groups"),
        ("Conv2d-kernel-larger-than-input",
         lambda: Conv2d(1, 2, 5, rng=rng)(np.zeros((1, 1, 3, 3), np.float32)), ShapeError, "5x5"),
        ("Linear-zero-features", lambda: Linear(0, 3, rng=rng), ConfigError, "in_features"),
        ("Linear-wrong-input", lambda: Linear(4, 3, rng=rng)(np.zeros((2, 5), np.float32)),
         ShapeError, "(2, 5)"),
        ("MaxPool2d-zero", lambda: MaxPool2d(0), ConfigError, "kernel_size"),
        ("Dropout-p", lambda: Dropout(1.5), ConfigError, "1.5"),
        ("load-state-dict-shape", lambda: Linear(4, 3, rng=rng).load_state_dict(
            {"weight": np.zeros((3, 5), np.float32), "bias": np.zeros(3, np.float32)}),
         CheckpointError, "(3, 5)"),
        ("SGD-negative-lr", lambda: SGD(params(), lr=-1), ConfigError, "-1"),
        ("SGD-nesterov", lambda: SGD(params(), lr=0.1, nesterov=True), ConfigError, "nesterov"),
        ("Adam-betas", lambda: Adam(params(), betas=(1.5, 0.9)), ConfigError, "1.5"),
        ("zero-batch-size", lambda: next(iterate_batches(images, labels, 0)), ConfigError,
         "batch_size"),
        ("unknown-normalization", lambda: to_float(images, "stdandard"), ConfigError,
         "stdandard"),
        ("validation-fraction", lambda: split_validation(images, labels, 1.5, 0), ConfigError,
         "1.5"),
        ("unknown-dataset", lambda: load_dataset("mnsit", download=False), ConfigError,
         "did you mean 'mnist'"),
        ("unknown-model", lambda: build_model("cnnn", rng), ConfigError, "did you mean 'cnn'"),
        ("model-kernel-too-big", lambda: build_model("c8k30-fc10", rng), ConfigError, "c8k30"),
        ("model-zero-classes", lambda: build_model("cnn", rng, num_classes=0), ConfigError,
         "classes"),
    ]


@pytest.mark.parametrize("index", range(len(_api_cases())),
                         ids=[case[0] for case in _api_cases()])
def test_python_api_raises_cnnlab_error(index):
    _, call, error_type, needle = _api_cases()[index]
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, CnnlabError)
    assert needle in message and "\n" not in message, message
