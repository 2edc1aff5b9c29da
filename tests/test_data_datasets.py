"""Named datasets and user folders: lookup order, verification, consistency checks."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data.datasets import load_dataset, load_folder, locate, search_folders
from cnnlab.data.idx import write_idx
from cnnlab.data.registry import DATASETS, FILE_NAMES, get_dataset_info
from cnnlab.errors import ConfigError, DataError, DownloadError


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No real cache, no system folders, no $CNNLAB_DATA_DIR: only what a test sets up."""
    monkeypatch.delenv("CNNLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNLAB_SYSTEM_DATA_DIRS", str(tmp_path / "system"))
    return tmp_path


def link_fashion(data_root: Path, folder: Path) -> Path:
    """Make ``folder`` hold Fashion-MNIST (symbolic links, so nothing big is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILE_NAMES.values():
        (folder / name).symlink_to(data_root / "fashion-mnist" / name)
    return folder


def write_user_data(folder: Path, train=(50, 8, 6), test=(20, 8, 6), classes=4, rng=None,
                    suffix=".gz"):
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, train, dtype=np.uint8),
        "train_labels": rng.integers(0, classes, train[0], dtype=np.uint8),
        "test_images": rng.integers(0, 256, test, dtype=np.uint8),
        "test_labels": rng.integers(0, classes, test[0], dtype=np.uint8),
    }
    for key, array in arrays.items():
        write_idx(folder / (FILE_NAMES[key][:-3] + suffix), array)
    return arrays


def test_registry_has_three_datasets_with_checksums():
    assert set(DATASETS) == {"mnist", "fashion-mnist", "kmnist"}
    for info in DATASETS.values():
        assert len(info.classes) == 10 and len(info.mirrors) >= 2
        assert all(file.md5 and len(file.md5) == 32 for file in info.files.values())
    assert DATASETS["fashion-mnist"].classes[9] == "Ankle boot"
    assert DATASETS["fashion-mnist"].apt_package == "dataset-fashion-mnist"


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'fashion-mnist'"):
        get_dataset_info("fashon-mnist")
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        load_dataset("cifar10")
    assert get_dataset_info("Fashion_MNIST").name == "fashion-mnist"


def test_lookup_order(clean_env, data_root, monkeypatch):
    tmp = clean_env
    system = link_fashion(data_root, tmp / "system" / "fashion-mnist")
    assert locate("fashion-mnist") == system
    cache = link_fashion(data_root, tmp / "cache" / "cnnlab" / "fashion-mnist")
    assert locate("fashion-mnist") == cache
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(tmp / "env"))
    env = link_fashion(data_root, tmp / "env" / "fashion-mnist")
    assert locate("fashion-mnist") == env
    flat = link_fashion(data_root, tmp / "flat")
    assert locate("fashion-mnist", data_dir=flat) == flat
    named = link_fashion(data_root, tmp / "flat" / "fashion-mnist")
    assert locate("fashion-mnist", data_dir=flat) == named
    assert search_folders("fashion-mnist", flat) == [named, flat, env, cache, system]


def test_default_cache_is_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tmp_path / ".cache" / "cnnlab" / "mnist" in search_folders("mnist")
    monkeypatch.delenv("CNNLAB_SYSTEM_DATA_DIRS", raising=False)
    assert Path("/usr/share/datasets/mnist") in search_folders("mnist")


def test_system_folder_loads_verified(clean_env, data_root):
    folder = link_fashion(data_root, clean_env / "system" / "fashion-mnist")
    data = load_dataset("fashion-mnist", download=False)
    assert data.verified and data.source == str(folder)
    assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.dtype == np.int64 and data.train_labels.shape == (60000,)
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.classes[0] == "T-shirt/top"


def test_partial_folder_is_skipped_and_named(clean_env, data_root):
    partial = clean_env / "data" / "mnist"  # MNIST's two test files only
    partial.mkdir(parents=True)
    for key in ("test_images", "test_labels"):
        (partial / FILE_NAMES[key]).symlink_to(data_root / "fashion-mnist" / FILE_NAMES[key])
    with pytest.raises(DownloadError) as caught:
        load_dataset("mnist", data_dir=clean_env / "data", download=False)
    message = str(caught.value)
    assert f"{partial} lacks train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message and "--data-dir" in message


def test_offline_message_names_folders_urls_and_apt(clean_env):
    with pytest.raises(DownloadError) as caught:
        load_dataset("fashion-mnist", download=False)
    message = str(caught.value)
    assert "\n" not in message
    assert str(clean_env / "cache" / "cnnlab" / "fashion-mnist") in message
    assert str(clean_env / "system" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "raw.githubusercontent.com/zalandoresearch" in message


def test_corrupt_named_file_is_refused(clean_env, data_root):
    folder = clean_env / "data" / "fashion-mnist"
    link_fashion(data_root, folder)
    source = data_root / "fashion-mnist" / FILE_NAMES["test_labels"]
    labels = gzip.decompress(source.read_bytes())
    altered = bytearray(labels)
    altered[-1] = (altered[-1] + 1) % 10  # still a valid IDX file, just not the published one
    (folder / FILE_NAMES["test_labels"]).unlink()
    (folder / FILE_NAMES["test_labels"]).write_bytes(gzip.compress(bytes(altered)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: is not the published "
                                        r"fashion-mnist file") as caught:
        load_dataset("fashion-mnist", data_dir=clean_env / "data", download=False)
    message = str(caught.value)
    assert "delete" not in message  # cnnlab did not download it: never advise deleting it
    assert f"--dataset {folder}" in message and "cnnlab data download fashion-mnist" in message
    assert (folder / FILE_NAMES["test_labels"]).is_file()


def test_user_folder_loads_unverified(clean_env, capsys):
    arrays = write_user_data(clean_env / "letters")
    data = load_dataset(str(clean_env / "letters"))
    assert not data.verified and data.name == "letters"
    assert data.classes == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(data.train_images, arrays["train_images"])
    np.testing.assert_array_equal(data.test_labels, arrays["test_labels"])
    assert set(data.verification.values()) == {"structure"}
    assert "checked for structure only" in capsys.readouterr().err


def test_user_folder_uncompressed_and_classes_txt(clean_env):
    write_user_data(clean_env / "mine", suffix="", classes=3)
    (clean_env / "mine" / "classes.txt").write_text("cat\ndog\nbird\n")
    data = load_folder(clean_env / "mine")
    assert data.classes == ["cat", "dog", "bird"] and data.image_shape == (8, 6)
    (clean_env / "mine" / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="names only 2 classes"):
        load_folder(clean_env / "mine")


@pytest.mark.parametrize("key, array, pattern", [
    ("train_labels", np.zeros(49, np.uint8), "has 50 images but .* has 49 labels"),
    ("train_images", np.zeros((50, 48), np.uint8), "must be 3-D"),
    ("test_labels", np.zeros((20, 2), np.uint8), "must be 1-D"),
    ("train_images", np.zeros((50, 8, 6), np.float32), "0-255 unsigned bytes"),
    ("test_labels", np.full(20, -1, np.int8), "negative label"),
    ("test_images", np.zeros((20, 9, 6), np.uint8), "both must have one size"),
    ("test_labels", np.zeros(20, np.float32), "must be integers"),
])
def test_inconsistent_user_data(clean_env, key, array, pattern):
    folder = clean_env / "bad"
    write_user_data(folder)
    write_idx(folder / FILE_NAMES[key], array)
    with pytest.raises(DataError, match=pattern):
        load_dataset(folder, progress=False)


def test_labels_out_of_class_range_for_named_dataset(clean_env, data_root):
    folder = clean_env / "data" / "fashion-mnist"
    link_fashion(data_root, folder)
    three_classes = dataclasses.replace(DATASETS["fashion-mnist"], classes=("a", "b", "c"))
    with pytest.raises(DataError, match="has label 9 but dataset fashion-mnist names only 3"):
        load_folder(folder, three_classes)


def test_missing_files_and_non_folders(clean_env):
    write_user_data(clean_env / "half")
    (clean_env / "half" / FILE_NAMES["test_images"]).unlink()
    with pytest.raises(DataError, match="missing t10k-images-idx3-ubyte.gz"):
        load_dataset(str(clean_env / "half"))
    (clean_env / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(str(clean_env / "file.txt"))
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(os.path.join(str(clean_env), "nowhere"))


def test_cli_info_list_and_errors(clean_env, data_root, capsys):
    from cnnlab.cli import main

    write_user_data(clean_env / "mine", classes=3)
    (clean_env / "mine" / "classes.txt").write_text("cat\ndog\nbird\n")
    assert main(["data", "info", str(clean_env / "mine")]) == 0
    out = capsys.readouterr().out
    assert "NOT verified" in out and "8x6 pixels" in out and "bird" in out
    assert "training     50 images" in out

    link_fashion(data_root, clean_env / "system" / "fashion-mnist")
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert f"found in {clean_env / 'system' / 'fashion-mnist'}" in out
    assert "cnnlab data download kmnist" in out

    assert main(["data", "download", "fashion-mnist"]) == 0
    assert "already present and verified" in capsys.readouterr().out

    assert main(["data", "info", "kmnst"]) == 2
    assert "did you mean 'kmnist'" in capsys.readouterr().err
    assert main(["data", "info", "mnist"]) == 2  # info never downloads
    assert "run 'cnnlab data download mnist'" in capsys.readouterr().err


def test_missing_dataset_suggests_the_one_on_this_machine(clean_env, data_root):
    link_fashion(data_root, clean_env / "system" / "fashion-mnist")
    with pytest.raises(DownloadError) as caught:
        load_dataset("mnist", download=False)
    assert str(caught.value).endswith(f"; fashion-mnist is on this machine "
                                      f"({clean_env / 'system' / 'fashion-mnist'}): "
                                      f"--dataset fashion-mnist")


def test_labels_with_gaps_are_refused_unless_classes_are_named(clean_env):
    arrays = write_user_data(clean_env / "own", classes=10)
    labels = arrays["train_labels"].copy()
    labels[7] = 200  # one stray label among 0-9
    write_idx(clean_env / "own" / FILE_NAMES["train_labels"], labels)
    with pytest.raises(DataError) as caught:
        load_dataset(str(clean_env / "own"), progress=False)
    message = str(caught.value)
    assert "the labels found are 0-9, 200, so no image has label 10-199" in message
    assert "classes.txt" in message
    (clean_env / "own" / "classes.txt").write_text("\n".join(f"c{k}" for k in range(201)))
    assert load_dataset(str(clean_env / "own"), progress=False).num_classes == 201


def test_test_split_alone_is_enough_for_an_evaluation(clean_env, data_root):
    folder = clean_env / "data" / "fashion-mnist"  # only the two test files, as for evaluate
    folder.mkdir(parents=True)
    for key in ("test_images", "test_labels"):
        (folder / FILE_NAMES[key]).symlink_to(data_root / "fashion-mnist" / FILE_NAMES[key])
    data = load_dataset("fashion-mnist", data_dir=clean_env / "data", download=False,
                        splits=("test",))
    assert data.verified and len(data.test_labels) == 10000 and len(data.train_labels) == 0
    assert data.train_images.shape == (0, 28, 28)
    with pytest.raises(DownloadError, match="lacks train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", data_dir=clean_env / "data", download=False)


def test_data_dir_and_dataset_folder_that_do_not_exist(clean_env, data_root, capsys):
    from cnnlab.cli import main

    link_fashion(data_root, clean_env / "system" / "fashion-mnist")  # found elsewhere
    missing = clean_env / "does" / "not" / "exist"
    with pytest.raises(DataError, match=f"--data-dir {missing}: no such folder"):
        load_dataset("fashion-mnist", data_dir=missing, download=False)
    for argv, needle in ((["--dataset", "fashion-mnist", "--data-dir", str(missing)],
                          f"--data-dir {missing}: no such folder"),
                         (["--dataset", str(missing)], f"{missing}: no such folder")):
        assert main(["train", "--model", "mlp", "--epochs", "1", "--no-progress",
                     "--runs-root", str(clean_env / "runs"), *argv]) == 2
        error = capsys.readouterr().err
        assert needle in error and "unknown dataset" not in error
