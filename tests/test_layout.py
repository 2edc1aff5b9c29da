"""The package layout keeps its promises (docs/architecture.md): the 0.1 module paths import the
moved modules themselves, cnnlab's own code imports the new paths, no module-level import
cycle, and the lecture math (ops/, nn/, optim) reaches the speed machinery only through the
backend interface."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import cnnlab
from cnnlab._aliases import MOVED, new_name

PACKAGE = Path(cnnlab.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(path: Path, module_level_only: bool):
    """(line, module name) for each cnnlab module that ``path`` imports."""
    name = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if module_level_only:
        nodes, stack = [], list(tree.body)
        while stack:  # module-level statements, including those under if/try, not in defs
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = name if _is_package(name) else name.rpartition(".")[0]
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            yield node.lineno, base
            for alias in node.names:  # `from cnnlab.viz.plots import data_figures`: a submodule
                yield node.lineno, f"{base}.{alias.name}"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_the_moved_module_itself(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__name__ == module.__spec__.name == MOVED[old]  # its own spec, not the alias's
    attribute = old.rpartition(".")[2]
    if old.count(".") == 1:
        assert getattr(cnnlab, attribute) is module


def test_submodules_of_a_moved_package_are_one_module_under_both_names():
    import cnnlab.plots.runs
    import cnnlab.viz.plots.runs
    from cnnlab.commands import train as old_command

    assert cnnlab.plots.runs is cnnlab.viz.plots.runs
    assert old_command is importlib.import_module("cnnlab.cli.commands.train")
    assert new_name("cnnlab.explorer.page") == "cnnlab.viz.explorer.page"
    assert new_name("cnnlab.training.trainer") is None and new_name("cnnlab.trainer") is None


def test_documented_public_paths_still_work():
    from cnnlab import plots
    from cnnlab.checkpoint import load_model
    from cnnlab.evaluation import evaluate
    from cnnlab.fileio import atomic_write
    from cnnlab.images import prepare
    from cnnlab.models import MODEL_NAMES, build_model, plan_model
    from cnnlab.summary import summarize

    assert plots.Run is importlib.import_module("cnnlab.viz.plots.runs").Run
    assert load_model is importlib.import_module("cnnlab.training.checkpoint").load_model
    assert evaluate.__module__ == "cnnlab.training.evaluation"
    assert atomic_write.__module__ == "cnnlab.utils.fileio"
    assert prepare.__module__ == "cnnlab.data.images"
    assert summarize.__module__ == "cnnlab.models.summary"
    assert build_model.__module__ == plan_model.__module__ == "cnnlab.models.spec"
    assert "cnn" in MODEL_NAMES


def test_old_paths_import_nothing_until_used():
    code = ("import sys, cnnlab\n"
            "print(sorted(m for m in sys.modules if m.startswith(('cnnlab', 'numpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['cnnlab', 'cnnlab._aliases', 'cnnlab.errors']"


def test_cnnlab_itself_imports_only_the_new_paths():
    old_paths = [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
                 for path in MODULES.values() if path.name != "_aliases.py"
                 for line, name in _imports(path, module_level_only=False)
                 if new_name(name) is not None]
    assert not old_paths, old_paths


def test_no_module_level_import_cycle():
    graph = {}
    for name, path in MODULES.items():
        own_packages = {name.rsplit(".", depth)[0] for depth in range(name.count(".") + 1)}
        targets = set()
        for _, imported in _imports(path, module_level_only=True):
            # importing a.b.c runs a, a.b and a.b.c; this module's own packages are running already
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                if target in MODULES and target not in own_packages:
                    targets.add(target)
        graph[name] = targets
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


# Threads and native code: the backend's own (its dispatcher, thread policy, workspaces, _sgemm/_loops).
MACHINERY = ("threading", "_thread", "concurrent", "multiprocessing", "ctypes")


def test_the_lecture_math_reaches_the_speed_machinery_only_through_the_backend_interface():
    interface = _backend_interface()
    lecture_math = [name for name in MODULES
                    if name.startswith(("cnnlab.ops.", "cnnlab.nn.")) or name == "cnnlab.optim"]
    assert {"cnnlab.ops.conv", "cnnlab.nn.layers", "cnnlab.optim"} <= set(lecture_math)
    direct = []
    for name in lecture_math:
        for line, imported in _imports(MODULES[name], module_level_only=False):
            parts = imported.split(".")
            behind_interface = parts[:2] == ["cnnlab", "backend"] and len(parts) > 2 \
                and parts[2] not in interface
            if parts[0] in MACHINERY or behind_interface:
                direct.append(f"{name}:{line}: {imported}")
    assert not direct, direct


def _backend_interface() -> set[str]:
    """The names `from cnnlab.backend import X` may take: what cnnlab/backend/__init__.py
    defines or re-exports, not its submodules."""
    tree = ast.parse((PACKAGE / "backend" / "__init__.py").read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    backend_files = {path.name.split(".")[0] for path in (PACKAGE / "backend").iterdir()}
    return {name for name in names if name.split(".")[0] not in backend_files}
