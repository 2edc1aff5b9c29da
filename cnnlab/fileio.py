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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if "w" not in mode:
        raise ValueError("atomic_write only writes: use mode 'w' or 'wb'")
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path, "w") as stream:
        json.dump(data, stream, indent=2, sort_keys=False)
        stream.write("\n")
