"""`cnnlab predict` prepares each picture as the model's training images were prepared."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import read_idx
from cnnlab.errors import ImageError
from cnnlab.images import (background_polarity, default_preprocess, load_inputs, match_polarity,
                           preprocess_record)


@pytest.fixture(scope="module")
def fashion_run(data_root, tmp_path_factory):
    """An MLP trained for two epochs on 12,000 images of the real Fashion-MNIST (IDX)."""
    run = tmp_path_factory.mktemp("fashion") / "run"
    assert main(["train", "--model", "mlp", "--dataset", "fashion-mnist", "--data-dir",
                 str(data_root), "--limit-train", "12000", "--epochs", "2", "--no-progress",
                 "--no-report", "--run-dir", str(run)]) == 0
    return run


def predict_json(capsys, *argv) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *map(str, argv), "--json", "--top-k", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_checkpoint_records_the_preparation(fashion_run):
    with np.load(fashion_run / "checkpoint.npz", allow_pickle=False) as arrays:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    record = meta["preprocess"]
    assert record["kind"] == "resize" and record["channels"] == 1 and record["size"] == [28, 28]
    assert record["polarity"] == "dark" and record["normalization"] == meta["normalization"]


@pytest.mark.slow
def test_fashion_mnist_pngs_are_predicted_as_evaluate_scores_the_idx_test_set(
        fashion_run, data_root, tmp_path, capsys):
    images = read_idx(data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(data_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"{index:05d}.png")
        Image.fromarray(image).save(paths[-1])
    results = predict_json(capsys, fashion_run, *paths)
    assert results[0]["top"][0]["name"] == "Ankle boot"     # the example
    predicted = np.array([result["top"][0]["class"] for result in results])
    png_accuracy = float(np.mean(predicted == labels))
    assert main(["evaluate", str(fashion_run), "--json", str(tmp_path / "eval.json")]) == 0
    idx_accuracy = json.loads((tmp_path / "eval.json").read_text())["accuracy"]
    assert abs(png_accuracy - idx_accuracy) <= 0.005
    # the digit preparation shrinks clothing into a 20-pixel box: far worse, as the issue saw
    digit = predict_json(capsys, fashion_run, *paths[:500], "--prepare", "digit")
    digit_accuracy = np.mean([r["top"][0]["class"] for r in digit] == labels[:500])
    assert digit_accuracy < png_accuracy - 0.1


def test_a_photo_with_a_light_background_is_inverted_and_resized(fashion_run, data_root,
                                                                   tmp_path, capsys):
    image = read_idx(data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")[0]
    photo = Image.fromarray(255 - image).convert("RGB").resize((140, 140), Image.BILINEAR)
    photo.save(tmp_path / "boot.jpg", quality=95)
    assert predict_json(capsys, fashion_run, tmp_path / "boot.jpg")[0]["top"][0]["name"] == "Ankle boot"


def test_prepare_none_needs_the_training_size(fashion_run, tmp_path, capsys):
    Image.new("L", (30, 28)).save(tmp_path / "wide.png")
    assert main(["predict", str(fashion_run), str(tmp_path / "wide.png"), "--prepare", "none"]) == 2
    assert "--prepare resize" in capsys.readouterr().err


def test_preparations_of_one_picture(tmp_path):
    picture = np.zeros((40, 40), np.uint8)
    picture[5:35, 12:20] = 255
    Image.fromarray(picture).save(tmp_path / "bar.png")
    resize = preprocess_record("resize", 3, (20, 20), None, "light")
    pixels = load_inputs([tmp_path / "bar.png"], preprocess=resize)[0].pixels
    assert pixels.shape == (3, 20, 20) and pixels[:, 0, 0].tolist() == [255, 255, 255]  # inverted
    digit = load_inputs([tmp_path / "bar.png"], preprocess=preprocess_record("digit", 1, (28, 28), None))
    assert digit[0].pixels.shape == (28, 28)
    with pytest.raises(ImageError, match="--prepare resize"):
        load_inputs([tmp_path / "bar.png"], preprocess=preprocess_record("digit", 3, (28, 28), None))


def test_polarity_of_a_training_set_and_matching_it():
    dark = np.zeros((10, 1, 8, 8), np.uint8)
    dark[:, :, 3:5, 3:5] = 200
    assert background_polarity(dark) == "dark"
    assert background_polarity(255 - dark) == "light"
    assert background_polarity(np.concatenate([dark, 255 - dark])) == "mixed"
    assert np.array_equal(match_polarity(255 - dark[0], "dark"), dark[0])
    assert np.array_equal(match_polarity(dark[0], "dark"), dark[0])
    assert np.array_equal(match_polarity(255 - dark[0], "mixed"), 255 - dark[0])


def test_checkpoints_from_before_the_record_keep_their_preparation():
    assert default_preprocess({"dataset": "mnist"})["kind"] == "digit"
    old_fashion = default_preprocess({"dataset": "fashion-mnist", "input_shape": [1, 28, 28]})
    assert old_fashion["kind"] == "resize" and old_fashion["polarity"] == "dark"
