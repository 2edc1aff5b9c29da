"""Downloading dataset files: mirrors, retries, timeouts, checksums, atomic rename.

Each file is fetched with ``urllib`` (no dependency) into a temporary file in the
target folder, flushed to disk, verified, and only then renamed to its final name:
a file carrying the final name is always complete and verified. A failure on one
mirror (HTTP error, refused connection, a stalled read, a short or corrupt file)
moves on to the next mirror; transient failures are retried first, with backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from cnnlab.errors import DataError, DownloadError
from cnnlab.utils.progress import ProgressBar

DEFAULT_TIMEOUT = 30.0   # seconds to connect, and seconds a read may stall
DEFAULT_RETRIES = 2      # extra attempts per mirror for transient failures
DEFAULT_BACKOFF = 1.0    # seconds before the first retry; doubles each time
_CHUNK = 1 << 16
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 451}


class _AttemptFailed(Exception):
    """One attempt on one mirror failed; ``retry`` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def _user_agent() -> str:
    from cnnlab import __version__
    return f"cnnlab/{__version__} (+urllib)"


def _describe(error: BaseException, timeout: float) -> tuple[str, bool]:
    """A short reason for a failed request, and whether a retry could help."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}", error.code not in _PERMANENT_HTTP
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)) or isinstance(error, TimeoutError):
        return f"no data for {timeout:g} s (timed out)", True
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror or reason}; offline?)", False
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror, True
    return (str(reason) or type(reason).__name__), True


def _fetch(url: str, handle, timeout: float, bar: ProgressBar) -> int:
    """Stream ``url`` into the open file ``handle``; the number of bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    received, expected, connected = 0, None, False
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            connected = True
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            bar.total = expected
            while True:
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as error:
        if connected and isinstance(error, (socket.timeout, TimeoutError)):
            raise _AttemptFailed(f"stalled after {received} bytes "
                                 f"(no data for {timeout:g} s)", True) from None
        reason, retry = _describe(error, timeout)
        raise _AttemptFailed(reason, retry) from None
    except Exception as error:  # http.client.IncompleteRead and other protocol errors
        raise _AttemptFailed(f"{type(error).__name__}: {error}", True) from None
    if expected is not None and received != expected:
        raise _AttemptFailed(f"truncated: got {received} of {expected} bytes", True)
    return received


def md5_verifier(md5: str) -> Callable[[Path], None]:
    """A verifier for :func:`download_file` that checks the MD5 of the downloaded file."""

    def verify(path: Path) -> None:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != md5:
            raise DataError(f"bad checksum: MD5 {digest}, expected {md5}")

    return verify


def download_file(urls: list[str], destination: str | os.PathLike,
                  verify: Callable[[Path], None] | None = None, *,
                  timeout: float | None = None, retries: int | None = None,
                  backoff: float | None = None, progress: bool = True) -> str:
    """Download the first of ``urls`` that works to ``destination``; the URL used.

    Args:
        urls: the same file on several mirrors, tried in order.
        destination: final path. It is only ever created by renaming a complete file that
            passed ``verify``; nothing else is left in its folder.
        verify: called with the temporary file's path; raises DataError to reject it
            (a bad checksum, or a file that is not what was expected). Rejected files move
            on to the next mirror.
        timeout: seconds allowed to connect and for any single read to stall
            (default :data:`DEFAULT_TIMEOUT`).
        retries: extra attempts on the same mirror for transient failures (HTTP 5xx,
            refused connections, time-outs, truncated transfers); 404 and bad checksums go
            straight to the next mirror (default :data:`DEFAULT_RETRIES`).
        backoff: seconds to wait before the first retry; doubled for each further one
            (default :data:`DEFAULT_BACKOFF`).
        progress: show a progress bar on standard error.

    Raises:
        DownloadError: every mirror failed; the message lists what happened on each.
    """
    destination = Path(destination)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    retries = DEFAULT_RETRIES if retries is None else retries
    backoff = DEFAULT_BACKOFF if backoff is None else backoff
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create the folder {destination.parent} "
                            f"({error.strerror or error}); choose another with --data-dir"
                            ) from None
    failures = []
    for url in urls:
        reason = _try_mirror(url, destination, verify, timeout, retries, backoff, progress)
        if reason is None:
            return url
        failures.append(f"{url}: {reason}")
    raise DownloadError(f"could not download {destination.name}: " + "; ".join(failures))


def _try_mirror(url, destination, verify, timeout, retries, backoff, progress) -> str | None:
    """Download from one mirror with retries; None on success, else the last reason."""
    reason = "not tried"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _attempt(url, destination, verify, timeout, progress)
            return None
        except _AttemptFailed as failure:
            reason = failure.reason
            if not failure.retry:
                break
    if attempt:
        reason += f" (after {attempt + 1} attempts)"
    return reason


def _attempt(url: str, destination: Path, verify, timeout: float, progress: bool) -> None:
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part",
                                             dir=destination.parent)
    except OSError as error:
        raise DownloadError(f"cannot write in {destination.parent} ({error.strerror or error}); "
                            f"choose another folder with --data-dir") from None
    temporary = Path(temporary)
    bar = ProgressBar(None, f"{destination.name}", unit="B", enabled=progress)
    try:
        with os.fdopen(handle, "wb") as stream:
            _fetch(url, stream, timeout, bar)
            stream.flush()
            os.fsync(stream.fileno())
        if verify is not None:
            try:
                verify(temporary)
            except DataError as error:
                raise _AttemptFailed(str(error), False) from None
        os.replace(temporary, destination)
    finally:
        if bar.count:  # nothing to report for a request that never delivered a byte
            bar.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
