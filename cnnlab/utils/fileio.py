"""Writing files so that a crash never leaves a half-written one behind.

Everything cnnlab writes that a user keeps (checkpoints, run files, downloads,
reports, figures) goes through :func:`atomic_write`: the bytes go to a temporary
file in the same folder, are flushed to disk, and only then renamed over the
final name. A reader sees the old file or the new one, whole, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from cnnlab.errors import ConfigError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if "w" not in mode:
        raise ValueError("atomic_write only writes: use mode 'w' or 'wb'")
    try:
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {path.parent} is not a writable folder "
                          f"({error.strerror or error}); give a path in an existing, writable "
                          "folder") from None
    os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide the file from others
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.replace(tmp_name, path)
        except IsADirectoryError:
            raise ConfigError(f"cannot write {path}: it is a folder; give a file name") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=False)
        stream.write("\n")


def read_start(path: Path, count: int, error=None) -> tuple[int, bytes]:
    """(size in bytes, the first ``count`` bytes) of ``path``, to tell a file's format by its
    start; an OSError becomes ``error`` (a CnnlabError class) naming the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            return size, stream.read(count)
    except OSError as problem:
        raise (error or ConfigError)(f"{path}: cannot read ({problem.strerror or problem})") from None
