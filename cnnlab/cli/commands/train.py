"""``cnnlab train``: train a model on an MNIST-style dataset into a run folder."""

from __future__ import annotations

import argparse

HELP = "train a model (mlp, cnn, cnn-bn or a spec) and save a run folder"

# Options that map one-to-one onto TrainConfig fields (dest == field name).
CONFIG_OPTIONS = ("model", "dataset", "data_dir", "channels", "image_size", "test_fraction",
                  "skip_bad_images", "digits", "augment", "epochs", "batch_size", "optimizer", "lr",
                  "schedule", "step_epochs", "gamma", "momentum", "weight_decay", "seed",
                  "normalization", "val_fraction", "limit_train", "limit_test", "threads", "log_every",
                  "wandb", "wandb_project", "wandb_name", "progress", "report", "backend",
                  "device", "init_from")


def _default(name: str) -> str:
    """``"default X"`` with X TrainConfig's default for field ``name``: the help never repeats
    a default by hand, so it cannot drift from what a run uses."""
    import dataclasses

    from cnnlab.training.config import TrainConfig

    value = next(field.default for field in dataclasses.fields(TrainConfig) if field.name == name)
    return f"default {value:g}" if isinstance(value, float) else f"default {value}"


def _default_lr() -> str:
    """The per-optimizer default learning rates, from cnnlab.training.config's table."""
    from cnnlab.training.config import MODEL_LR, OPTIMIZER_LR

    return (f"default {OPTIMIZER_LR['sgd']:g} for sgd, {OPTIMIZER_LR['adam']:g} for adam and "
            f"adamw, {MODEL_LR[('cnn-bn', 'adam')]:g} for cnn-bn with adam or adamw")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to train")
    what.add_argument("--model", help="mlp, cnn, cnn-bn or a model spec string "
                      f"(docs/models.md); {_default('model')}")
    what.add_argument("--dataset", help="mnist, fashion-mnist, kmnist, or a folder: IDX files, "
                      "CIFAR binary batches, or one subfolder of images per class "
                      f"(docs/data.md); {_default('dataset')}")
    what.add_argument("--data-dir", help="where named datasets are downloaded and kept")
    what.add_argument("--channels", type=int, metavar="1|3",
                      help="convert the images to grayscale (1) or RGB (3) (default: as they are)")
    what.add_argument("--image-size", metavar="H[xW]",
                      help="resize every image to H x W pixels (default: the images' size, "
                      "which must then agree)")
    what.add_argument("--test-fraction", type=float, metavar="F",
                      help="class folders without train/ and test/: the share of each class "
                      "held out for testing (default 0.2, fixed seed)")
    what.add_argument("--skip-bad-images", action="store_const", const=True, default=None,
                      help="leave out image files that cannot be decoded (counted in "
                      "summary.json) instead of stopping")
    what.add_argument("--digits", action="store_const", const=True, default=None,
                      help="the images are handwritten digits or characters: predict centres "
                      "pictures like MNIST and flips are refused (MNIST and KMNIST are)")
    what.add_argument("--augment", metavar="LIST",
                      help="augment training images: shift:S (pixels), flip, rotate:D "
                      "(degrees), e.g. shift:2,flip,rotate:10 (docs/data.md)")
    what.add_argument("--limit-train", type=int, metavar="N",
                      help="use only the first N training images (quick runs)")
    what.add_argument("--limit-test", type=int, metavar="N",
                      help="use only the first N test images")
    what.add_argument("--val-fraction", type=float, metavar="F",
                      help="hold out this share of the training set for validation "
                      f"({_default('val_fraction')})")
    what.add_argument("--normalization", help="unit (x/255) or standard (training-set mean/std); "
                      f"{_default('normalization')}")
    what.add_argument("--init-from", metavar="FILE",
                      help="start from these weights (fine-tune): a run folder, checkpoint .npz "
                      "or .safetensors file (e.g. from PyTorch) that fits --model")
    how = parser.add_argument_group("how to train")
    how.add_argument("--epochs", type=int, help="passes over the training set "
                     "(default: the model's, see docs/training.md)")
    how.add_argument("--batch-size", type=int, help=f"images per step ({_default('batch_size')}); "
                     "under torchrun the global batch, split over the processes")
    how.add_argument("--optimizer", help=f"sgd, adam or adamw ({_default('optimizer')})")
    how.add_argument("--lr", type=float, help=f"peak learning rate ({_default_lr()})")
    how.add_argument("--schedule", help="constant, step, cosine or linear "
                     f"({_default('schedule')})")
    how.add_argument("--step-epochs", type=int, metavar="N",
                     help="step schedule: decay every N epochs (default: a third of the run)")
    how.add_argument("--gamma", type=float, help=f"step schedule: decay factor ({_default('gamma')})")
    how.add_argument("--momentum", type=float, help=f"SGD momentum ({_default('momentum')})")
    how.add_argument("--weight-decay", type=float, help=f"weight decay ({_default('weight_decay')})")
    how.add_argument("--seed", type=int, help="seed of weights, data order, dropout "
                     f"({_default('seed')})")
    how.add_argument("--threads", type=int, metavar="N",
                     help="threads sharing each batch, one shard each (default: one per CPU "
                     "core, at least 32 images each); recorded in config.json")
    how.add_argument("--backend", help="numpy (cnnlab's own engine) or torch (the same model in "
                     f"PyTorch; pip install 'cnnlab[torch]') ({_default('backend')})")
    how.add_argument("--device", help="torch backend: auto (CUDA, then MPS, then CPU), cpu, "
                     f"cuda, cuda:N or mps ({_default('device')})")
    how.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings "
                     "(a run's config.json re-runs it); options given here override it")
    where = parser.add_argument_group("run folder and logging")
    where.add_argument("--run-dir", metavar="PATH",
                       help="the run folder (must not exist, or be empty)")
    where.add_argument("--runs-root", metavar="DIR", default=None,
                       help="where new run folders are made (default runs/)")
    where.add_argument("--resume", metavar="RUN",
                       help="continue an interrupted run folder from its last checkpoint")
    where.add_argument("--log-every", type=int, metavar="N",
                       help="steps between step records in metrics.jsonl "
                       f"({_default('log_every')})")
    where.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                       default=None, help="no progress bar")
    where.add_argument("--no-report", dest="report", action="store_const", const=False,
                       default=None, help="do not write report.html")
    where.add_argument("--wandb", action="store_const", const=True, default=None,
                       help="also log to Weights & Biases (pip install 'cnnlab[wandb]')")
    where.add_argument("--wandb-project", help=f"W&B project ({_default('wandb_project')})")
    where.add_argument("--wandb-name", help="W&B run name (default: the run folder's name)")


def run(args: argparse.Namespace) -> int:
    from cnnlab.backend.workspace import keep_freed_memory
    from cnnlab.training.trainer import run_training

    # Steps free and reallocate the same big arrays: keep their pages (no page faults). A
    # process-wide malloc setting, so the command opts in, never the library.
    keep_freed_memory()
    overrides = {name: getattr(args, name) for name in CONFIG_OPTIONS}
    result = run_training(
        overrides=overrides,
        config_file=args.config,
        run_dir=args.run_dir,
        runs_root=args.runs_root,
        resume_run=args.resume,
    )
    return result.exit_code
