"""``cnnlab plot KIND RUN``: draw one figure of a run folder into a PNG file."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.errors import ConfigError

HELP = "draw one figure of a run (samples, curves, confusion, filters, saliency, ...) as a PNG"

# Kept here (not imported from cnnlab.viz.plots) so `cnnlab --help` stays free of matplotlib.
KIND_NAMES = ("montage", "histogram", "curves", "confusion", "mistakes", "filters",
              "features", "saliency", "weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", metavar="KIND",
                        help=f"the figure: {', '.join(KIND_NAMES)} (--list describes them)")
    parser.add_argument("run", nargs="?", metavar="RUN", help="a run folder made by 'cnnlab train'")
    parser.add_argument("--out", metavar="FILE.png", help="where to write the PNG (default RUN/KIND.png)")
    parser.add_argument("--images", type=int, metavar="N",
                        help="how many images: per class (montage), mistakes, test images "
                             "(features, saliency), filters per layer")
    parser.add_argument("--index", type=int, nargs="+", default=[], metavar="I",
                        help="test image indices for features and saliency")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default 100)")
    parser.add_argument("--list", action="store_true", help="list the kinds of figure and exit")


def _list_kinds() -> str:
    from cnnlab.viz.plots.kinds import KINDS

    width = max(len(name) for name in KINDS)
    return "\n".join(f"{name:<{width}}  {kind.description}" for name, kind in KINDS.items())


def run(args) -> int:
    from cnnlab.viz.plots import PlotOptions, Run, plot_kind, resolve_kind, save_png

    if args.list:
        print(_list_kinds())
        return 0
    if not args.kind:
        raise ConfigError(f"give a KIND and a RUN folder, e.g. 'cnnlab plot curves runs/NAME'; "
                          f"kinds: {', '.join(KIND_NAMES)}")
    resolve_kind(args.kind)
    if not args.run:
        raise ConfigError(f"give the RUN folder to plot, e.g. 'cnnlab plot {args.kind} runs/NAME'")
    if args.images is not None and args.images < 1:
        raise ConfigError(f"--images {args.images}: give a positive number")
    if args.dpi < 10 or args.dpi > 600:
        raise ConfigError(f"--dpi {args.dpi}: give a resolution between 10 and 600")
    run_folder = Run(args.run)
    out = Path(args.out) if args.out else run_folder.path / f"{args.kind}.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the figure is written as PNG; give a file name ending in .png")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    figure = plot_kind(args.kind, run_folder, PlotOptions(images=args.images, indices=args.index))
    save_png(figure, out, dpi=args.dpi)
    print(out)
    return 0
