"""The ``cnnlab`` command line: one subcommand per module in ``cnnlab.cli.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import only the standard library and
NumPy at the top; anything heavy (torch, matplotlib, wandb) is imported inside
``run``, so ``cnnlab --help`` stays fast.

Errors: a :class:`cnnlab.errors.CnnlabError` is printed as one line,
``cnnlab: error: ...``, and the exit status is 2. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cnnlab import __version__
from cnnlab.errors import CnnlabError

# Subcommand name -> module in cnnlab.cli.commands, in the order --help lists them.
COMMANDS = {
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "export": "export",
    "summary": "summary",
    "data": "data",
    "report": "report",
    "explore": "explore",
    "plot": "plot",
    "verify": "verify",
    "bench": "bench",
    "info": "info",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2 (argparse's own)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        # "cnnlab: error:" whatever the subcommand, like every other error cnnlab prints
        self.exit(2, f"cnnlab: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnlab",
        description="Train, inspect and verify convolutional and fully connected networks "
        "on MNIST-style images. NumPy engine; PyTorch optional.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"cnnlab.cli.commands.{module_name}")
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        # A CNNLAB_KERNELS the CPU cannot run is refused before anything is read or written.
        from cnnlab.backend import dispatch

        dispatch.level()
        return int(args._run(args) or 0)
    except CnnlabError as error:
        message = " ".join(str(error).split("\n"))
        print(f"cnnlab: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
