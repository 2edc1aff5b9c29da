"""Reading and writing IDX files, the format of MNIST, Fashion-MNIST and KMNIST.

An IDX file is a header followed by a C-order array, every number big-endian::

    bytes 0-1   0x00 0x00
    byte  2     data type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
                0x0D float, 0x0E double)
    byte  3     number of dimensions, ndim
    4 * ndim    the size of each dimension, unsigned 32-bit
    ...         prod(sizes) values of the data type

Files may be gzip-compressed; gzip is recognised by its magic bytes (1f 8b), not by
the file name. Every problem raises :class:`cnnlab.errors.DataError` whose one-line
message names the file and says what is wrong; no other exception escapes.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError
from cnnlab.utils.fileio import atomic_write
from cnnlab.utils.formatting import format_shape

# IDX type code -> (big-endian dtype as stored, name used in messages)
IDX_DTYPES = {
    0x08: (np.dtype(">u1"), "unsigned byte"),
    0x09: (np.dtype(">i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "short (int16)"),
    0x0C: (np.dtype(">i4"), "int (int32)"),
    0x0D: (np.dtype(">f4"), "float (float32)"),
    0x0E: (np.dtype(">f8"), "double (float64)"),
}
_CODE_BY_KIND = {("u", 1): 0x08, ("i", 1): 0x09, ("i", 2): 0x0B, ("i", 4): 0x0C,
                 ("f", 4): 0x0D, ("f", 8): 0x0E}
GZIP_MAGIC = b"\x1f\x8b"
MAX_NDIM = 32  # NumPy's limit is 64; no real IDX file comes near either
# Deflate cannot compress better than about 1032:1, so a header promising more bytes
# than that is a lie we can reject before allocating memory for it.
_MAX_DEFLATE_RATIO = 1100
_REDOWNLOAD = "replace it with a complete copy (cnnlab data download NAME fetches a named dataset)"


@dataclass
class IdxContent:
    """A decoded IDX file: the array (native byte order) and the raw header bytes."""

    array: np.ndarray
    header: bytes
    payload: np.ndarray  # the payload bytes as stored (big-endian), uint8, for hashing
    compressed: bool


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file, turning every operating-system error into a DataError."""
    path = Path(path)
    try:
        if path.is_dir():
            raise DataError(f"{path}: is a folder, not a file; give the path of an IDX file")
        if not path.exists():
            raise DataError(f"{path}: no such file; check the path (or download the dataset again)")
        return path.read_bytes()
    except DataError:
        raise
    except PermissionError:
        raise DataError(f"{path}: cannot be read (permission denied); fix its permissions "
                        f"(chmod u+r) or copy it somewhere readable") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise DataError(f"{path}: cannot be read ({reason})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a NumPy array.

    Args:
        path: the file. Gzip is detected by the magic bytes, so ``.gz`` or not does not matter.

    Returns:
        The array with the header's shape, in native byte order: uint8 for type 0x08,
        int8, int16, int32, float32 or float64 for the others. It owns its memory and is
        writable.

    Raises:
        DataError: the file is missing, a folder, unreadable, not an IDX file, truncated,
            longer than its header promises, or not valid gzip.
    """
    return decode_idx(read_file_bytes(path), str(path)).array


def decode_idx(data: bytes, name: str) -> IdxContent:
    """Decode the bytes of an IDX file; ``name`` is used in error messages."""
    if len(data) == 0:
        raise DataError(f"{name}: the file is empty (0 bytes), not an IDX file; {_REDOWNLOAD}")
    compressed = data[:2] == GZIP_MAGIC
    stream = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") if compressed else io.BytesIO(data)
    try:
        return _decode_stream(stream, name, compressed, len(data))
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{name}: the gzip stream ends before its end marker: the file is "
                        f"truncated; {_REDOWNLOAD}") from None
    except (gzip.BadGzipFile, zlib.error, OSError, struct.error, ValueError) as error:
        detail = str(error).split("\n")[0] or type(error).__name__
        raise DataError(f"{name}: the gzip data is corrupt ({detail}); {_REDOWNLOAD}") from None
    except MemoryError:
        raise DataError(f"{name}: not enough memory to hold the array its header "
                        f"describes") from None


def _read_exactly(stream, size: int) -> bytes:
    """Read up to ``size`` bytes, looping over short reads (gzip returns chunks)."""
    parts, remaining = [], size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _readinto_fully(stream, buffer: memoryview) -> int:
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:])
        if not count:
            break
        filled += count
    return filled


def _count_rest(stream) -> int:
    count = 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return count
        count += len(chunk)


def _parse_magic(magic: bytes, name: str) -> tuple[np.dtype, int]:
    if len(magic) < 4:
        raise DataError(f"{name}: only {len(magic)} bytes where a 4-byte IDX magic number "
                        f"should be: not an IDX file (or truncated); {_REDOWNLOAD}")
    if magic[:2] != b"\x00\x00":
        hint = (" (it looks like an HTML page, perhaps an error page saved by a failed download)"
                if magic[:1] == b"<" else "")
        raise DataError(f"{name}: not an IDX file: it starts with bytes {magic[:2].hex(' ')}, an "
                        f"IDX file starts with 00 00{hint}; {_REDOWNLOAD}")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {n}" for c, (_, n) in IDX_DTYPES.items())
        raise DataError(f"{name}: unknown IDX data type code 0x{code:02X} in byte 3 of the "
                        f"header (known: {known}); the file is corrupt or not IDX")
    if ndim == 0 or ndim > MAX_NDIM:
        raise DataError(f"{name}: the IDX header declares {ndim} dimensions (1 to {MAX_NDIM} "
                        f"supported); the file is corrupt or not IDX")
    return IDX_DTYPES[code][0], ndim


def _decode_stream(stream, name: str, compressed: bool, file_size: int) -> IdxContent:
    magic = _read_exactly(stream, 4)
    dtype, ndim = _parse_magic(magic, name)
    dims_bytes = _read_exactly(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(f"{name}: the header declares {ndim} dimensions but the data ends "
                        f"after {4 + len(dims_bytes)} bytes, before the {4 + 4 * ndim}-byte "
                        f"header is complete: the file is truncated; {_REDOWNLOAD}")
    shape = struct.unpack(f">{ndim}I", dims_bytes)
    header = magic + dims_bytes
    shape_text = format_shape(shape)
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    limit = file_size * _MAX_DEFLATE_RATIO if compressed else file_size - len(header)
    if expected > limit:
        if not compressed:
            _raise_size_mismatch(name, file_size - len(header), expected, shape_text)
        raise DataError(f"{name}: the header promises {expected} bytes ({shape_text}), more "
                        f"than a {file_size}-byte gzip file can hold: the file is corrupt; "
                        f"{_REDOWNLOAD}")
    payload = np.empty(expected, dtype=np.uint8)
    received = _readinto_fully(stream, memoryview(payload))
    extra = _count_rest(stream) if received == expected else 0
    if received != expected or extra:
        _raise_size_mismatch(name, received + extra, expected, shape_text)
    array = payload.view(dtype).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    else:
        array = array.view(dtype.newbyteorder("="))
    return IdxContent(array=array, header=header, payload=payload, compressed=compressed)


def _raise_size_mismatch(name: str, actual: int, expected: int, shape_text: str):
    if actual < expected:
        verdict = f"the file is truncated; {_REDOWNLOAD}"
    else:
        verdict = (f"{actual - expected} extra bytes at the end: the file is corrupt or "
                   f"the header is wrong; {_REDOWNLOAD}")
    raise DataError(f"{name}: payload has {actual} bytes, header promises {expected} "
                    f"({shape_text}): {verdict}")


def idx_type_code(dtype) -> int:
    """The IDX type code for a NumPy dtype; DataError for dtypes IDX cannot store."""
    dtype = np.dtype(dtype)
    code = _CODE_BY_KIND.get((dtype.kind, dtype.itemsize))
    if code is None:
        raise DataError(f"IDX cannot store dtype {dtype}; convert the array to uint8, int8, "
                        f"int16, int32, float32 or float64 first (e.g. labels.astype(np.uint8))")
    return code


def encode_idx(array) -> bytes:
    """The bytes of an IDX file (uncompressed) holding ``array``."""
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > MAX_NDIM:
        raise DataError(f"IDX stores arrays of 1 to {MAX_NDIM} dimensions, got {array.ndim}")
    if any(size >= 2**32 for size in array.shape):
        raise DataError(f"IDX dimensions must be below 2**32, got shape {array.shape}")
    code = idx_type_code(array.dtype)
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code][0]).tobytes()


def write_idx(path: str | os.PathLike, array, compresslevel: int = 9) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    Args:
        path: the file to write (atomically: a crash never leaves half a file).
        array: uint8, int8, int16, int32, float32 or float64, 1 to 32 dimensions.
        compresslevel: gzip level 1-9 (only for ``.gz``).

    Raises:
        DataError: the dtype or shape cannot be stored in IDX, or the file cannot be written.
    """
    path = Path(path)
    data = encode_idx(array)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=compresslevel, mtime=0)
    try:
        with atomic_write(path, "wb") as stream:
            stream.write(data)
    except OSError as error:
        raise DataError(f"{path}: cannot be written ({error.strerror or error})") from None
