"""``cnnlab info``: what runs here (CPU, kernel levels, the choice per kernel family, BLAS)."""

from __future__ import annotations

HELP = "show the CPU, the compiled kernel levels, the level chosen and the BLAS in use"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the details as JSON")


def run(args) -> int:
    import json

    from cnnlab import backend

    details = backend.info()
    print(json.dumps(details, indent=2) if args.json else backend.format_info(details))
    return 0
