"""Downloads against a local HTTP server: mirrors, retries, time-outs, checksums, and that
only a verified file ever carries its final name."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import datasets, download
from cnnlab.data.download import download_file, md5_verifier
from cnnlab.data.idx import write_idx
from cnnlab.data.registry import DATASETS, FILE_NAMES
from cnnlab.errors import DataError, DownloadError

TIMEOUT = 0.5


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /good/F, /corrupt/F, /truncated/F, /missing/F (404), /busy/F (503),
    /stall/F (no answer for longer than the time-out), /slowbody/F (stalls mid-body)."""

    files: dict[str, bytes] = {}
    hits: Counter = Counter()

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        _, route, name = self.path.split("/", 2)
        self.hits[route] += 1
        body = self.files.get(name)
        try:
            if route == "missing" or body is None:
                self.send_error(404)
            elif route == "busy":
                self.send_error(503)
            elif route == "stall":
                time.sleep(TIMEOUT * 3)
                self._send(body)
            elif route == "corrupt":
                self._send(body[:100] + bytes([body[100] ^ 0xFF]) + body[101:])
            elif route == "truncated":
                self._send(body, length=len(body) + 500)
            elif route == "slowbody":
                self._send(body[:200], length=len(body), then_sleep=TIMEOUT * 3)
            else:
                self._send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, body, length=None, then_sleep=0.0):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if then_sleep:
            time.sleep(then_sleep)
        self.close_connection = True


@pytest.fixture
def server():
    Handler.hits = Counter()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def payload(tmp_path):
    path = tmp_path / "source" / "labels.gz"
    path.parent.mkdir()
    write_idx(path, np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8))
    data = path.read_bytes()
    Handler.files = {"labels.gz": data}
    return data


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(urls, destination, verify, **options):
    options = {"timeout": TIMEOUT, "retries": 1, "backoff": 0.0, "progress": False, **options}
    return download_file(urls, destination, verify, **options)


def test_next_mirror_after_each_failure(tmp_path, server, payload):
    target = tmp_path / "out" / "labels.gz"
    routes = ["missing", "busy", "stall", "corrupt", "truncated", "slowbody", "good"]
    used = fetch([f"{server}/{route}/labels.gz" for route in routes], target,
                 md5_verifier(hashlib.md5(payload).hexdigest()))
    assert used == f"{server}/good/labels.gz"
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["labels.gz"]  # no partial files
    assert Handler.hits["missing"] == 1 and Handler.hits["corrupt"] == 1  # not retried
    assert Handler.hits["busy"] == 2 and Handler.hits["truncated"] == 2  # retried once


def test_everything_failing_is_one_error_listing_each_mirror(tmp_path, server, payload):
    target = tmp_path / "out" / "labels.gz"
    refused = f"http://127.0.0.1:{closed_port()}/good/labels.gz"
    routes = ["missing", "busy", "stall", "corrupt", "truncated", "slowbody"]
    urls = [f"{server}/{route}/labels.gz" for route in routes] + [refused]
    with pytest.raises(DownloadError) as caught:
        fetch(urls, target, md5_verifier(hashlib.md5(payload).hexdigest()), retries=0)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("could not download labels.gz")
    for url in urls:
        assert url in message
    for reason in ["HTTP 404", "HTTP 503", f"no data for {TIMEOUT:g} s", "bad checksum",
                   "truncated: got", "stalled after 200 bytes", "connection refused"]:
        assert reason in message, reason
    assert list(target.parent.iterdir()) == []  # nothing carries the final name, no leftovers


def test_existing_file_untouched_by_failed_download(tmp_path, server, payload):
    target = tmp_path / "labels.gz"
    target.write_bytes(b"old")
    with pytest.raises(DownloadError):
        fetch([f"{server}/corrupt/labels.gz"], target, md5_verifier("0" * 32))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.gz", "source"]


def test_stalled_server_times_out_quickly(tmp_path, server, payload):
    start = time.perf_counter()
    with pytest.raises(DownloadError, match="timed out"):
        fetch([f"{server}/stall/labels.gz"], tmp_path / "x.gz", None, retries=0)
    assert time.perf_counter() - start < TIMEOUT * 2.5


def serve_fashion(data_root):
    Handler.files = {name: (data_root / "fashion-mnist" / name).read_bytes()
                     for name in FILE_NAMES.values()}


def test_download_dataset_then_load(tmp_path, server, data_root, monkeypatch):
    # The shared copies are Debian-recompressed: accepted through the content SHA-256.
    serve_fashion(data_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNLAB_SYSTEM_DATA_DIRS", str(tmp_path / "system"))
    monkeypatch.delenv("CNNLAB_DATA_DIR", raising=False)
    mirrors = (f"{server}/missing/", f"{server}/good/")
    monkeypatch.setitem(DATASETS, "fashion-mnist",
                        dataclasses.replace(DATASETS["fashion-mnist"], mirrors=mirrors))
    data = datasets.load_dataset("fashion-mnist", progress=False)
    folder = tmp_path / "cache" / "cnnlab" / "fashion-mnist"
    assert data.verified and data.source == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILE_NAMES.values())
    assert data.train_images.shape == (60000, 28, 28)
    assert Handler.hits["good"] == 4
    datasets.load_dataset("fashion-mnist", progress=False)  # found now: nothing fetched
    assert Handler.hits["good"] == 4


def test_download_refills_only_missing_files(tmp_path, server, data_root):
    serve_fashion(data_root)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for key in ("train_images", "train_labels", "test_images"):
        (folder / FILE_NAMES[key]).symlink_to(data_root / "fashion-mnist" / FILE_NAMES[key])
    datasets.download_dataset("fashion-mnist", data_dir=tmp_path, progress=False,
                              mirrors=(f"{server}/good/",), timeout=TIMEOUT)
    assert Handler.hits["good"] == 1
    assert (folder / FILE_NAMES["test_labels"]).is_file()


def test_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNLAB_SYSTEM_DATA_DIRS", str(tmp_path / "system"))
    monkeypatch.delenv("CNNLAB_DATA_DIR", raising=False)
    monkeypatch.setattr(download, "DEFAULT_BACKOFF", 0.0)
    mirrors = (f"http://127.0.0.1:{closed_port()}/", f"http://127.0.0.1:{closed_port()}/")
    monkeypatch.setitem(DATASETS, "fashion-mnist",
                        dataclasses.replace(DATASETS["fashion-mnist"], mirrors=mirrors))
    with pytest.raises(DownloadError) as caught:
        datasets.load_dataset("fashion-mnist", progress=False, timeout=TIMEOUT)
    message = str(caught.value)
    assert message.count("connection refused") == 2
    assert str(tmp_path / "cache" / "cnnlab" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    assert isinstance(caught.value, DataError)
    leftovers = list((tmp_path / "cache" / "cnnlab" / "fashion-mnist").iterdir())
    assert leftovers == []


def test_download_rejects_file_that_is_not_idx(tmp_path, server):
    Handler.files = {FILE_NAMES["train_images"]: b"<html>moved</html>"}
    with pytest.raises(DownloadError, match="not a valid IDX file.*HTML page"):
        datasets.download_dataset("mnist", data_dir=tmp_path, progress=False, retries=0,
                                  mirrors=(f"{server}/good/",), timeout=TIMEOUT)
    assert not any(Path(tmp_path / "mnist").iterdir())
