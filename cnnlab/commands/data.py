"""``cnnlab data``: list the named datasets, show what is in one, download one.

    cnnlab data list
    cnnlab data info fashion-mnist
    cnnlab data info ./my-emnist-export
    cnnlab data download mnist --data-dir ~/datasets
"""

from __future__ import annotations

import argparse
import sys

HELP = "list, inspect and download datasets (mnist, fashion-mnist, kmnist, or your own folder)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION",
                                    parser_class=type(parser))
    actions.add_parser("list", help="the named datasets and where each is found locally",
                       description="The named datasets and where each is found locally.")
    info = actions.add_parser("info", help="where a dataset is, whether it is verified, its "
                              "counts, image size, classes and pixel statistics",
                              description="Show where a dataset is found, whether it is "
                              "verified, its counts, classes and pixel mean/std. Never downloads.")
    info.add_argument("dataset", metavar="NAME_OR_FOLDER",
                      help="mnist, fashion-mnist, kmnist, or a folder holding the four IDX files")
    download = actions.add_parser("download", help="download a named dataset (verified)",
                                  description="Download a named dataset, verify it, and keep it "
                                  "in the cache (or DIR/NAME with --data-dir).")
    download.add_argument("dataset", metavar="NAME", help="mnist, fashion-mnist or kmnist")
    download.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                          help="seconds to wait for a connection or for data (default 30)")
    for sub in (info, download, actions.choices["list"]):
        sub.add_argument("--data-dir", metavar="DIR", default=None,
                         help="look here first (DIR/NAME, then DIR); downloads go to DIR/NAME")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "data_action", None)
    if action == "list":
        return _list(args)
    if action == "info":
        return _info(args)
    if action == "download":
        return _download(args)
    print("cnnlab: error: choose an action for 'cnnlab data': list, info or download "
          "(see 'cnnlab data --help')", file=sys.stderr)
    return 2


def _list(args) -> int:
    from cnnlab.data.datasets import locate
    from cnnlab.data.registry import DATASETS

    width = max(len(name) for name in DATASETS)
    for name, info in DATASETS.items():
        folder = locate(name, args.data_dir)
        where = f"found in {folder}" if folder else "not found locally (cnnlab data download " \
                                                    f"{name})"
        print(f"{name:<{width}}  {info.num_classes} classes  {info.title}")
        print(f"{'':<{width}}  {where}")
    return 0


def _info(args) -> int:
    import numpy as np

    from cnnlab.data.datasets import load_dataset
    from cnnlab.data.loader import dataset_mean_std

    dataset = load_dataset(args.dataset, data_dir=args.data_dir, download=False, progress=False)
    if dataset.verified:
        how = sorted(set(dataset.verification.values()))
        status = f"verified ({' and '.join(how)} of every file matched the published checksums)"
    else:
        status = "NOT verified: user data, checked for structure only (no published checksums)"
    height, width = dataset.image_shape
    mean, std = dataset_mean_std(dataset.train_images)
    print(f"dataset      {dataset.name}")
    print(f"folder       {dataset.source}")
    print(f"checksums    {status}")
    print(f"training     {len(dataset.train_labels)} images")
    print(f"test         {len(dataset.test_labels)} images")
    print(f"image size   {height}x{width} pixels, uint8")
    print(f"pixels       mean {mean:.4f}, std {std:.4f} (of pixel/255, training set)")
    print(f"classes      {dataset.num_classes}")
    train_counts = np.bincount(dataset.train_labels, minlength=dataset.num_classes)
    test_counts = np.bincount(dataset.test_labels, minlength=dataset.num_classes)
    name_width = max(len(name) for name in dataset.classes)
    print(f"  {'label':>5}  {'name':<{name_width}}  {'train':>7}  {'test':>6}")
    for label, name in enumerate(dataset.classes):
        print(f"  {label:>5}  {name:<{name_width}}  {train_counts[label]:>7}  "
              f"{test_counts[label]:>6}")
    return 0


def _download(args) -> int:
    from cnnlab.data.datasets import download_dataset, load_folder, locate
    from cnnlab.data.registry import get_dataset_info

    info = get_dataset_info(args.dataset)
    folder = locate(info.name, args.data_dir)
    if folder is not None:
        load_folder(folder, info)  # verifies every file
        print(f"{info.name}: already present and verified in {folder}")
        return 0
    folder = download_dataset(info.name, data_dir=args.data_dir, timeout=args.timeout,
                              progress=True)
    dataset = load_folder(folder, info)
    print(f"{info.name}: {len(dataset.train_labels)} training and {len(dataset.test_labels)} "
          f"test images, verified, in {folder}")
    return 0
