"""The module paths of cnnlab 0.1's flat layout, kept as names of the modules that moved.

cnnlab's modules live in packages that show its architecture (docs/architecture.md), but
notebooks, scripts and the lecture notes import the old paths (``from cnnlab.checkpoint import
load_model``, ``from cnnlab import plots``). :data:`MOVED` maps each old path to its new one,
and :class:`MovedModuleFinder` (first on ``sys.meta_path`` once ``import cnnlab`` has run)
answers an import of an old path, or of anything under it, with the module at the new path:
the same module object, so ``cnnlab.checkpoint is cnnlab.training.checkpoint`` and patching
an attribute through either name patches both. Nothing is imported until an old path is;
cnnlab's own code imports the new paths only (tests/test_layout.py checks both).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# old path -> new path; a package's submodules follow it (cnnlab.plots.runs -> cnnlab.viz.plots.runs)
MOVED = {
    "cnnlab.train": "cnnlab.training.trainer",
    "cnnlab.config": "cnnlab.training.config",
    "cnnlab.runs": "cnnlab.training.runs",
    "cnnlab.checkpoint": "cnnlab.training.checkpoint",
    "cnnlab.interop": "cnnlab.training.interop",
    "cnnlab.evaluation": "cnnlab.training.evaluation",
    "cnnlab.distributed": "cnnlab.training.distributed",
    "cnnlab.wandb_log": "cnnlab.training.wandb_log",
    "cnnlab.summary": "cnnlab.models.summary",
    "cnnlab.images": "cnnlab.data.images",
    "cnnlab.plots": "cnnlab.viz.plots",
    "cnnlab.report": "cnnlab.viz.report",
    "cnnlab.explorer": "cnnlab.viz.explorer",
    "cnnlab.notebook": "cnnlab.viz.notebook",
    "cnnlab.commands": "cnnlab.cli.commands",
    "cnnlab.verify": "cnnlab.tools.verify",
    "cnnlab.bench": "cnnlab.tools.bench",
    "cnnlab.fileio": "cnnlab.utils.fileio",
    "cnnlab.formatting": "cnnlab.utils.formatting",
    "cnnlab.validation": "cnnlab.utils.validation",
    "cnnlab.progress": "cnnlab.utils.progress",
}


def new_name(name: str) -> str | None:
    """The path a module imported as ``name`` lives at now, or None when it did not move."""
    top = ".".join(name.split(".")[:2])  # every old path is cnnlab.<name>
    if top not in MOVED:
        return None
    return MOVED[top] + name[len(top):]


class MovedModuleFinder:
    """A sys.meta_path finder for the old paths: its spec's loader hands back the module at
    the new path (the protocol of importlib.abc.MetaPathFinder and Loader)."""

    def find_spec(self, fullname, path=None, target=None):
        target_name = new_name(fullname)
        if target_name is None:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(target_name))


class _MovedModuleLoader:
    def __init__(self, target_name: str):
        self.target_name = target_name

    def create_module(self, spec):
        module = importlib.import_module(self.target_name)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        # importlib gave the module the old path's spec; it keeps its own (reload, pickling)
        module.__spec__ = self._own_spec


def install() -> None:
    """Put the finder first on sys.meta_path (once), ahead of the file system's finder,
    which would otherwise load a second copy of a moved package's submodules."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
