"""``cnnlab report RUN``: write the self-contained HTML report of a run folder."""

from __future__ import annotations

import argparse

HELP = "write a run's HTML report: summary, curves, confusion, mistakes, filters, saliency, ..."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder made by 'cnnlab train'")
    parser.add_argument("--out", metavar="FILE", help="the HTML file to write (default RUN/report.html)")


def run(args) -> int:
    from cnnlab.report import write_report

    path = write_report(args.run, out=args.out)
    print(path)
    return 0
