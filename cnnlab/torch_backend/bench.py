"""``cnnlab bench --backend torch``: cnnlab's torch backend against a plain PyTorch loop.

Both train the same model from the same initial weights with the same optimizer and schedule
on the same images, one epoch at a time, interleaved (plain, cnnlab, plain, cnnlab, ...) so a
busy machine slows both alike. The plain loop is what a PyTorch user writes for speed: the
whole normalised training set kept on the device, batches gathered there from a permutation,
no per-step synchronisation. cnnlab's figure is ``train_seconds`` of a real ``cnnlab train``
epoch (batches built in NumPy and copied to the device, the loss read back each step for the
NaN check, the progress records and the metrics file; the evaluation is not counted).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def _synchronize(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _plain_epoch(torch, config, data, device) -> float:
    """Seconds of one epoch of the plain loop (data on the device)."""
    import numpy as np
    import torch.nn.functional as F

    from cnnlab.data.loader import to_float
    from cnnlab.models import build_model
    from cnnlab.torch_backend.modules import build_torch_model
    from cnnlab.training.trainer import build_optimizer, build_scheduler

    input_shape = (1,) + tuple(data.train_images.shape[1:])
    initial = build_model(config.model, np.random.default_rng(config.seed), input_shape,
                          len(data.classes)).state_dict()
    module = build_torch_model(config.model, input_shape, len(data.classes), initial).to(device)
    optimizer = build_optimizer(config, module.parameters(), torch.optim)
    steps = -(-len(data.train_labels) // config.batch_size)
    scheduler = build_scheduler(config, optimizer, steps, torch.optim.lr_scheduler)
    normalization = data.normalization
    images = torch.from_numpy(to_float(data.train_images, normalization["kind"],
                                       normalization["mean"], normalization["std"])).to(device)
    labels = torch.from_numpy(data.train_labels.astype(np.int64)).to(device)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).to(device)
    module.train()
    _synchronize(torch, device)
    started = time.perf_counter()
    for start in range(0, len(labels), config.batch_size):
        batch = order[start:start + config.batch_size]
        optimizer.zero_grad()
        loss = F.cross_entropy(module(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    _synchronize(torch, device)
    return time.perf_counter() - started


def _cnnlab_epoch(config, data, folder: Path) -> float:
    """``train_seconds`` of one epoch of ``cnnlab train --backend torch``."""
    import dataclasses
    import io

    from cnnlab.training.trainer import Progress, trainer_class

    folder.mkdir()
    trainer = trainer_class(config)(dataclasses.replace(config), folder, data, Progress(),
                                    out=io.StringIO())
    return trainer.run().summary["train_seconds"]


def bench_torch_backend(device: str = "auto", model: str = "cnn", batch_size: int = 128,
                        images: int | None = None, repeats: int = 3,
                        data_dir: str | None = None, log=print) -> dict:
    """Median, min and max epoch seconds of both loops, and cnnlab's overhead (a ratio - 1)."""
    import torch

    from cnnlab.torch_backend import select_device
    from cnnlab.training.config import resolve_config
    from cnnlab.training.trainer import _load_data

    chosen, line = select_device(device)
    log(line)
    config = resolve_config({}, {"model": model, "dataset": "fashion-mnist", "data_dir": data_dir,
                                 "epochs": 1, "batch_size": batch_size, "backend": "torch",
                                 "device": str(chosen), "limit_train": images, "limit_test": 256,
                                 "progress": False, "report": False, "log_every": 10**9})
    data = _load_data(config)
    seconds: dict[str, list[float]] = {"plain": [], "cnnlab": []}
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as root:
        for repeat in range(repeats + 1):   # the first round warms up (cuDNN autotuning, caches)
            plain = _plain_epoch(torch, config, data, chosen)
            ours = _cnnlab_epoch(config, data, Path(root) / f"run-{repeat}")
            if repeat:
                seconds["plain"].append(plain)
                seconds["cnnlab"].append(ours)
                log(f"  epoch {repeat}: plain PyTorch {plain:.3f} s, cnnlab {ours:.3f} s")
    images_count = len(data.train_labels)
    results = {"device": str(chosen), "device_line": line, "model": model,
               "batch_size": batch_size, "images": images_count, "torch": torch.__version__}
    for name, values in seconds.items():
        results[name] = {"seconds_median": statistics.median(values), "seconds_min": min(values),
                         "seconds_max": max(values),
                         "images_per_second": images_count / statistics.median(values)}
    results["overhead"] = results["cnnlab"]["seconds_median"] / results["plain"]["seconds_median"] - 1
    return results


def format_torch_backend(results: dict) -> str:
    lines = [f"cnnlab --backend torch against a plain PyTorch loop: {results['model']}, batch "
             f"{results['batch_size']}, {results['images']} images, {results['device_line']}, "
             f"torch {results['torch']}",
             f"{'':>16} {'median s':>9} {'min':>8} {'max':>8} {'images/s':>10}"]
    for name, label in (("plain", "plain PyTorch"), ("cnnlab", "cnnlab")):
        entry = results[name]
        lines.append(f"{label:>16} {entry['seconds_median']:9.3f} {entry['seconds_min']:8.3f} "
                     f"{entry['seconds_max']:8.3f} {entry['images_per_second']:10,.0f}")
    lines.append(f"cnnlab's overhead: {results['overhead']:+.1%} (target <= 5% at batch 128)")
    return "\n".join(lines)
