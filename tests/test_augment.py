"""--augment: parsing, what each augmentation does, seeding, and bit-identical resumes."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.data import epoch_order, iterate_batches
from cnnlab.data.augment import Augmentation, parse_augment, rotate_and_shift, shift
from cnnlab.errors import ConfigError
from test_train import assert_same_checkpoint, read_metrics, without_timings
from test_train_resume import interrupt_at_random_step


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def batch(count=16, channels=1, size=(12, 10), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, channels) + size, dtype=np.uint8)


@pytest.mark.parametrize("text, expected", [
    ("shift:2,flip,rotate:10", Augmentation(shift=2, flip=True, rotate=10.0)),
    ("rotate, shift", Augmentation(shift=2, rotate=10.0)),
    ("FLIP:force", Augmentation(flip=True, force_flip=True)),
    ("", None), ("none", None),
])
def test_parse(text, expected):
    assert parse_augment(text) == expected
    if expected is not None:
        assert parse_augment(expected.spec) == expected


@pytest.mark.parametrize("text, needle", [
    ("shfit:2", "did you mean 'shift'"), ("shift:0", "shift takes a whole number"),
    ("shift:1.5", "shift takes a whole number"), ("rotate:200", "rotate takes degrees"),
    ("flip:yes", "flip takes no value"), ("flip,flip", "given twice"),
])
def test_parse_errors_are_one_line(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_augment(text)


def test_shift_moves_pixels_and_fills_with_zero():
    images = batch()
    moved = shift(images, np.tile([[2, -1]], (16, 1)))
    assert np.array_equal(moved[:, :, 2:, :-1], images[:, :, :-2, 1:])
    assert not moved[:, :, :2].any() and not moved[:, :, :, -1].any()


def test_rotation_by_quarter_turns_is_exact_and_zero_rotation_is_the_shift():
    images = batch(size=(9, 9), channels=3)
    quarter = rotate_and_shift(images, np.full(16, np.pi / 2), np.zeros((16, 2), int))
    assert np.array_equal(quarter, np.rot90(images, 1, axes=(2, 3)))
    shifts = np.random.default_rng(1).integers(-3, 4, (16, 2))
    assert np.array_equal(rotate_and_shift(images, np.zeros(16), shifts), shift(images, shifts))


def test_small_rotation_keeps_the_centre_and_moves_the_corners():
    image = np.zeros((1, 1, 21, 21), np.uint8)
    image[0, 0, 10, 10:] = 255                       # a ray from the centre to the right
    turned = rotate_and_shift(image, np.array([np.deg2rad(10.0)]), np.zeros((1, 2), int))
    assert turned[0, 0, 10, 10] == 255
    assert turned[0, 0, 10, 20] < 128 and turned[0, 0, 8, 20] > 0   # counter-clockwise: up


def test_flip_mirrors_about_half_of_the_images():
    images = batch(count=200)
    out = Augmentation(flip=True)(images, np.random.default_rng(0))
    mirrored = np.all(out == images[..., ::-1], axis=(1, 2, 3))
    kept = np.all(out == images, axis=(1, 2, 3))
    assert np.all(mirrored | kept) and 70 < mirrored.sum() < 130


def test_same_seed_same_batches_and_every_batch_differs():
    images, labels = batch(count=64), np.arange(64)
    augment = parse_augment("shift:2,flip,rotate:10")

    def run(seed):
        return [x.copy() for x, _ in iterate_batches(images, labels, 16, epoch_order(64, 0, 1),
                                                     augment=augment, augment_seed=(seed, 1))]
    first, again, other = run(0), run(0), run(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    resumed = [x for x, _ in iterate_batches(images, labels, 16, epoch_order(64, 0, 1),
                                             augment=augment, augment_seed=(0, 1), start_batch=2)]
    assert all(np.array_equal(a, b) for a, b in zip(first[2:], resumed))


def test_flip_is_refused_for_digits_unless_forced(tiny_fashion, tmp_path, capsys):
    from cnnlab.data import DATASETS

    assert DATASETS["mnist"].digits and DATASETS["kmnist"].digits
    assert not DATASETS["fashion-mnist"].digits
    options = ["train", "--model", "fc8", "--dataset", str(tiny_fashion), "--digits",
               "--limit-train", "256", "--limit-test", "64", "--epochs", "1", "--no-progress",
               "--no-report"]
    assert main(options + ["--augment", "flip", "--run-dir", str(tmp_path / "a")]) == 2
    assert "flip:force" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(options + ["--augment", "flip:force,shift:1", "--run-dir", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["augment"] == "flip:force,shift:1"


def test_too_large_a_shift_is_refused(tiny_fashion, tmp_path, capsys):
    assert main(["train", "--model", "fc8", "--dataset", str(tiny_fashion), "--augment",
                 "shift:14", "--no-progress", "--run-dir", str(tmp_path / "r")]) == 2
    assert "use at most shift:13" in capsys.readouterr().err


def test_interrupted_augmented_run_resumes_bit_identically(tiny_fashion, tmp_path, capsys):
    options = ["train", "--model", "c6k3p1-p2-fc32", "--dataset", str(tiny_fashion), "--epochs", "2",
               "--batch-size", "16", "--threads", "2", "--limit-train", "512", "--limit-test", "100",
               "--log-every", "1", "--no-report", "--no-progress",
               "--augment", "shift:2,flip,rotate:10"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(options + ["--run-dir", str(reference)]) == 0
    code, output, _ = interrupt_at_random_step(options, interrupted, signal.SIGINT, 7)
    assert code == 130, output
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    assert without_timings(read_metrics(interrupted)) == without_timings(read_metrics(reference))
    assert_same_checkpoint(reference, interrupted)
    unaugmented = tmp_path / "plain"
    plain = [option for option in options if option not in ("--augment", "shift:2,flip,rotate:10")]
    assert main(plain + ["--run-dir", str(unaugmented)]) == 0
    assert read_metrics(unaugmented)[0]["loss"] != read_metrics(reference)[0]["loss"]


def test_the_benchmark_reports_the_ratio_to_a_step(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "augment.py"
    spec = importlib.util.spec_from_file_location("augment_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--repeats", "1", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "cnn train step" in out and "augment shift:2,flip,rotate:10" in out and "of a step" in out
