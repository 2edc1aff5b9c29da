"""The training configuration: defaults, validation, config files.

A :class:`TrainConfig` holds everything that decides what ``cnnlab train``
computes. It is resolved in layers, each overriding the one before::

    dataclass defaults  <  per-model defaults  <  --config FILE  <  command-line options

The resolved config is written to the run folder as ``config.json``;
``cnnlab train --config RUN/config.json`` trains the same run again.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path

from cnnlab.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear")
NORMALIZATIONS = ("unit", "standard")
BACKENDS = ("numpy", "torch")
DEVICES = ("auto", "cpu", "cuda", "mps")

# Measured on Fashion-MNIST (docs/training.md): the fewest epochs that reach the target accuracy.
MODEL_DEFAULTS = {
    "mlp": {"epochs": 10},
    "cnn": {"epochs": 10},
    "cnn-bn": {"epochs": 10},
}
FALLBACK_DEFAULTS = {"epochs": 10}
# Peak learning rate by optimizer: SGD (momentum 0.9) needs a step about 50x Adam's, whose
# update is already scaled by the gradient's running RMS (examples/04 uses 0.05 for SGD).
OPTIMIZER_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
# Where a model trains better with another rate (docs/training.md): batch norm takes twice Adam's.
MODEL_LR = {("cnn-bn", "adam"): 2e-3, ("cnn-bn", "adamw"): 2e-3}


def default_lr(model: str, optimizer: str) -> float:
    """The peak learning rate ``cnnlab train`` uses when ``--lr`` is not given."""
    return MODEL_LR.get((model, optimizer), OPTIMIZER_LR.get(optimizer, OPTIMIZER_LR["adam"]))


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides a training run (see ``cnnlab train --help``).

    Args:
        model: "mlp", "cnn", "cnn-bn" or a model spec string (docs/models.md).
        dataset: "mnist", "fashion-mnist", "kmnist", or a folder: IDX files, CIFAR binary
            batches, or one folder of images per class (docs/data.md). Default fashion-mnist:
            Debian's dataset-fashion-mnist installs it, and MNIST's training files must be
            downloaded.
        data_dir: where named datasets are stored (None: cnnlab's default folder).
        channels: 1 or 3: convert the images to grayscale or RGB (None: as they are).
        image_size: "H" or "HxW": resize every image (None: the images' own size).
        test_fraction: a folder of class folders without train/ and test/: the share of
            each class held out for testing (None: 0.2), with a fixed seed.
        skip_bad_images: leave out image files that cannot be decoded (counted in
            summary.json) instead of stopping with an error naming them.
        digits: the images are handwritten digits or characters: predict prepares pictures
            like MNIST digits and flips are refused (None: MNIST and KMNIST are).
        augment: "shift:S,flip,rotate:D" or a part of it (None: no augmentation).
        epochs: passes over the training set (None: the model's default).
        batch_size: images per optimizer step.
        optimizer: "sgd", "adam" or "adamw".
        lr: peak learning rate (None: :func:`default_lr`, 0.05 for SGD and 1e-3 for Adam and
            AdamW; 2e-3 for ``cnn-bn`` with Adam or AdamW).
        schedule: learning rate over the run, updated every step: "constant", "step"
            (times ``gamma`` every ``step_epochs`` epochs), "cosine" (to 0 at the end) or
            "linear" (to 0 at the end).
        step_epochs: epochs between decays of the "step" schedule (None: a third of the run).
        gamma: decay factor of the "step" schedule.
        momentum: SGD momentum (ignored by Adam/AdamW).
        weight_decay: L2 penalty (SGD, Adam) or decoupled decay (AdamW).
        seed: seeds the weights, the data order, dropout and the validation split.
        normalization: "unit" (x/255) or "standard" ((x/255 - mean)/std of the training set).
        val_fraction: share of the training set held out for validation (0: none).
        limit_train: use only the first N training images (None: all).
        limit_test: use only the first N test images (None: all).
        threads: threads that share each batch, one shard each (None: one per CPU core,
            with at least 32 images and 200 MFLOP of forward work per thread; resolved when
            the run starts and written into config.json). Results depend on it at the level of float
            rounding (BatchNorm: per-shard statistics); the same seed and threads give the
            same run.
        log_every: steps between step records in metrics.jsonl.
        progress: draw a progress bar.
        report: write report.html after each epoch (needs matplotlib).
        wandb: also log to Weights & Biases.
        wandb_project: the W&B project.
        wandb_name: the W&B run name (None: the run folder's name).
        backend: "numpy" (cnnlab's own engine) or "torch" (the same model as torch.nn
            modules, trained by torch.optim; needs ``pip install 'cnnlab[torch]'``).
        device: where the torch backend runs: "auto" (CUDA, then MPS, then the CPU), "cpu",
            "cuda", "cuda:N" or "mps". The NumPy engine runs on the CPU only.
        world_size: processes training together (torchrun's WORLD_SIZE; 1 without torchrun).
            Recorded, not chosen: ``batch_size`` is the global batch, split over the ranks.
        init_from: start from these weights instead of random ones (fine-tuning): a run
            folder, a checkpoint ``.npz`` or a ``.safetensors`` file (from PyTorch or ``cnnlab
            export``) whose keys and shapes fit ``model``. The optimizer starts afresh.
    """

    model: str = "cnn"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    channels: int | None = None
    image_size: str | None = None
    test_fraction: float | None = None
    skip_bad_images: bool = False
    digits: bool | None = None
    augment: str | None = None
    epochs: int | None = None
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None
    schedule: str = "cosine"
    step_epochs: int | None = None
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    normalization: str = "standard"
    val_fraction: float = 0.0
    limit_train: int | None = None
    limit_test: int | None = None
    threads: int | None = None
    log_every: int = 50
    progress: bool = True
    report: bool = True
    wandb: bool = False
    wandb_project: str = "cnnlab"
    wandb_name: str | None = None
    backend: str = "numpy"
    device: str = "auto"
    world_size: int = 1
    init_from: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(field.name for field in dataclasses.fields(TrainConfig))
_INT_FIELDS = {"epochs", "batch_size", "step_epochs", "seed", "limit_train", "limit_test",
               "threads", "log_every", "world_size", "channels"}
_FLOAT_FIELDS = {"lr", "gamma", "momentum", "weight_decay", "val_fraction", "test_fraction"}
_BOOL_FIELDS = {"progress", "report", "wandb", "skip_bad_images", "digits"}
_OPTIONAL_FIELDS = {"data_dir", "epochs", "lr", "step_epochs", "limit_train", "limit_test",
                    "threads", "wandb_name", "init_from", "channels", "image_size",
                    "test_fraction", "digits", "augment"}


def suggest(value: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_type(name: str, value):
    if value is None:
        if name in _OPTIONAL_FIELDS:
            return None
        raise ConfigError(f"config value '{name}' cannot be empty")
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ConfigError(f"config value '{name}' must be true or false, not {value!r}")
        return value
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config value '{name}' must be a whole number, not {value!r}")
        return value
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config value '{name}' must be a number, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config value '{name}' must be a string, not {value!r}")
    return value


def _toml_reader():
    """Python 3.11's tomllib, or on Python 3.10 the same parser as the tomli package."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("reading a TOML config on this Python needs the tomli package: "
                              "pip install tomli (or give the settings as JSON)") from None
    return tomllib


def load_config_file(path: str | Path) -> dict:
    """Read a JSON or TOML (``.toml``) config file into a dict of known field names.

    Raises:
        ConfigError: the file is missing, unreadable, or names an unknown field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give a JSON or TOML file "
                          "(a run's config.json works)")
    try:
        if path.suffix.lower() == ".toml":
            tomllib = _toml_reader()
            with open(path, "rb") as stream:
                data = tomllib.load(stream)
        else:
            with open(path, encoding="utf-8") as stream:
                data = json.load(stream)
    except (ValueError, UnicodeDecodeError) as error:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"config file {path} is not valid {kind}: {first_line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown setting '{key}' in {path}{suggest(name, FIELD_NAMES)}")
        values[name] = value
    return values


def resolve_config(file_values: dict | None = None, overrides: dict | None = None) -> TrainConfig:
    """Merge defaults, per-model defaults, a config file's values and command-line overrides.

    ``None`` in ``overrides`` means "not given". Returns a validated config whose
    ``epochs``, ``lr`` and ``step_epochs`` are filled in.
    """
    values: dict = {}
    for source in (file_values or {}, overrides or {}):
        for name, value in source.items():
            if name not in FIELD_NAMES:
                raise ConfigError(f"unknown setting '{name}'{suggest(name, FIELD_NAMES)}")
            if source is overrides and value is None:
                continue
            values[name] = _check_type(name, value)
    config = TrainConfig(**values)
    model_defaults = MODEL_DEFAULTS.get(config.model, FALLBACK_DEFAULTS)
    if config.epochs is None:
        config.epochs = model_defaults["epochs"]
    if config.lr is None:
        config.lr = default_lr(config.model, config.optimizer)
    if config.step_epochs is None:
        config.step_epochs = max(1, math.ceil(config.epochs / 3))
    validate_config(config)
    return config


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} '{value}'{suggest(value, choices)}; "
                          f"choose one of: {', '.join(choices)}")


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} must be greater than 0, got {value}")


def _check_device(device: str) -> None:
    """"auto", "cpu", "mps", "cuda" or "cuda:N" (PyTorch's device strings)."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and index and index.isdigit():
        return
    if index or kind not in DEVICES:
        raise ConfigError(f"unknown device '{device}'{suggest(device, DEVICES)}; choose one of: "
                          f"{', '.join(DEVICES)} (or cuda:N)")


def validate_config(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for values no run can use (the model spec is checked later)."""
    for name in FIELD_NAMES:
        _check_type(name, getattr(config, name))
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    _check_choice("schedule", config.schedule, SCHEDULES)
    _check_choice("normalization", config.normalization, NORMALIZATIONS)
    _check_choice("backend", config.backend, BACKENDS)
    _check_device(config.device)
    for name in ("epochs", "batch_size", "lr", "log_every", "step_epochs", "gamma", "world_size"):
        _check_positive(name, getattr(config, name))
    for name in ("limit_train", "limit_test", "threads"):
        _check_positive(name, getattr(config, name), allow_none=True)
    if not math.isfinite(config.lr):
        raise ConfigError(f"--lr must be a finite number, got {config.lr}")
    if config.momentum < 0 or config.weight_decay < 0:
        raise ConfigError("--momentum and --weight-decay must be 0 or more")
    if not 0 <= config.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if config.test_fraction is not None and not 0 < config.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be between 0 and 1 (exclusive), "
                          f"got {config.test_fraction}")
    if config.channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 (grayscale) or 3 (RGB), got {config.channels}")
    if config.image_size is not None:
        from cnnlab.data.folders import parse_image_size

        parse_image_size(config.image_size)
    if config.augment is not None:
        from cnnlab.data.augment import parse_augment

        parse_augment(config.augment)
    if config.seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {config.seed}")
    if not config.model.strip():
        raise ConfigError("--model is empty; use mlp, cnn, cnn-bn or a model spec")
    if not config.dataset.strip():
        raise ConfigError("--dataset is empty; use mnist, fashion-mnist, kmnist or a folder")
    if config.backend == "numpy" and config.device not in ("auto", "cpu"):
        raise ConfigError(f"--device {config.device} needs --backend torch: the NumPy engine "
                          "runs on the CPU")
    if config.batch_size < config.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch and must be at "
                          f"least the {config.world_size} processes sharing it; raise it")
