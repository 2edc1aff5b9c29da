"""``cnnlab verify``: check every op against PyTorch autograd and finite differences."""

from __future__ import annotations

import os

HELP = "check every op's forward and gradients against PyTorch and finite differences"


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random inputs (default: 0)")
    parser.add_argument("--quick", action="store_true", help="check fewer configurations")
    parser.add_argument("--ops", metavar="NAMES", default=None,
                        help="comma-separated ops to check, e.g. conv2d,max_pool2d (default: all)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the results as JSON to FILE")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip PyTorch even when installed (finite differences only)")


def run(args) -> int:
    from cnnlab.errors import ConfigError
    from cnnlab.tools.verify import format_report, run_verify, select_ops
    from cnnlab.utils.fileio import write_json

    ops = select_ops(args.ops)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise ConfigError(f"cannot write --json {args.json}: its folder does not exist; "
                          "create it or give another path")
    report = run_verify(ops, seed=args.seed, quick=args.quick, use_torch=not args.no_torch)
    print(format_report(report), flush=True)
    if args.json:
        try:
            write_json(args.json, report)
        except OSError as error:
            raise ConfigError(f"cannot write --json {args.json}: {error.strerror}; "
                              "give a path in an existing, writable folder") from None
    return 0 if report["passed"] else 1
