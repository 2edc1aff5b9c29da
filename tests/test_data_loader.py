"""Batching: epoch order, float conversion, batches, validation split, pixel statistics."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.data.loader import (dataset_mean_std, epoch_order, iterate_batches,
                                split_validation, to_float)
from cnnlab.errors import ConfigError, ShapeError


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(1000, seed=3, epoch=0)
    assert sorted(order.tolist()) == list(range(1000))
    np.testing.assert_array_equal(order, epoch_order(1000, seed=3, epoch=0))
    np.testing.assert_array_equal(order, np.random.default_rng([3, 0]).permutation(1000))
    assert not np.array_equal(order, epoch_order(1000, seed=3, epoch=1))
    assert not np.array_equal(order, epoch_order(1000, seed=4, epoch=0))
    with pytest.raises(ConfigError):
        epoch_order(10, seed=-1, epoch=0)


@pytest.fixture
def small_set(rng):
    images = rng.integers(0, 256, (103, 5, 4), dtype=np.uint8)
    labels = np.arange(103) % 7
    return images, labels.astype(np.uint8)


def test_every_sample_once_per_epoch(small_set):
    images, labels = small_set
    order = epoch_order(len(images), seed=1, epoch=2)
    seen = []
    sizes = []
    for x, y in iterate_batches(images, labels, 10, order):
        assert x.dtype == np.float32 and x.shape[1:] == (1, 5, 4)
        assert y.dtype == np.int64
        sizes.append(len(y))
        seen.append(x)
    assert sizes == [10] * 10 + [3]
    stacked = np.concatenate(seen)
    np.testing.assert_array_equal(stacked[:, 0], images[order] / np.float32(255))
    assert sum(sizes) == len(images)


def test_sequential_order_drop_last_and_start_batch(small_set):
    images, labels = small_set
    batches = list(iterate_batches(images, labels, 25, drop_last=True))
    assert [len(y) for _, y in batches] == [25] * 4
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels[:100])
    resumed = list(iterate_batches(images, labels, 25, start_batch=3))
    np.testing.assert_array_equal(resumed[0][1], labels[75:100])
    assert len(resumed) == 2


def test_reuse_buffer_gives_same_values(small_set):
    images, labels = small_set
    order = epoch_order(len(images), 0, 0)
    fresh = [x.copy() for x, _ in iterate_batches(images, labels, 16, order)]
    reused = [x.copy() for x, _ in iterate_batches(images, labels, 16, order, reuse_buffer=True)]
    for a, b in zip(fresh, reused):
        np.testing.assert_array_equal(a, b)


def test_batch_errors(small_set):
    images, labels = small_set
    with pytest.raises(ShapeError):
        iterate_batches(images, labels[:-1], 8)
    with pytest.raises(ConfigError):
        iterate_batches(images, labels, 0)
    with pytest.raises(ConfigError, match="needs mean and std"):
        iterate_batches(images, labels, 8, normalization="standard")
    with pytest.raises(ShapeError, match="outside"):
        iterate_batches(images, labels, 8, order=np.array([0, 500]))


def test_to_float_unit_and_standard():
    images = np.array([[[0, 255], [51, 128]]], dtype=np.uint8)
    unit = to_float(images)
    assert unit.shape == (1, 1, 2, 2) and unit.dtype == np.float32
    np.testing.assert_array_equal(unit[0, 0], np.array([[0, 255], [51, 128]], np.float32) / 255)
    assert unit.min() == 0.0 and unit.max() == 1.0
    standard = to_float(images, "standard", mean=0.5, std=0.25)
    np.testing.assert_allclose(standard, (unit - 0.5) / 0.25, rtol=1e-6)
    assert standard.dtype == np.float32
    np.testing.assert_array_equal(to_float(images[:, None]), unit)  # (B, 1, H, W) input


def test_to_float_writes_into_out():
    images = np.full((3, 4, 4), 102, dtype=np.uint8)
    out = np.empty((3, 1, 4, 4), np.float32)
    result = to_float(images, out=out)
    assert result is out and np.allclose(out, 0.4)
    with pytest.raises(ShapeError):
        to_float(images, out=np.empty((3, 4, 4), np.float32))
    with pytest.raises(ConfigError):
        to_float(images, normalization="zscore")
    with pytest.raises(ConfigError, match="std must be > 0"):
        to_float(images, "standard", mean=0.1, std=0.0)


def test_split_validation_stratified_and_seeded(rng):
    labels = np.repeat(np.arange(4), [100, 200, 300, 400]).astype(np.uint8)
    images = np.arange(1000, dtype=np.int64)  # image i is just its index: easy to track
    train_x, train_y, val_x, val_y = split_validation(images, labels, 0.1, seed=5)
    assert len(val_x) == 100 and len(train_x) == 900
    assert np.bincount(val_y).tolist() == [10, 20, 30, 40]
    assert sorted(np.concatenate([train_x, val_x]).tolist()) == list(range(1000))
    np.testing.assert_array_equal(labels[val_x], val_y)
    again = split_validation(images, labels, 0.1, seed=5)
    np.testing.assert_array_equal(again[2], val_x)
    other = split_validation(images, labels, 0.1, seed=6)
    assert not np.array_equal(other[2], val_x)
    random_split = split_validation(images, labels, 0.25, seed=5, stratified=False)
    assert len(random_split[2]) == 250
    with pytest.raises(ConfigError):
        split_validation(images, labels, 1.0, seed=0)
    with pytest.raises(ConfigError):
        split_validation(images[:3], labels[:3], 0.01, seed=0)


def test_dataset_mean_std_exact(rng):
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    mean, std = dataset_mean_std(images)
    scaled = images.astype(np.float64) / 255
    assert mean == pytest.approx(scaled.mean(), rel=1e-12)
    assert std == pytest.approx(scaled.std(), rel=1e-12)


def test_fashion_mnist_statistics(data_root):
    from cnnlab.data.idx import read_idx
    images = read_idx(data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    mean, std = dataset_mean_std(images)
    assert mean == pytest.approx(0.2868, abs=1e-3) and std == pytest.approx(0.3524, abs=1e-3)
