"""The command line starts fast: `--help` and `import cnnlab` stay free of heavy imports."""

import subprocess
import sys

from cnnlab.cli import COMMANDS, main

HEAVY = ("torch", "matplotlib", "wandb", "PIL", "onnx", "onnxruntime", "safetensors")


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(completed.stdout.split())


def test_help_imports_neither_numpy_nor_optional_dependencies():
    loaded = _modules_after("import cnnlab.cli\ncnnlab.cli.build_parser().format_help()")
    assert not {"numpy", *HEAVY} & loaded, sorted({"numpy", *HEAVY} & loaded)


def test_import_cnnlab_and_its_engine_never_imports_optional_dependencies():
    loaded = _modules_after("import cnnlab\nfrom cnnlab import ops, nn, optim, data, models, checkpoint\n"
                            "import cnnlab.export, cnnlab.interop, cnnlab.commands.export")
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


def test_train_help_shows_train_configs_defaults(capsys, monkeypatch):
    import dataclasses

    from cnnlab.config import TrainConfig

    def help_text() -> str:
        try:
            main(["train", "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0
        return " ".join(capsys.readouterr().out.split())

    import argparse

    from cnnlab.commands.train import add_arguments

    text = help_text()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    helps = {option: action.help for action in parser._actions for option in action.option_strings}
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    for option, name in [("--model", "model"), ("--dataset", "dataset"), ("--batch-size", "batch_size"),
                         ("--optimizer", "optimizer"), ("--schedule", "schedule"), ("--gamma", "gamma"),
                         ("--momentum", "momentum"), ("--weight-decay", "weight_decay"),
                         ("--seed", "seed"), ("--log-every", "log_every"),
                         ("--normalization", "normalization"), ("--val-fraction", "val_fraction"),
                         ("--wandb-project", "wandb_project")]:
        value = defaults[name]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"default {shown}" in helps[option], (option, shown)
        assert " ".join(helps[option].split()) in text, option
    # one source of truth: a changed default shows in the help with no other edit
    monkeypatch.setattr(TrainConfig.__dataclass_fields__["batch_size"], "default", 96)
    monkeypatch.setattr(TrainConfig.__dataclass_fields__["optimizer"], "default", "sgd")
    text = help_text()
    assert "images per step (default 96)" in text and "sgd, adam or adamw (default sgd)" in text
