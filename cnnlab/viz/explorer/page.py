"""The explorer's HTML: one section for the report, or a page of its own (``cnnlab explore``).

Everything is inline: the data as JSON in a ``<script type="application/json">``, the
scripts and the style sheet from this package's ``*.js`` and ``*.css`` files. Nothing is
fetched from the network; only the live view loads ``live.js`` from the run folder.
"""

from __future__ import annotations

import html
import json
import os
import time
from importlib import resources
from pathlib import Path

from cnnlab.utils.fileio import atomic_write
from cnnlab.viz.explorer.live import EVERY_SECONDS, LIVE_NAME, STALE_SECONDS

EXPLORER_NAME = "explorer.html"
SCRIPTS = ("engine.js", "prepare.js", "explorer.js")

EXPLORER_TEXT = (
    "Click any pixel of a feature map: the panel shows what the convolution computed there, "
    "with this network's own float32 weights and inputs: the kernel of that output channel, the "
    "input patch (its receptive field lights up in orange), the element-wise products, their sum "
    "over input channels, the bias and the result, then the ReLU and the max-pool window it falls "
    "into. Click a probability bar or a unit of a Linear layer for its largest contributions and "
    "the softmax. Every panel ends with the backward pass for the class chosen under the bars "
    "(dL/dY, dL/db, dL/dW, dL/dX with the lecture's formulas). Pick another test image above the "
    "maps, or upload a picture: it is prepared as 'cnnlab predict' prepares it.")


def asset(name: str) -> str:
    """The text of one of this package's script or style files."""
    return resources.files("cnnlab.viz.explorer").joinpath(name).read_text(encoding="utf-8")


def _inline_json(payload: dict) -> str:
    # no "<" at all inside the <script> element: "</script" would end it, "<!--" confuse it
    # (a class name may hold either); JSON reads \u003c back as "<"
    return json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c")


def explorer_section(payload: dict, anchor: str = "explorer") -> str:
    """The explorer as one ``<section>``: its data, its scripts, its style."""
    scripts = "".join(f"<script>\n{asset(name)}\n</script>" for name in SCRIPTS)
    return (f'<section id="{anchor}"><h2>Explorer</h2><p>{html.escape(EXPLORER_TEXT)}</p>'
            f"<style>{asset('explorer.css')}</style>"
            '<div id="cnnlab-explorer"></div>'
            f'<script type="application/json" id="cnnlab-explorer-data">{_inline_json(payload)}</script>'
            f"{scripts}</section>")


def live_section(live_src: str, finished: bool) -> str:
    """The live view: polls ``live_src`` (a path relative to the page) until the run ends."""
    state = "finished" if finished else "running"
    return (f'<section id="live"><h2>Live training</h2>'
            f'<div id="cnnlab-live" data-src="{html.escape(live_src, quote=True)}" '
            f'data-every-ms="{int(EVERY_SECONDS * 1000)}" data-stale-ms="{int(STALE_SECONDS * 1000)}" '
            f'data-finished="{str(finished).lower()}" '
            f'data-generated="{time.time():.3f}" data-status="{state}">'
            '<p><span class="lv-status">waiting for the trainer (live.js)</span> '
            '<a href="#" class="lv-reload" hidden>the run has ended: reload for the final '
            "report (keeps your place)</a></p>"
            '<p class="lv-reason" hidden></p>'
            '<p class="cx-note">Redrawn in place from the run folder\'s live.js, which '
            "'cnnlab train' rewrites every few seconds. If nothing appears while a run trains, "
            "this browser does not let a page read files next to it: run "
            "<code>cnnlab explore RUN --serve</code>.</p>"
            '<div class="lv-body"></div></div>'
            f"<script>\n{asset('live_view.js')}\n</script></section>")


def live_src_for(run_dir: Path, page: Path) -> str:
    """``live.js`` of ``run_dir`` as a URL path relative to the page written at ``page``."""
    relative = os.path.relpath(Path(run_dir).resolve() / LIVE_NAME, Path(page).resolve().parent)
    return Path(relative).as_posix()


def build_explorer_page(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """A page with the explorer and the live view of a run folder, without matplotlib."""
    from cnnlab.viz.explorer.data import run_payload
    from cnnlab.viz.plots.runs import Run

    run = Run(run_dir)
    page = Path(out) if out is not None else run.path / EXPLORER_NAME
    title = html.escape(f"cnnlab explorer: {run.path.name}")
    base = ("body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; "
            "margin: 0 24px 24px; color: #222; } h2 { font-size: 20px; }")
    sections = [explorer_section(run_payload(run))]
    if not run.finished or (run.path / LIVE_NAME).is_file():   # none for a --no-report run
        sections.insert(0 if not run.finished else 1,
                        live_section(live_src_for(run.path, page), run.finished))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{base}</style></head><body><h1>{title}</h1>{''.join(sections)}</body></html>\n")


def write_explorer_page(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``RUN/explorer.html`` (or ``out``) atomically; return its path.

    Raises:
        CnnlabError: no run folder, no checkpoint yet, or the dataset is not on this machine.
    """
    from cnnlab.viz.plots.runs import resolve_run

    path = Path(out) if out is not None else resolve_run(run_dir) / EXPLORER_NAME
    document = build_explorer_page(run_dir, path)
    with atomic_write(path, "wb") as stream:
        stream.write(document.encode("utf-8"))
    return path


