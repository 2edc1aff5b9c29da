"""The same training run as `cnnlab train`, in PyTorch, for a side-by-side wall-time comparison.

Same model and initial weights (built by cnnlab, copied into torch), same data order
(``epoch_order(n, seed, epoch)``), same normalisation, optimizer, learning-rate schedule
(stepped every batch) and batch size. Only the engine differs. PyTorch runs in
channels_last, its faster layout on this CPU for convolutions and pooling.

    python benchmarks/train_pytorch.py --model cnn --dataset fashion-mnist \
        --data-dir ../shared/data --json torch-cnn.json

Compare ``train_seconds`` with the ``train_seconds`` in a cnnlab run's summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--limit-train", type=int)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch

    from cnnlab.training.config import FALLBACK_DEFAULTS, MODEL_DEFAULTS, default_lr
    from cnnlab.data import load_dataset
    from cnnlab.data.loader import dataset_mean_std, epoch_order, iterate_batches
    from cnnlab.utils.fileio import write_json
    from cnnlab.tools.bench import torch_twin
    from cnnlab.models import build_model

    torch.set_num_threads(args.threads)
    defaults = MODEL_DEFAULTS.get(args.model, FALLBACK_DEFAULTS)
    epochs = args.epochs or defaults["epochs"]
    lr = args.lr or default_lr(args.model, "adam")

    dataset = load_dataset(args.dataset, data_dir=args.data_dir, download=False, progress=False)
    train_images, train_labels = dataset.train_images, dataset.train_labels
    if args.limit_train:
        train_images, train_labels = train_images[:args.limit_train], train_labels[:args.limit_train]
    mean, std = dataset_mean_std(train_images)

    model = build_model(args.model, np.random.default_rng(args.seed),
                        input_shape=(1, *train_images.shape[1:]), num_classes=dataset.num_classes)
    twin = torch_twin(torch, model).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(twin.parameters(), lr=lr)
    steps_per_epoch = -(-len(train_labels) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    def batches(images, labels, order=None, batch_size=args.batch_size):
        for x, y in iterate_batches(images, labels, batch_size, order=order, normalization="standard",
                                    mean=mean, std=std):
            yield (torch.from_numpy(x).contiguous(memory_format=torch.channels_last),
                   torch.from_numpy(y))

    train_seconds = 0.0
    for epoch in range(1, epochs + 1):
        twin.train()
        order = epoch_order(len(train_labels), args.seed, epoch)
        started = time.perf_counter()
        for x, y in batches(train_images, train_labels, order):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(twin(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
        train_seconds += time.perf_counter() - started
        twin.eval()
        correct = 0
        with torch.no_grad():
            for x, y in batches(dataset.test_images, dataset.test_labels, batch_size=1000):
                correct += int((twin(x).argmax(1) == y).sum())
        accuracy = correct / len(dataset.test_labels)
        print(f"epoch {epoch}/{epochs}: test accuracy {accuracy:.4f}, train {train_seconds:.1f} s",
              file=sys.stderr)

    result = {"engine": f"torch {torch.__version__} channels_last, {args.threads} threads",
              "model": args.model, "dataset": args.dataset, "epochs": epochs, "lr": lr,
              "batch_size": args.batch_size, "train_seconds": train_seconds,
              "images_per_second": epochs * len(train_labels) / train_seconds, "test_accuracy": accuracy}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
