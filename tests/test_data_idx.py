"""IDX reading/writing: round trips, every malformed file gives a one-line DataError,
and the real MNIST and Fashion-MNIST files load and verify."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data.datasets import verify_file
from cnnlab.data.idx import read_idx, write_idx
from cnnlab.data.registry import FILE_NAMES
from cnnlab.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def header(code: int, *dims: int) -> bytes:
    return struct.pack(f">BBBB{len(dims)}I", 0, 0, code, len(dims), *dims)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_every_dtype(tmp_path, rng, dtype, suffix):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(dtype)
    else:
        array = (rng.standard_normal((3, 4, 5)) * 1e3).astype(dtype)
    path = tmp_path / f"data{suffix}"
    write_idx(path, array)
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    assert loaded.shape == (3, 4, 5)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.flags.writeable
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 5), (0, 28, 28)])
def test_round_trip_shapes(tmp_path, shape):
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    write_idx(tmp_path / "a.idx", array)
    assert read_idx(tmp_path / "a.idx").shape == shape


def test_big_endian_on_disk(tmp_path):
    write_idx(tmp_path / "a", np.array([1, 256], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == header(0x0B, 2) + b"\x00\x01\x01\x00"


def test_gzip_detected_by_magic_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "plain.gz").write_bytes(header(0x08, 3, 4) + array.tobytes())
    (tmp_path / "packed").write_bytes(gzip.compress(header(0x08, 3, 4) + array.tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed"), array)


def test_write_rejects_dtypes_idx_cannot_hold(tmp_path):
    with pytest.raises(DataError, match="cannot store dtype int64.*astype"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match="1 to 32 dimensions"):
        write_idx(tmp_path / "a", np.zeros((), dtype=np.uint8))


GOOD = header(0x08, 2, 3, 4) + bytes(24)
BAD_FILES = {
    "empty": (b"", "empty"),
    "short magic": (b"\x00\x00", "only 2 bytes"),
    "not idx": (b"PK\x03\x04" + bytes(20), "starts with bytes 50 4b"),
    "html page": (b"<html><body>404</body></html>", "HTML page"),
    "bad type code": (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + bytes(3), "type code 0x07"),
    "zero dims": (b"\x00\x00\x08\x00", "declares 0 dimensions"),
    "truncated header": (b"\x00\x00\x08\x03" + bytes(6), "truncated"),
    "truncated payload": (GOOD[:-5],
                          r"payload has 19 bytes, header promises 24 \(2x3x4\).*truncated"),
    "extra bytes": (GOOD + b"xyz", r"payload has 27 bytes, header promises 24.*3 extra bytes"),
    "huge promise": (header(0x0E, 60000, 60000, 60000) + bytes(8), "header promises"),
    "gzip truncated": (gzip.compress(GOOD + bytes(1000))[:-30], "truncated"),
    "gzip corrupt": (b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 40, "corrupt"),
    "gzip then garbage": (gzip.compress(GOOD) + b"garbage!", "corrupt"),
    "gzip of nothing": (gzip.compress(b""), "only 0 bytes"),
    "gzip huge promise": (gzip.compress(header(0x08, 2**31, 2**31)), "more than a"),
    "gzip extra": (gzip.compress(GOOD + b"\x01"), "1 extra bytes"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_give_one_line_data_error(tmp_path, case):
    content, pattern = BAD_FILES[case]
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as caught:
        read_idx(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(DataError, match="is a folder, not a file"):
        read_idx(tmp_path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked"
    path.write_bytes(GOOD)

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match="permission denied"):
        read_idx(path)


def test_truncated_real_file_message(tmp_path, real_mnist):
    raw = gzip.decompress((real_mnist / FILE_NAMES["test_images"]).read_bytes())
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw[:-1000], compresslevel=1))
    with pytest.raises(DataError) as caught:
        read_idx(path)
    assert str(caught.value) == (
        f"{path}: payload has 7839000 bytes, header promises 7840000 (10000x28x28): "
        "the file is truncated; replace it with a complete copy (cnnlab data download NAME "
        "fetches a named dataset)")


def test_real_mnist_test_set(real_mnist):
    images = read_idx(real_mnist / FILE_NAMES["test_images"])
    labels = read_idx(real_mnist / FILE_NAMES["test_labels"])
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the famous first test digits


@pytest.mark.parametrize("key", ["test_images", "test_labels"])
def test_real_mnist_files_pass_md5(real_mnist, key):
    assert verify_file(real_mnist / FILE_NAMES[key], "mnist", key) == "md5"


@pytest.mark.parametrize("key", list(FILE_NAMES))
def test_real_fashion_files_pass_content_checksum(data_root, key):
    # these copies were recompressed (Debian), so only the content SHA-256 matches
    assert verify_file(data_root / "fashion-mnist" / FILE_NAMES[key], "fashion-mnist",
                       key) == "sha256"


def test_recompressed_file_accepted_by_content(tmp_path, real_mnist):
    raw = gzip.decompress((real_mnist / FILE_NAMES["test_labels"]).read_bytes())
    recompressed = tmp_path / FILE_NAMES["test_labels"]
    recompressed.write_bytes(gzip.compress(raw, compresslevel=1))
    assert verify_file(recompressed, "mnist", "test_labels") == "sha256"
    uncompressed = tmp_path / "t10k-labels-idx1-ubyte"
    uncompressed.write_bytes(raw)
    assert verify_file(uncompressed, "mnist", "test_labels") == "sha256"
    altered = bytearray(raw)
    altered[100] = (altered[100] + 1) % 10
    recompressed.write_bytes(gzip.compress(bytes(altered)))
    with pytest.raises(DataError, match="is not the published mnist file t10k-labels"):
        verify_file(recompressed, "mnist", "test_labels")


def test_file_of_another_dataset_fails_verification(data_root):
    path = data_root / "fashion-mnist" / FILE_NAMES["test_labels"]
    with pytest.raises(DataError, match="published mnist file t10k-labels-idx1-ubyte.gz"):
        verify_file(path, "mnist", "test_labels")
