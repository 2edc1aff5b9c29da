"""Datasets: IDX files, the named datasets (mnist, fashion-mnist, kmnist), downloads, batches.

    from cnnlab.data import load_dataset, epoch_order, iterate_batches

    data = load_dataset("fashion-mnist")            # finds, verifies or downloads it
    for epoch in range(3):
        order = epoch_order(len(data.train_labels), seed=0, epoch=epoch)
        for x, y in iterate_batches(data.train_images, data.train_labels, 128, order):
            ...                                      # x float32 (128, 1, 28, 28), y int64

See docs/data.md for where datasets are looked for and how to use your own data.
"""

from cnnlab.data.datasets import (Dataset, download_dataset, find_files, load_dataset,
                                  load_folder, locate, search_folders, verify_file)
from cnnlab.data.download import download_file
from cnnlab.data.idx import read_idx, write_idx
from cnnlab.data.loader import (dataset_mean_std, epoch_order, iterate_batches,
                                split_validation, to_float)
from cnnlab.data.registry import DATASETS, FILE_NAMES, DatasetInfo, FileInfo, get_dataset_info

__all__ = [
    "DATASETS", "FILE_NAMES", "Dataset", "DatasetInfo", "FileInfo", "dataset_mean_std",
    "download_dataset", "download_file", "epoch_order", "find_files", "get_dataset_info",
    "iterate_batches", "load_dataset", "load_folder", "locate", "read_idx", "search_folders",
    "split_validation", "to_float", "verify_file", "write_idx",
]
