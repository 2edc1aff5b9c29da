"""Evaluation helpers and `cnnlab evaluate` on a tiny IDX dataset folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.checkpoint import save_checkpoint
from cnnlab.cli import main
from cnnlab.data import to_float, write_idx
from cnnlab.errors import ShapeError
from cnnlab.evaluation import (accuracy, confusion_matrix, evaluate, format_confusion,
                               per_class_accuracy, predict_logits)
from cnnlab.models import build_model
from cnnlab.ops.activation import log_softmax

CLASSES = ["zero", "one", "two"]


@pytest.fixture
def tiny(tmp_path, rng):
    """A 3-class dataset of 6x6 images in a folder, and a checkpoint of a small model."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for split, count in (("train", 12), ("t10k", 30)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (count, 6, 6), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz",
                  (np.arange(count) % 3).astype(np.uint8))
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    model = build_model("c2k3-fc5", rng, input_shape=(1, 6, 6), num_classes=3)
    meta = {"classes": CLASSES, "dataset": str(folder), "epoch": 2,
            "normalization": {"kind": "standard", "mean": 0.5, "std": 0.25}}
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, model, meta=meta)
    return folder, run, model


def test_confusion_matrix_and_per_class_accuracy():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 1])
    confusion = confusion_matrix(labels, predicted, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    per_class = per_class_accuracy(confusion)
    np.testing.assert_allclose(per_class[:3], [0.5, 2 / 3, 0.0])
    assert np.isnan(per_class[3])
    assert accuracy(np.eye(4)[predicted], labels) == pytest.approx(0.5)
    with pytest.raises(ShapeError, match="4 classes"):
        confusion_matrix(np.array([5]), np.array([0]), 4)
    table = format_confusion(confusion, ["a", "b", "c", "d"])
    assert table.splitlines()[3].split("|")[1].split() == ["1", "1", "0", "0"]


def test_evaluate_matches_a_direct_computation_and_restores_mode(tiny, rng):
    _, _, model = tiny
    images = rng.integers(0, 256, (25, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 3, 25)
    model.train()
    result = evaluate(model, images, labels, batch_size=7, normalization="standard",
                      mean=0.5, std=0.25)
    assert model.training
    model.eval()
    logits = model(to_float(images, "standard", 0.5, 0.25)).astype(np.float64)
    expected_loss = -log_softmax(logits)[np.arange(25), labels].mean()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.accuracy == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert result.confusion.sum() == 25 and result.num_samples == 25
    np.testing.assert_array_equal(result.confusion,
                                  confusion_matrix(labels, logits.argmax(1), 3))
    np.testing.assert_allclose(predict_logits(model, to_float(images, "standard", 0.5, 0.25),
                                              batch_size=4), logits, rtol=1e-6)
    assert json.dumps(result.to_dict(CLASSES))



def test_one_inference_loop_serves_evaluate_logits_and_the_figures(tiny, rng):
    from cnnlab.evaluation import iterate_logits
    from cnnlab.ops.activation import softmax
    from cnnlab.plots.runs import predict_probabilities

    _, _, model = tiny
    images = rng.integers(0, 256, (11, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 3, 11)
    x = to_float(images, "unit")
    model.train()
    batches = list(iterate_logits(model, images, batch_size=4, prepare=lambda b: to_float(b, "unit")))
    assert model.training and [start for start, _ in batches] == [0, 4, 8]
    logits = np.concatenate([part for _, part in batches])
    np.testing.assert_array_equal(logits, predict_logits(model, x, batch_size=4))
    np.testing.assert_allclose(predict_probabilities(model, x, batch_size=3), softmax(logits, axis=1),
                               rtol=1e-6)
    kept = evaluate(model, images, labels, batch_size=5, normalization="unit", keep_outputs=True)
    np.testing.assert_allclose(kept.probabilities, softmax(logits, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(kept.predictions, logits.argmax(1))
    assert kept.images is images and kept.labels.tolist() == labels.tolist()
    assert kept.accuracy == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert evaluate(model, images, labels, normalization="unit").probabilities is None

def test_cli_evaluate_prints_accuracy_classes_and_confusion(tiny, tmp_path, capsys):
    folder, run, _ = tiny
    out = tmp_path / "result.json"
    assert main(["evaluate", str(run), "--batch-size", "8", "--json", str(out)]) == 0
    output = capsys.readouterr().out
    assert "test accuracy:" in output and "test loss:" in output
    assert "confusion matrix" in output
    for index, name in enumerate(CLASSES):
        assert f"{index} {name}" in output
    saved = json.loads(out.read_text())
    assert np.array(saved["confusion"]).sum() == 30
    assert np.array(saved["confusion"]).sum(axis=1).tolist() == [10, 10, 10]
    assert saved["classes"] == CLASSES
    rows = [line for line in output.splitlines() if "|" in line][1:]
    assert [sum(int(cell) for cell in row.split("|")[1].split()) for row in rows] == [10, 10, 10]
    correct = sum(int(row.split("|")[1].split()[i]) for i, row in enumerate(rows))
    assert f"({correct} / 30)" in output
    assert saved["accuracy"] == pytest.approx(correct / 30)


def test_cli_evaluate_errors_are_one_line(tiny, tmp_path, capsys):
    folder, run, _ = tiny
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    for split, count in (("train", 2), ("t10k", 2)):
        write_idx(other / f"{split}-images-idx3-ubyte", np.zeros((count, 5, 5), np.uint8))
        write_idx(other / f"{split}-labels-idx1-ubyte", np.zeros(count, np.uint8))
    assert main(["evaluate", str(run), "--dataset", str(other)]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("cnnlab: error:") and "1x5x5 images (channels x height x width) but the model takes 1x6x6" in error
