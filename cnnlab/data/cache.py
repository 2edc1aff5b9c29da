"""The decoded-image cache: a folder of pictures decoded once, kept as uint8 arrays.

Decoding thousands of PNG or JPEG files takes seconds to minutes; the arrays are kept in
``$XDG_CACHE_HOME/cnnlab/decoded/`` (or ``~/.cache/cnnlab/decoded/``) as one ``.npz`` per
folder and decoding options, so the next run reads them in a fraction of a second.

The key of an entry is the SHA-256 of the folder's listing: every image file's path relative
to the folder, its size in bytes and its modification time in nanoseconds, with the decoding
options (channels, size, the cache format). Listing and stat-ing the files costs
milliseconds, while hashing their bytes would cost as much as reading them again (a tenth to
a half of decoding them); a file that is added, removed, renamed, rewritten or touched changes
the key, and the folder is decoded again. Only a tool that rewrites a file keeping both its size
and its modification time would go unnoticed.

An entry is written atomically (cnnlab.utils.fileio) and read with ``allow_pickle=False``; an entry
that cannot be read is decoded again and replaced (it is derived data, nothing is lost).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.utils.fileio import atomic_write

FORMAT = "cnnlab-decoded-images"
VERSION = 1


def cache_folder() -> Path:
    """``$XDG_CACHE_HOME/cnnlab/decoded`` or ``~/.cache/cnnlab/decoded``."""
    from cnnlab.data.datasets import cache_root

    return cache_root() / "decoded"


def content_key(listing, options: dict) -> str:
    """SHA-256 over the listing ``[(relative path, size, mtime_ns), ...]`` and ``options``."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "version": VERSION,
                                        "options": options}, sort_keys=True).encode("utf-8"))
    for relative, size, mtime_ns in listing:
        digest.update(f"{relative}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def entry_path(folder: Path, options: dict) -> Path:
    """Where the entry of ``folder`` decoded with ``options`` lives: one file per folder and
    options, replaced when the folder changes (so old entries do not pile up)."""
    identity = json.dumps({"folder": os.path.abspath(folder), "options": options}, sort_keys=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(folder).resolve().name)
    return cache_folder() / f"{name[:40]}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.npz"


def load_entry(path: Path, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The arrays and info of the entry at ``path`` when it holds ``key``; otherwise None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            info = json.loads(archive["info"].tobytes().decode("utf-8"))
            if info.get("format") != FORMAT or info.get("key") != key:
                return None
            arrays = {name: archive[name] for name in archive.files if name != "info"}
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile):
        return None
    return arrays, info


def save_entry(path: Path, key: str, arrays: dict[str, np.ndarray], info: dict) -> bool:
    """Write an entry atomically; False (and nothing written) when the cache is not writable."""
    info = dict(info, format=FORMAT, version=VERSION, key=key)
    encoded = np.frombuffer(json.dumps(info).encode("utf-8"), dtype=np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as stream:
            np.savez(stream, info=encoded, **arrays)
    except (OSError, ConfigError):  # a read-only cache only costs the next run time
        return False
    return True
