"""The lecture notebooks: paired with their plain-text form, stripped of outputs, and they run.

Every notebook is executed top to bottom by a real Jupyter kernel (nbclient, ipykernel) on a
small slice of the data (``CNNLAB_EXAMPLES_QUICK=1``); any error in any cell fails the test.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA
from export_helpers import fashion_source, require

NOTEBOOKS = REPO / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
# every example script has its notebook (the lecture topics, and the pitfalls)
TOPICS = sorted(path.stem for path in (REPO / "examples").glob("*.py")
                if not path.name.startswith("_"))
NEEDS_DATA = {"02_convolution_by_hand", "04_fully_connected_mnist", "05_lecture_cnn", "pitfalls"}
SECONDS_PER_NOTEBOOK = 60


def test_one_notebook_per_lecture_topic():
    assert [path.stem for path in SOURCES] == TOPICS
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb")) == TOPICS


@pytest.mark.parametrize("source", SOURCES, ids=[path.stem for path in SOURCES])
def test_notebook_is_paired_with_its_text_form_and_stripped(source):
    jupytext = require("jupytext")
    nbformat = require("nbformat")
    notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    text = jupytext.read(source)
    assert [(cell.cell_type, cell.source) for cell in notebook.cells] == \
        [(cell.cell_type, cell.source) for cell in text.cells], \
        f"{source.name} and its .ipynb differ: run 'jupytext --to ipynb {source.relative_to(REPO)}'"
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{source.name}: outputs are stored; write it afresh: jupytext --to ipynb NAME.py"
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "pip" in first_code.source and 'find_spec("cnnlab")' in first_code.source


def _execute(source: Path, folder: Path):
    """Run a copy of the notebook in ``folder`` with a real kernel; returns the executed notebook."""
    nbclient = require("nbclient")
    nbformat = require("nbformat")
    require("ipykernel")
    copy = folder / source.with_suffix(".ipynb").name
    shutil.copy(source.with_suffix(".ipynb"), copy)
    notebook = nbformat.read(copy, as_version=4)
    environment = {"CNNLAB_EXAMPLES_QUICK": "1"}
    if (SHARED_DATA / "fashion-mnist").is_dir():
        environment["CNNLAB_DATA_DIR"] = str(SHARED_DATA)
    client = nbclient.NotebookClient(notebook, timeout=SECONDS_PER_NOTEBOOK * 2,
                                     kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    old = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)   # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return notebook


def _outputs(notebook, kind: str) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == kind]


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=[path.stem for path in SOURCES])
def test_notebook_runs_top_to_bottom_in_a_jupyter_kernel(source, tmp_path):
    if source.stem in NEEDS_DATA:
        fashion_source()   # skips (fails in CI) where no real data is on the machine
    started = time.perf_counter()
    notebook = _execute(source, tmp_path)
    seconds = time.perf_counter() - started
    assert not _outputs(notebook, "error")
    assert seconds < SECONDS_PER_NOTEBOOK * 1.5, f"{source.name} took {seconds:.0f} s"
    images = [output for output in _outputs(notebook, "display_data") + _outputs(notebook, "execute_result")
              if "image/png" in output.get("data", {})]
    if source.stem in ("02_convolution_by_hand", "04_fully_connected_mnist"):
        assert images, "cnnlab.lecture.plot showed nothing"
    if source.stem == "05_lecture_cnn":
        assert len(images) >= 3, "cnnlab.plots figures did not show inline"
        bars = [output for output in _outputs(notebook, "display_data")
                if "epoch" in output.get("data", {}).get("text/plain", "")]
        # one line per epoch, redrawn in place: finished, not a pile of partial lines
        assert len(bars) == 2, [bar["data"]["text/plain"] for bar in bars]
        for bar in bars:
            assert "3000/3000" in bar["data"]["text/plain"]
        streams = "".join(output.get("text", "") for output in _outputs(notebook, "stream"))
        assert "[#" not in streams
        assert "largest difference of the logits" in streams
