"""Serving a run folder on 127.0.0.1 for ``cnnlab explore --serve``, and opening a browser."""

from __future__ import annotations

import functools
import http.server
import os
import sys
import webbrowser
from pathlib import Path

from cnnlab.errors import ConfigError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Files of one folder, never cached (live.js changes every few seconds), no request log."""

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def serve_folder(folder: Path, page: str, port: int = 0, open_browser: bool = True,
                 out=None) -> None:
    """Serve ``folder`` on 127.0.0.1:``port`` (0: a free port) until Ctrl-C; print the URL."""
    out = out if out is not None else sys.stdout
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as error:
        raise ConfigError(f"cannot serve on 127.0.0.1:{port} ({error.strerror or error}); "
                          "give another --port, or leave it out for a free one") from None
    url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
    print(f"serving {folder} at {url} (Ctrl-C stops)", file=out, flush=True)
    if open_browser:
        open_in_browser(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def open_in_browser(url: str) -> None:
    """Open ``url`` in the user's browser where there is a desktop; a no-op elsewhere."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                or os.environ.get("WAYLAND_DISPLAY")):
        return
    try:
        webbrowser.open(url)
    except webbrowser.Error:
        pass
