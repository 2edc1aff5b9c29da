"""``cnnlab report RUN``: write the self-contained HTML report of a run folder (or of weights)."""

from __future__ import annotations

import argparse

HELP = "write a run's HTML report: summary, curves, confusion, mistakes, filters, saliency, ..."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN",
                        help="a run folder made by 'cnnlab train', or a weights file "
                             "(.safetensors from PyTorch or 'cnnlab export', or a checkpoint .npz)")
    parser.add_argument("--out", metavar="FILE",
                        help="the HTML file to write (default RUN/report.html, or NAME.report.html "
                             "beside a weights file)")
    parser.add_argument("--model", metavar="SPEC", default=None,
                        help="the architecture of a .safetensors file saved by PyTorch")
    parser.add_argument("--dataset", metavar="NAME", default=None,
                        help="the dataset a weights file is shown on (default: the one it names)")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="folder to look for datasets in")


def run(args) -> int:
    from pathlib import Path

    from cnnlab.errors import ConfigError
    from cnnlab.training.interop import is_safetensors
    from cnnlab.training.runs import CONFIG_FILE
    from cnnlab.viz.report import write_report

    source = args.run
    path = Path(source)
    # a checkpoint.npz inside a run folder stands for its run (curves and all)
    if path.is_file() and (is_safetensors(path) or not (path.parent / CONFIG_FILE).is_file()):
        from cnnlab.viz.plots.runs import WeightsRun

        source = WeightsRun(source, model=args.model, dataset=args.dataset,
                            data_dir=args.data_dir)
    elif args.model or args.dataset or args.data_dir:
        raise ConfigError("--model, --dataset and --data-dir are for a weights file; a run "
                          "folder's report uses the run's own")
    path = write_report(source, out=args.out)
    print(path)
    return 0
