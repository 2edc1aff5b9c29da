"""Datasets from class folders of pictures and CIFAR binaries: layouts, channels, sizes, bad
files, the decoded-image cache, and training on them (with real Fashion-MNIST images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import cache, folders, load_dataset, read_idx, write_idx
from cnnlab.data.cifar import load_cifar
from cnnlab.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parent.parent
FOLDER_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cnnlab" / "decoded"


def write_pictures(root: Path, pictures: dict[str, list[np.ndarray]], suffix=".png") -> Path:
    """root/CLASS/NNN.png for each class's list of (H, W) or (H, W, 3) uint8 arrays."""
    for name, arrays in pictures.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index, array in enumerate(arrays):
            Image.fromarray(array).save(root / name / f"{index:03d}{suffix}")
    return root


def gray(value, size=(8, 6)):
    return np.full(size, value, np.uint8)


@pytest.fixture(scope="module")
def fashion_test(data_root):
    images = read_idx(data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(data_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def write_fashion_folders(root: Path, images, labels, train: int, tint=None) -> Path:
    """The first ``train`` images under root/train/CLASS, the rest under root/test/CLASS.
    Class folders are named so that sorted, they keep Fashion-MNIST's label order."""
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("train" if index < train else "test") / f"{label}-{FOLDER_NAMES[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = image if tint is None else (image[..., None] * tint[index]).astype(np.uint8)
        Image.fromarray(picture).save(folder / f"{index:05d}.png")
    return root


# ------------------------------------------------------------------------- layouts

def test_class_folders_are_split_per_class_with_a_fixed_seed(tmp_path):
    root = write_pictures(tmp_path / "shapes", {
        "b-square": [gray(10 * i) for i in range(10)], "a-circle": [gray(100 + i) for i in range(5)]})
    dataset = load_dataset(root, test_fraction=0.2, progress=False)
    assert dataset.classes == ["a-circle", "b-square"]        # sorted, label = position
    assert dataset.kind == "images" and dataset.channels == 1
    assert dataset.train_images.shape == (12, 8, 6) and dataset.train_images.dtype == np.uint8
    assert np.bincount(dataset.test_labels).tolist() == [1, 2]   # 0.2 of each class
    again = load_dataset(root, test_fraction=0.2, progress=False, )
    assert np.array_equal(again.test_images, dataset.test_images)
    # every picture is in exactly one split, decoded exactly
    values = sorted(np.concatenate([dataset.train_images[:, 0, 0], dataset.test_images[:, 0, 0]]))
    assert values == sorted([10 * i for i in range(10)] + [100 + i for i in range(5)])


def test_train_test_and_val_folders(tmp_path):
    for split, count in (("train", 4), ("test", 2), ("val", 3)):
        write_pictures(tmp_path / "data" / split, {"cat": [gray(1)] * count, "dog": [gray(2)] * count})
    dataset = load_dataset(tmp_path / "data", progress=False)
    assert (len(dataset.train_labels), len(dataset.test_labels), len(dataset.val_labels)) == (8, 4, 6)
    assert "val/ (validation)" in dataset.layout
    (tmp_path / "data" / "test").rename(tmp_path / "test-away")
    only_val = load_dataset(tmp_path / "data", progress=False)
    assert len(only_val.test_labels) == 6 and only_val.val_images is None   # val/ is the test split


def test_a_test_class_missing_from_train_is_refused(tmp_path):
    write_pictures(tmp_path / "d" / "train", {"cat": [gray(1)]})
    write_pictures(tmp_path / "d" / "test", {"cat": [gray(1)], "dog": [gray(2)]})
    with pytest.raises(DataError, match="class 'dog' has test images but no folder in"):
        load_dataset(tmp_path / "d", progress=False)


def test_a_folder_with_nothing_known_names_the_three_layouts(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="IDX files.*CIFAR binary.*one folder of images per class"):
        load_dataset(tmp_path, progress=False)


# ------------------------------------------------------------------ channels and sizes

def test_channels_default_to_what_the_images_are(tmp_path):
    rgb = np.zeros((8, 6, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 50
    root = write_pictures(tmp_path / "mixed", {"a": [gray(7)] * 5, "b": [rgb] * 5})
    colour = load_dataset(root, progress=False)
    assert colour.train_images.ndim == 4 and colour.channels == 3
    grey_class = colour.train_images[colour.train_labels == 0]
    assert (grey_class == 7).all()                  # a gray picture gets three equal channels
    red = colour.train_images[colour.train_labels == 1][0]
    assert red[:, 0, 0].tolist() == [200, 0, 50]    # (C, H, W), RGB order
    grey = load_dataset(root, channels=1, progress=False)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))[0, 0]
    assert grey.channels == 1 and grey.train_images[grey.train_labels == 1][0, 0, 0] == expected


def test_sizes_that_disagree_need_image_size(tmp_path):
    root = write_pictures(tmp_path / "sizes", {"a": [gray(9, (8, 6))] * 3 + [gray(9, (10, 12))]})
    with pytest.raises(DataError, match=r"2 different sizes.*--image-size 8x6"):
        load_dataset(root, progress=False)
    resized = load_dataset(root, image_size="16x20", progress=False, test_fraction=0.25)
    assert resized.image_shape == (16, 20)
    with pytest.raises(ConfigError, match="--image-size must be H or HxW"):
        load_dataset(root, image_size="big", progress=False)


# ----------------------------------------------------------------------- bad files

def test_bad_files_are_listed_in_one_error_or_skipped_and_counted(tmp_path):
    root = write_pictures(tmp_path / "bad", {"a": [gray(i) for i in range(6)], "b": [gray(50)] * 6})
    (root / "a" / "002.png").write_bytes(b"this is no picture")
    data = (root / "b" / "001.png").read_bytes()
    (root / "b" / "001.png").write_bytes(data[:len(data) // 2])
    (root / "a" / "notes.txt").write_text("ignored: not an image")
    with pytest.raises(DataError) as raised:
        load_dataset(root, progress=False)
    message = str(raised.value)
    assert "2 of 12 image files cannot be decoded" in message and "\n" not in message
    assert "002.png" in message and "001.png" in message and "--skip-bad-images" in message
    dataset = load_dataset(root, skip_bad_images=True, progress=False)
    assert len(dataset.skipped) == 2 and len(dataset.train_labels) + len(dataset.test_labels) == 10
    assert dataset.cache["ignored_files"] == 1


def test_train_records_skipped_images(tmp_path, capsys):
    root = write_pictures(tmp_path / "bad", {"a": [gray(i, (8, 8)) for i in range(10)],
                                             "b": [gray(200 - i, (8, 8)) for i in range(10)]})
    (root / "a" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    run = tmp_path / "run"
    assert main(["train", "--model", "fc8", "--dataset", str(root), "--epochs", "1",
                 "--no-progress", "--no-report", "--run-dir", str(run)]) == 2
    assert "--skip-bad-images" in capsys.readouterr().err
    assert main(["train", "--model", "fc8", "--dataset", str(root), "--epochs", "1",
                 "--no-progress", "--no-report", "--run-dir", str(run), "--skip-bad-images"]) == 0
    assert json.loads((run / "summary.json").read_text())["skipped_images"] == 1
    assert json.loads((run / "config.json").read_text())["skip_bad_images"] is True


# --------------------------------------------------------------------------- cache

def test_the_second_load_reads_the_cache_and_a_change_invalidates_it(tmp_path, monkeypatch,
                                                                       private_cache, no_unpickling):
    root = write_pictures(tmp_path / "c", {"a": [gray(i) for i in range(5)], "b": [gray(9)] * 5})
    first = load_dataset(root, progress=False)
    assert first.cache["hit"] is False and len(list(private_cache.glob("*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(folders, "_decode_all", refuse)
    second = load_dataset(root, progress=False)
    assert second.cache["hit"] is True
    assert np.array_equal(second.train_images, first.train_images)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Image.fromarray(gray(77)).save(root / "a" / "000.png")
    os.utime(root / "a" / "000.png", ns=(1, 1))
    third = load_dataset(root, progress=False)
    assert third.cache["hit"] is False
    assert 77 in np.concatenate([third.train_images[:, 0, 0], third.test_images[:, 0, 0]])
    assert len(list(private_cache.glob("*.npz"))) == 1     # replaced, not piled up
    other = load_dataset(root, channels=3, progress=False)  # other options, another entry
    assert other.channels == 3 and len(list(private_cache.glob("*.npz"))) == 2


def test_a_damaged_cache_entry_is_decoded_again(tmp_path, private_cache):
    root = write_pictures(tmp_path / "c", {"a": [gray(3)] * 4, "b": [gray(4)] * 4})
    load_dataset(root, progress=False)
    entry = next(private_cache.glob("*.npz"))
    entry.write_bytes(entry.read_bytes()[:100])
    assert load_dataset(root, progress=False).cache["hit"] is False


def test_parallel_decoding_gives_the_serial_result(tmp_path, fashion_test, monkeypatch):
    images, labels = fashion_test
    root = write_fashion_folders(tmp_path / "fm", images[:600], labels[:600], train=500)
    monkeypatch.setattr(folders, "_PARALLEL_AFTER", 0.0)
    monkeypatch.setattr(folders, "_CHUNK", 64)
    monkeypatch.setattr(folders, "worker_count", lambda tasks: 2)
    listing = folders.list_folder(root)
    paths = [path for split in listing.files for _, path in listing.files[split]]
    parallel = folders._decode_all(paths, None, None, False, "test")
    serial = folders._decode_chunk([str(path) for path in paths], None, None)
    assert all(np.array_equal(a, b) for a, b in zip(parallel, serial)) and len(parallel) == 600


# --------------------------------------------------------------------------- CIFAR

def write_cifar(folder: Path, counts=(30, 30, 30, 30, 30), test=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [f"data_batch_{index}.bin" for index in range(1, 6)] + ["test_batch.bin"]
    for name, count in zip(names, list(counts) + [test]):
        records = rng.integers(0, 256, (count, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, count)
        records.tofile(folder / name)
    (folder / "batches.meta.txt").write_text("\n".join(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"]) + "\n\n")
    return folder


def test_cifar10_binary_batches(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-bin")
    dataset = load_dataset(tmp_path, progress=False)   # the parent of the unpacked archive works
    assert dataset.kind == "cifar" and dataset.classes[0] == "airplane" and dataset.classes[9] == "truck"
    assert dataset.train_images.shape == (150, 3, 32, 32) and dataset.test_images.shape == (40, 3, 32, 32)
    record = np.fromfile(folder / "data_batch_2.bin", np.uint8).reshape(-1, 3073)[3]
    assert dataset.train_labels[33] == record[0]
    assert np.array_equal(dataset.train_images[33, 1].ravel(), record[1 + 1024:1 + 2048])  # green
    grey = load_dataset(folder, channels=1, image_size=16, progress=False)
    assert grey.train_images.shape == (150, 16, 16)


def test_cifar_truncated_or_foreign_files_are_one_line_errors(tmp_path):
    folder = write_cifar(tmp_path / "c")
    data = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(data[:-10])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        load_cifar(folder)
    records = np.zeros((5, 3073), np.uint8)
    records[2, 0] = 12
    records.tofile(folder / "test_batch.bin")
    with pytest.raises(DataError, match="record 2 has label 12, but there are only 10 classes"):
        load_cifar(folder)


def test_cifar100_uses_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, count in (("train.bin", 20), ("test.bin", 8)):
        records = rng.integers(0, 256, (count, 3074), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 20, count)
        records[:, 1] = rng.integers(0, 100, count)
        records.tofile(folder / name)
    dataset = load_dataset(folder, progress=False)
    expected = np.fromfile(folder / "train.bin", np.uint8).reshape(-1, 3074)[:, 1]
    assert dataset.num_classes == 100 and np.array_equal(dataset.train_labels, expected)


def test_training_on_cifar_takes_its_shape(tmp_path):
    data = write_cifar(tmp_path / "cifar")
    run = tmp_path / "run"
    assert main(["train", "--model", "c4k3p1-p2-fc16", "--dataset", str(data), "--epochs", "1",
                 "--no-progress", "--no-report", "--run-dir", str(run), "--augment",
                 "shift:4,flip"]) == 0
    with np.load(run / "checkpoint.npz", allow_pickle=False) as arrays:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    assert meta["input_shape"] == [3, 32, 32] and meta["classes"][1] == "automobile"
    assert meta["preprocess"]["kind"] == "resize" and meta["preprocess"]["channels"] == 3


# ------------------------------------------------------------------------- packaging

def test_import_cnnlab_does_not_import_pillow():
    code = "import sys, cnnlab, cnnlab.data, cnnlab.cli; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------- real images: Fashion-MNIST as PNG

def run_accuracy(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["test_accuracy"]


@pytest.mark.slow
def test_fashion_mnist_as_png_folders_trains_as_from_idx(tmp_path, fashion_test):
    """The 10,000 real test images as PNG class folders (8,000 train, 2,000 test) decode to
    exactly the IDX pixels and train to the same accuracy with the same seed and epochs."""
    images, labels = fashion_test
    root = write_fashion_folders(tmp_path / "png", images, labels, train=8000)
    dataset = load_dataset(root, progress=False)
    # the folder order: by class, then by file name; the IDX copy gets the same order
    order = {split: np.concatenate([np.flatnonzero(labels[part] == label) for label in range(10)])
             for split, part in (("train", slice(0, 8000)), ("test", slice(8000, None)))}
    assert np.array_equal(dataset.train_images, images[:8000][order["train"]])
    assert np.array_equal(dataset.test_images, images[8000:][order["test"]])
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", images[:8000][order["train"]])
    write_idx(idx / "train-labels-idx1-ubyte", labels[:8000][order["train"]].astype(np.uint8))
    write_idx(idx / "t10k-images-idx3-ubyte", images[8000:][order["test"]])
    write_idx(idx / "t10k-labels-idx1-ubyte", labels[8000:][order["test"]].astype(np.uint8))
    common = ["--model", "cnn", "--epochs", "2", "--no-progress", "--no-report", "--seed", "3"]
    assert main(["train", "--dataset", str(root), "--run-dir", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--dataset", str(idx), "--run-dir", str(tmp_path / "b"), *common]) == 0
    from_png, from_idx = run_accuracy(tmp_path / "a"), run_accuracy(tmp_path / "b")
    assert from_png > 0.8 and abs(from_png - from_idx) <= 0.005


@pytest.mark.slow
def test_a_tinted_colour_version_trains_with_three_channels(tmp_path, fashion_test, capsys):
    images, labels = fashion_test
    tint = np.random.default_rng(5).uniform(0.3, 1.0, (3000, 3))   # independent of the class
    root = write_fashion_folders(tmp_path / "tinted", images[:3000], labels[:3000], train=2500,
                                 tint=tint)
    run = tmp_path / "run"
    assert main(["train", "--model", "cnn", "--dataset", str(root), "--channels", "3",
                 "--epochs", "2", "--batch-size", "32", "--no-progress", "--run-dir", str(run),
                 "--augment", "flip,shift:1"]) == 0
    with np.load(run / "checkpoint.npz", allow_pickle=False) as arrays:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    assert meta["input_shape"] == [3, 28, 28] and meta["preprocess"]["polarity"] == "dark"
    assert run_accuracy(run) > 0.7
    assert json.loads((run / "config.json").read_text())["augment"] == "flip,shift:1"
    # predict prepares the colour pictures exactly as training did: the same test accuracy
    pictures = sorted((root / "test").glob("*/*.png"))
    capsys.readouterr()
    assert main(["predict", str(run), *map(str, pictures), "--json", "--top-k", "1"]) == 0
    results = json.loads(capsys.readouterr().out)
    truth = [int(Path(result["image"]).parent.name.split("-")[0]) for result in results]
    correct = [result["top"][0]["class"] == label for result, label in zip(results, truth)]
    assert abs(np.mean(correct) - run_accuracy(run)) < 1e-9
    for kind in ("montage", "filters", "features", "saliency", "mistakes"):
        assert main(["plot", kind, str(run), "--out", str(tmp_path / f"{kind}.png")]) == 0
        assert (tmp_path / f"{kind}.png").stat().st_size > 1000
    assert (run / "report.html").is_file()


# --------------------------------------------------------------------------- models

@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 64, 48), (3, 28, 28), (1, 9, 9)])
@pytest.mark.parametrize("spec", ["mlp", "cnn", "cnn-bn", "c8k3p1-bn-p2-fc16", "c4k5-p2"])
def test_models_take_the_datasets_shape(spec, shape):
    from cnnlab.models import build_model

    model = build_model(spec, np.random.default_rng(0), input_shape=shape, num_classes=7)
    x = np.zeros((2,) + shape, np.float32)
    assert model(x).shape == (2, 7)
    first = next(layer for layer in model if hasattr(layer, "weight"))
    assert first.weight.shape[1] in (shape[0], int(np.prod(shape)))


def test_a_spec_that_does_not_fit_the_pictures_names_the_layer(capsys):
    from cnnlab.models import build_model

    with pytest.raises(ConfigError, match=r"layer 9 'p2'.*does not fit the 1x1 input"):
        build_model("cnn-bn", np.random.default_rng(0), input_shape=(3, 4, 4))
    assert main(["summary", "cnn", "--input", "3x32x32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "Conv2d(3, 32" in out and "input 3x32x32" in out and "in_features=4096" in out
