"""The command line starts fast: `--help` and `import cnnlab` stay free of heavy imports."""

import subprocess
import sys

from cnnlab.cli import COMMANDS, main

HEAVY = ("torch", "matplotlib", "wandb", "PIL")


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(completed.stdout.split())


def test_help_imports_neither_numpy_nor_optional_dependencies():
    loaded = _modules_after("import cnnlab.cli\ncnnlab.cli.build_parser().format_help()")
    assert not {"numpy", *HEAVY} & loaded, sorted({"numpy", *HEAVY} & loaded)


def test_import_cnnlab_and_its_engine_never_imports_optional_dependencies():
    loaded = _modules_after("import cnnlab\nfrom cnnlab import ops, nn, optim, data, models, checkpoint")
    assert not set(HEAVY) & loaded, sorted(set(HEAVY) & loaded)


def test_every_command_has_help(capsys):
    for command in COMMANDS:
        try:
            main([command, "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: cnnlab {command}"), command
        assert "not built yet" not in text


def test_unknown_command_is_a_one_line_usage_error(capsys):
    try:
        main(["trian"])
    except SystemExit as exit_:
        assert exit_.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("cnnlab: error:") and "trian" in error[-1]
