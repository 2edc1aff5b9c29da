"""The HTML report: self-contained, every section there, every image loads in a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib  # noqa: F401  (the report needs it: fail, don't skip, when it is missing)
import pytest

from cnnlab.cli import main as cli_main
from cnnlab.fileio import write_json
from cnnlab.report import SECTIONS, build_report, write_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEADINGS = ["Run summary"] + [section.title for section in SECTIONS] + ["Explorer"]
LIVE = '<div id="cnnlab-live"'

# Appended to a copy of the report: after load, write what the browser saw into the DOM.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter(function (image) { return image.complete && image.naturalWidth > 0; }).length,
    headings: Array.prototype.map.call(document.querySelectorAll("section > h2"),
                                       function (heading) { return heading.textContent; })
  });
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert cli_main(["report", str(trained_run), "--out", str(out)]) == 0
    return out


def image_sources(document: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', document)


def test_training_wrote_a_report_after_its_epoch(trained_run):  # noqa: F811
    document = (trained_run / "report.html").read_text(encoding="utf-8")
    assert "<h2>Learning curves</h2>" in document
    assert LIVE not in document           # its last rewrite came after summary.json said finished


def test_report_is_self_contained_with_every_section(report, trained_run):  # noqa: F811
    document = report.read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in document
    sources = image_sources(document)
    assert len(sources) == 9                      # one figure per plot kind
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not available" not in document
    # nothing fetched from elsewhere: no links, no script files, no URLs or fonts (the scripts
    # are inline)
    assert not re.search(r"<link\b|<script[^>]*\bsrc=|https?://|@import|url\(", document)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert f"{summary['test_accuracy']:.4g}" in document
    assert "images per second" in document
    assert LIVE not in document                   # the run finished: nothing to follow
    assert '<meta http-equiv="refresh"' not in document


@pytest.mark.slow
def test_report_follows_the_run_live_while_it_goes_on(trained_run, tmp_path):  # noqa: F811
    run_copy = tmp_path / "run"
    run_copy.mkdir()
    for name in ("config.json", "metrics.jsonl", "summary.json"):   # no checkpoint: quick to draw
        shutil.copy(trained_run / name, run_copy / name)
    assert LIVE not in build_report(run_copy)
    summary = json.loads((run_copy / "summary.json").read_text())
    write_json(run_copy / "summary.json", {**summary, "finished": False})
    document = build_report(run_copy)
    assert LIVE in document and 'data-src="live.js"' in document
    assert '<meta http-equiv="refresh"' not in document   # updated in place, never reloaded
    (run_copy / "summary.json").unlink()
    assert LIVE in build_report(run_copy)
    # a report written elsewhere points at the run folder's live.js
    assert f'data-src="../run/live.js"' in build_report(run_copy, tmp_path / "elsewhere" / "r.html")


def test_report_before_the_first_checkpoint_says_what_is_missing(trained_run, tmp_path):  # noqa: F811
    early = tmp_path / "early"
    early.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(trained_run / name, early / name)
    path = write_report(early)
    document = path.read_text(encoding="utf-8")
    assert path == early / "report.html"
    assert LIVE in document
    assert len(image_sources(document)) >= 1            # the learning curves need no checkpoint
    assert "no checkpoint.npz" in document
    assert not list(early.glob(".*.tmp"))


def run_chromium(arguments: list[str], user_data: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", *arguments],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path):
    assert Path(CHROMIUM).exists(), "the report test needs Debian's chromium (apt-get install chromium)"
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                      encoding="utf-8")
    dom = run_chromium(["--dump-dom", probed.as_uri()], tmp_path / "profile-dom", tmp_path).stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert match, "the probe script did not run"
    seen = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["images"] == 9
    assert seen["loaded"] == seen["images"], "an image of the report is broken"
    assert seen["headings"] == HEADINGS

    screenshot = tmp_path / "report.png"
    run_chromium([f"--screenshot={screenshot}", "--window-size=1280,4000", "--hide-scrollbars",
                  report.as_uri()], tmp_path / "profile-shot", tmp_path)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a page of figures compresses far worse than a blank one (a blank 1280x4000 PNG is ~20 KB)
    assert screenshot.stat().st_size > 100_000
