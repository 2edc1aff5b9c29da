"""``cnnlab data``: list the named datasets, show what is in one, download one.

    cnnlab data list
    cnnlab data info fashion-mnist
    cnnlab data info ./my-emnist-export
    cnnlab data info ./my-photos --image-size 64 --montage montage.png
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
                      help="mnist, fashion-mnist, kmnist, or a folder: IDX files, CIFAR binary "
                           "batches, or one subfolder of images per class")
    info.add_argument("--montage", metavar="FILE.png", default=None,
                      help="also draw sample images, one row per class, into this PNG "
                           "(needs matplotlib)")
    info.add_argument("--per-class", type=int, default=10, metavar="N",
                      help="images per class in the montage (default 10)")
    info.add_argument("--channels", type=int, default=None, metavar="1|3",
                      help="as for cnnlab train: convert to grayscale or RGB")
    info.add_argument("--image-size", default=None, metavar="H[xW]",
                      help="as for cnnlab train: resize every image")
    info.add_argument("--test-fraction", type=float, default=None, metavar="F",
                      help="as for cnnlab train: the test share of class folders (default 0.2)")
    info.add_argument("--skip-bad-images", action="store_true",
                      help="as for cnnlab train: leave out files that cannot be decoded")
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
    from cnnlab.errors import ConfigError

    if args.per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {args.per_class}")
    dataset = load_dataset(args.dataset, data_dir=args.data_dir, download=False, progress=True,
                           channels=args.channels, image_size=args.image_size,
                           test_fraction=args.test_fraction,
                           skip_bad_images=args.skip_bad_images)
    if dataset.verified:
        how = sorted(set(dataset.verification.values()))
        status = f"verified ({' and '.join(how)} of every file matched the published checksums)"
    else:
        status = "NOT verified: user data, checked for structure only (no published checksums)"
    height, width = dataset.image_shape
    mean, std = dataset_mean_std(dataset.train_images)
    splits = list(dataset.splits())
    print(f"dataset      {dataset.name}")
    print(f"folder       {dataset.source}")
    print(f"layout       {dataset.layout}")
    print(f"checksums    {status}")
    titles = {"train": "training", "test": "test", "val": "validation"}
    for name, _, labels in splits:
        print(f"{titles[name]:<12} {len(labels)} images")
    colour = "grayscale" if dataset.channels == 1 else "RGB" if dataset.channels == 3 else ""
    print(f"image size   {height}x{width} pixels (height x width), {dataset.channels} channel"
          f"{'s' if dataset.channels != 1 else ''} ({colour}), uint8")
    print(f"pixels       mean {mean:.4f}, std {std:.4f} (of pixel/255, training set)")
    if dataset.cache is not None:
        cache = dataset.cache
        how = "read from the cache" if cache["hit"] else f"decoded in {cache['seconds']:.1f} s"
        print(f"cache        {how}: {cache['path'] or 'not written (cache folder not writable)'}")
        if cache.get("ignored_files"):
            print(f"ignored      {cache['ignored_files']} files that are not PNG, JPEG, BMP or "
                  "WebP images")
    if dataset.skipped:
        print(f"skipped      {len(dataset.skipped)} files that cannot be decoded (first: "
              f"{dataset.skipped[0]})")
    print(f"classes      {dataset.num_classes}")
    counts = [np.bincount(labels, minlength=dataset.num_classes) for _, _, labels in splits]
    name_width = max(len(name) for name in dataset.classes)
    header = "".join(f"  {name:>7}" for name, _, _ in splits)
    print(f"  {'label':>5}  {'name':<{name_width}}{header}")
    for label, name in enumerate(dataset.classes):
        cells = "".join(f"  {int(count[label]):>7}" for count in counts)
        print(f"  {label:>5}  {name:<{name_width}}{cells}")
    if args.montage:
        from cnnlab.viz.plots import data_figures, save_png

        figure = data_figures.montage(dataset.train_images, dataset.train_labels,
                                      dataset.classes, per_class=args.per_class)
        save_png(figure, args.montage)
        print(f"montage      {args.montage}")
    else:
        print(f"montage      cnnlab data info {args.dataset} --montage montage.png")
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
