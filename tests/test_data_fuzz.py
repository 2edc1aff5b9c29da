"""Fuzzing read_idx: whatever bytes a file holds, only DataError (or a valid array) comes out."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cnnlab.data.idx import IDX_DTYPES, read_idx
from cnnlab.errors import DataError

TYPE_CODES = list(IDX_DTYPES) + [0x00, 0x07, 0x0A, 0x0F, 0xFF]


@st.composite
def near_valid_idx(draw) -> bytes:
    """Headers that are valid or almost: real type codes, small dims, payload off by a bit."""
    zero_bytes = draw(st.sampled_from([b"\x00\x00"] * 6 + [b"\x00\x01", b"\x1f\x8b", b"<h"]))
    code = draw(st.sampled_from(TYPE_CODES))
    ndim = draw(st.integers(0, 5))
    dims = draw(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)),
                         min_size=ndim, max_size=ndim))
    header = zero_bytes + bytes([code, ndim]) + struct.pack(f">{ndim}I", *dims)
    header = header[:draw(st.integers(2, len(header)))] if draw(st.booleans()) else header
    itemsize = IDX_DTYPES[code][0].itemsize if code in IDX_DTYPES else 1
    expected = int(np.prod(dims, dtype=object)) * itemsize if ndim else 0
    length = max(0, min(expected, 4096) + draw(st.integers(-3, 3)))
    return header + draw(st.binary(min_size=length, max_size=length))


@st.composite
def file_bytes(draw) -> bytes:
    content = draw(st.one_of(st.binary(max_size=300), near_valid_idx()))
    packing = draw(st.sampled_from(["raw", "gzip", "gzip-cut", "gzip-flip"]))
    if packing == "raw":
        return content
    packed = bytearray(gzip.compress(content, compresslevel=draw(st.integers(0, 9))))
    if packing == "gzip-cut":
        return bytes(packed[:draw(st.integers(0, len(packed) - 1))])
    if packing == "gzip-flip":
        position = draw(st.integers(0, len(packed) - 1))
        packed[position] ^= draw(st.integers(1, 255))
    return bytes(packed)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=file_bytes())
def test_read_idx_raises_only_data_error(folder, data):
    path = folder / "fuzz.idx"
    path.write_bytes(data)
    try:
        array = read_idx(path)
    except DataError as error:
        message = str(error)
        assert message.startswith(str(path)) and "\n" not in message
        event("rejected with DataError")
        return
    event("accepted")
    # accepted: then it really was a well-formed IDX file of that shape
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    assert array.shape == dims
    assert len(raw) == 4 + 4 * ndim + array.nbytes
