"""Images for `cnnlab predict`: MNIST-style preparation, bad images, and the command itself."""

from __future__ import annotations

import json
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from cnnlab.checkpoint import save_checkpoint
from cnnlab.cli import main
from cnnlab.data import read_idx, to_float, write_idx
from cnnlab.errors import CnnlabError, ImageError
from cnnlab.images import load_inputs, prepare_digit, read_image
from cnnlab.models import build_model
from cnnlab.ops.loss import cross_entropy
from cnnlab.optim import Adam

DIGITS = "0123456789"


@pytest.fixture(scope="module")
def mnist(real_mnist):
    images = read_idx(real_mnist / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(real_mnist / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


@pytest.fixture(scope="module")
def checkpoint(mnist, tmp_path_factory):
    """A small MLP trained for two epochs on 8,000 real MNIST digits (about a second)."""
    images, labels = mnist
    rng = np.random.default_rng(0)
    model = build_model("fc64", rng)
    optimizer = Adam(model.parameters(), lr=2e-3)
    for _ in range(2):
        order = rng.permutation(8000)
        for start in range(0, 8000, 100):
            batch = order[start:start + 100]
            optimizer.zero_grad()
            _, dlogits = cross_entropy(model(to_float(images[batch])), labels[batch])
            model.backward(dlogits)
            optimizer.step()
    meta = {"classes": [f"digit {d}" for d in DIGITS], "dataset": "mnist",
            "normalization": {"kind": "unit", "mean": None, "std": None}}
    return save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint.npz", model, meta=meta)


def as_photo(digit: np.ndarray, scale: int = 5, offset=(37, 11), canvas=(220, 180)):
    """Black ink on white paper, larger, off-centre: how a user's drawing looks."""
    big = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.BILINEAR)
    paper = np.full(canvas, 255, np.uint8)
    paper[offset[0]:offset[0] + 28 * scale, offset[1]:offset[1] + 28 * scale] = np.asarray(big)
    return paper


def test_preparation_restores_polarity_size_and_centre(mnist):
    images, _ = mnist
    for digit in images[8000:8010]:
        prepared = prepare_digit(as_photo(digit).astype(np.float64))
        assert prepared.shape == (28, 28) and prepared.dtype == np.uint8
        border = np.concatenate([prepared[:3].ravel(), prepared[-3:].ravel(),
                                 prepared[:, :3].ravel(), prepared[:, -3:].ravel()])
        assert np.median(border) == 0 and border.mean() < 10   # white-on-black again
        assert prepared.max() >= 250
        rows, columns = np.nonzero(prepared > 25)
        assert max(np.ptp(rows), np.ptp(columns)) + 1 in (19, 20, 21)   # the 20-pixel box
        weights = prepared.astype(np.float64)
        centre = (weights.sum(1) @ np.arange(28) / weights.sum(),
                  weights.sum(0) @ np.arange(28) / weights.sum())
        np.testing.assert_allclose(centre, (14, 14), atol=0.75)
        correlation = np.corrcoef(prepared.ravel(), digit.ravel())[0, 1]
        assert correlation > 0.75


def test_predict_reads_png_jpeg_and_idx_and_is_mostly_right(mnist, checkpoint, tmp_path, capsys):
    images, labels = mnist
    paths, expected = [], []
    for index in range(8000, 8020):
        path = tmp_path / f"digit{index}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(as_photo(images[index])).save(path)
        paths.append(str(path))
        expected.append(labels[index])
    assert main(["predict", str(checkpoint), *paths, "--top-k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["image"] for result in results] == paths
    assert all(len(result["top"]) == 2 for result in results)
    assert all(abs(sum(e["probability"] for e in result["top"]) - 1) < 1
               and result["top"][0]["probability"] >= result["top"][1]["probability"]
               for result in results)
    predicted = [result["top"][0]["class"] for result in results]
    assert np.mean(np.array(predicted) == np.array(expected)) >= 0.8
    assert results[0]["top"][0]["name"] == f"digit {predicted[0]}"

    idx_path = tmp_path / "few-idx3-ubyte"
    write_idx(idx_path, images[8000:8005])
    assert main(["predict", str(checkpoint.parent), str(idx_path)]) == 0
    output = capsys.readouterr().out
    assert f"{idx_path}[4]: digit" in output and output.count("%") >= 5 * 4


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_unusual_modes_are_converted(mnist, tmp_path, mode):
    digit = mnist[0][8001]
    paper = as_photo(digit)
    if mode == "I;16":
        image = Image.fromarray(paper.astype(np.uint16) * 257)
    elif mode in ("RGBA", "LA"):
        # white ink on a transparent background: the background must become black
        alpha = 255 - paper
        image = Image.fromarray(np.stack([np.full_like(paper, 255)] * 3 + [alpha], axis=-1),
                                "RGBA")
        image = image.convert(mode)
    else:
        image = Image.fromarray(paper).convert(mode)
    path = tmp_path / f"digit.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    prepared = load_inputs([path])[0].pixels
    assert prepared.shape == (28, 28) and prepared[0].max() == 0 and prepared.max() > 200
    assert np.corrcoef(prepared.ravel(), digit.ravel())[0, 1] > 0.6


def png_with_size(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("name, make, message", [
    ("text.png", lambda p: p.write_text("not an image"), "not an image"),
    ("empty.png", lambda p: p.write_bytes(b""), "not an image"),
    ("huge.png", lambda p: p.write_bytes(png_with_size(20_000, 20_000)), "too large"),
    ("truncated.png", lambda p: p.write_bytes(png_with_size(50, 50)), "truncated or corrupt"),
    ("white.png", lambda p: Image.new("L", (40, 30), 255).save(p), "blank"),
    ("grey.jpg", lambda p: Image.new("RGB", (40, 30), (120, 120, 120)).save(p), "blank"),
    ("clear.png", lambda p: Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(p),
     "fully transparent"),
    ("missing.png", lambda p: None, "no such image"),
    ("labels-idx1-ubyte", lambda p: write_idx(p, np.arange(5, dtype=np.uint8)), "labels"),
    ("bad-idx3-ubyte", lambda p: p.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x09"), "."),
])
def test_bad_images_give_image_error(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageError, match=message) as error:
        load_inputs([path])
    assert "\n" not in str(error.value)


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "digit.png"
    Image.new("L", (10, 10)).save(path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(CnnlabError, match=r"pip install 'cnnlab\[images\]'"):
        read_image(path)


def test_predict_command_errors_are_one_line(checkpoint, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("L", (20, 20), 0).save(blank)
    assert main(["predict", str(checkpoint), str(blank)]) == 2
    assert "blank" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing.npz"), str(blank)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(blank), "--top-k", "0"]) == 2
