"""The training loop behind ``cnnlab train``: run folders, resume, interruption, metrics.

One step is the lecture's minibatch gradient descent::

    logits = model(x);  loss, dlogits = cross_entropy(logits, y)
    model.backward(dlogits);  optimizer.step()

with the forward and backward split over ``config.threads`` shards of the batch
(cnnlab/parallel.py): one thread and model replica per shard, gradients summed.

Everything random is drawn from generators seeded by ``config.seed``: the
weights (``default_rng(seed)``), the data order (``epoch_order(n, seed, epoch)``)
and dropout (``default_rng([seed, 1])``, whose state the checkpoint keeps; with
several threads it seeds each shard's masks). A run
stopped by Ctrl-C or SIGTERM saves a checkpoint at the step it reached; resuming
it gives, bit for bit, the weights and metrics of a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cnnlab import runs
from cnnlab.config import TrainConfig, load_config_file, resolve_config
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, TrainingError
from cnnlab.fileio import write_json
from cnnlab.parallel import DataParallel
from cnnlab.progress import ProgressBar

#: While a run goes on, report.html is redrawn after the first epoch and then at most this
#: often (drawing it takes ~3 s: after every 6 s epoch of the lecture CNN it cost a third of
#: the run). The finished run's report is always written.
REPORT_EVERY_SECONDS = 60.0


def _clock() -> float:
    """Seconds on a monotonic clock (tests replace it)."""
    return time.monotonic()


EVAL_BATCH_SIZE = 256  # larger batches are no faster, and batch 1000 doubles peak memory (conv2 im2col: 226 MB)
# Options a resumed run may change: they do not alter what it computes.
RESUME_OVERRIDABLE = {"progress", "report", "wandb", "wandb_project", "wandb_name"}


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` did: the run folder, its summary, and the exit status to use."""

    run_dir: Path
    summary: dict
    interrupted_by: int | None = None   # the signal number that stopped it, if any

    @property
    def exit_code(self) -> int:
        if self.interrupted_by is None:
            return 0
        return 128 + int(self.interrupted_by)   # 130 for SIGINT, 143 for SIGTERM


@dataclasses.dataclass
class Progress:
    """Where a run stands; saved in the checkpoint so a resumed run continues exactly."""

    epochs_done: int = 0
    batch_in_epoch: int = 0        # batches done in epoch epochs_done + 1
    global_step: int = 0
    epoch_loss_sum: float = 0.0    # sums over the epoch so far, for its train_loss/accuracy
    epoch_correct: int = 0
    epoch_seen: int = 0
    window_loss_sum: float = 0.0   # sums since the last step record
    window_correct: int = 0
    window_seen: int = 0
    train_seconds: float = 0.0
    last_epoch: dict | None = None  # the last epoch record


class _StopSignals:
    """While active, SIGINT/SIGTERM only set a flag the loop checks between steps.

    A second signal raises KeyboardInterrupt at once, for a user who cannot wait.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- setup


@dataclasses.dataclass
class _Data:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    val_images: np.ndarray | None
    val_labels: np.ndarray | None
    classes: list
    normalization: dict
    preprocess: dict | None  # how the images were prepared: the checkpoint's meta["preprocess"]
    augment: object = None  # a cnnlab.data.augment.Augmentation, or None
    skipped_images: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        images = self.train_images
        return ((1,) if images.ndim == 3 else (images.shape[1],)) + tuple(images.shape[-2:])


def _check_dataset_name(name: str) -> None:
    """ConfigError suggesting the closest name, unless ``name`` is a dataset or a folder."""
    from cnnlab.data import get_dataset_info

    if not Path(name).is_dir():
        get_dataset_info(name)


def _load_data(config: TrainConfig) -> _Data:
    from cnnlab.data import load_dataset
    from cnnlab.data.augment import parse_augment
    from cnnlab.data.datasets import dataset_options
    from cnnlab.data.loader import dataset_mean_std, split_validation
    from cnnlab.images import background_polarity, preprocess_record

    _check_dataset_name(config.dataset)
    dataset = load_dataset(config.dataset, data_dir=config.data_dir, download=True,
                           progress=config.progress, **dataset_options(config.to_dict()))
    if dataset.skipped:
        print(f"cnnlab: left out {len(dataset.skipped)} image files that cannot be decoded "
              f"(first: {dataset.skipped[0]})", file=sys.stderr)
    train_images, train_labels = dataset.train_images, dataset.train_labels
    test_images, test_labels = dataset.test_images, dataset.test_labels
    if config.limit_train is not None:
        train_images, train_labels = train_images[:config.limit_train], train_labels[:config.limit_train]
    if config.limit_test is not None:
        test_images, test_labels = test_images[:config.limit_test], test_labels[:config.limit_test]
    val_images, val_labels = dataset.val_images, dataset.val_labels
    if config.val_fraction > 0:
        if val_images is not None:
            raise ConfigError(f"{dataset.source} has a val/ folder, which is the validation "
                              "split; leave out --val-fraction")
        train_images, train_labels, val_images, val_labels = split_validation(
            train_images, train_labels, config.val_fraction, config.seed)
    if len(train_labels) == 0:
        raise ConfigError("no training images left; raise --limit-train or lower --val-fraction")
    if len(test_labels) == 0:
        raise ConfigError("the dataset has no test images; raise --limit-test")
    if config.normalization == "standard":
        mean, std = dataset_mean_std(train_images)
    else:
        mean, std = None, None
    normalization = {"kind": config.normalization, "mean": mean, "std": std}
    digits = dataset.digits if config.digits is None else config.digits
    augment = parse_augment(config.augment)
    if augment is not None:
        augment.check(train_images.shape, digits, dataset.name)
    data = _Data(train_images, train_labels, test_images, test_labels, val_images, val_labels,
                 list(dataset.classes), normalization, None, augment, len(dataset.skipped))
    channels = data.input_shape[0]
    data.preprocess = preprocess_record(
        "digit" if digits and channels == 1 else "resize", channels, data.input_shape[1:],
        # up to 2,000 images spread over the set (a folder dataset is sorted by class)
        normalization, background_polarity(train_images[::max(1, len(train_images) // 2000)]))
    return data


def _build_model(config: TrainConfig, input_shape, num_classes: int):
    from cnnlab.models import build_model

    return build_model(config.model, np.random.default_rng(config.seed),
                       input_shape=input_shape, num_classes=num_classes)


def _resolve_threads(config: TrainConfig, model, input_shape) -> None:
    """Fill in ``config.threads`` (None: one per core, enough work per thread)."""
    from cnnlab.parallel import threads_for

    if config.threads is None:
        config.threads = threads_for(model, input_shape, config.batch_size)


def _ignore_overflow():
    """A diverging run overflows before its loss is NaN; the loss checks report it instead."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def _attach_dropout_rng(model, generator: np.random.Generator) -> None:
    """Make every random layer (Dropout) draw from ``generator``, whose state we checkpoint."""
    for module in model.modules():
        if isinstance(getattr(module, "rng", None), np.random.Generator):
            module.rng = generator


def _build_optimizer(config: TrainConfig, parameters):
    from cnnlab.optim import SGD, Adam, AdamW

    if config.optimizer == "sgd":
        return SGD(parameters, lr=config.lr, momentum=config.momentum,
                   weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """The learning-rate scheduler of ``config.schedule``, stepped once per training step.

    With T = epochs * steps_per_epoch steps: "cosine" is ``CosineAnnealingLR(T_max=T)``,
    "linear" decays to 0 with ``LinearLR(1, 0, T)``, "step" multiplies by ``gamma`` every
    ``step_epochs`` epochs (``StepLR``), "constant" is None.
    """
    from cnnlab.optim import CosineAnnealingLR, LinearLR, StepLR

    total_steps = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "linear":
        return LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=total_steps)
    if config.schedule == "step":
        return StepLR(optimizer, step_size=config.step_epochs * steps_per_epoch,
                      gamma=config.gamma)
    return None


# --------------------------------------------------------------------------- evaluation


def evaluate_arrays(model, images, labels, normalization: dict, threads: int = 1) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on uint8 images."""
    from cnnlab.evaluation import evaluate

    result = evaluate(model, images, labels, batch_size=EVAL_BATCH_SIZE,
                      normalization=normalization["kind"], mean=normalization["mean"],
                      std=normalization["std"], threads=threads)
    return result.loss, result.accuracy


# --------------------------------------------------------------------------- the trainer


def _all_finite(model) -> bool:
    return all(np.isfinite(parameter.data).all() for parameter in model.parameters())


class Trainer:
    """One training run in one run folder (use :func:`train` or :func:`run_training`)."""

    def __init__(self, config: TrainConfig, run_dir: Path, data: _Data, progress: Progress,
                 wandb_run_id: str | None = None, out=None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.data = data
        self.progress = progress
        self.out = out if out is not None else sys.stdout
        self.input_shape = data.input_shape
        self.num_classes = len(data.classes)
        self.model = _build_model(config, self.input_shape, self.num_classes)
        self.dropout_rng = np.random.default_rng([config.seed, 1])
        _attach_dropout_rng(self.model, self.dropout_rng)
        self.optimizer = _build_optimizer(config, self.model.parameters())
        _resolve_threads(config, self.model, self.input_shape)  # a run saved without threads
        self.parallel = DataParallel(self.model, config.threads, rng=self.dropout_rng)
        self.steps_per_epoch = math.ceil(len(data.train_labels) / config.batch_size)
        self.scheduler = build_scheduler(config, self.optimizer, self.steps_per_epoch)
        self._report_written_at: float | None = None  # _clock() of the last report.html
        self.wandb = None
        self.wandb_run_id = wandb_run_id
        self._report_notice_shown = False

    # ---------------------------------------------------------------- checkpoints

    def _meta(self) -> dict:
        return {
            "model": self.config.model,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "classes": self.data.classes,
            "normalization": self.data.normalization,
            "preprocess": self.data.preprocess,
            "dataset": self.config.dataset,
            "epoch": self.progress.epochs_done,
            "step": self.progress.global_step,
            "config": self.config.to_dict(),
            "rng_state": self.dropout_rng.bit_generator.state,
            "progress": dataclasses.asdict(self.progress),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "wandb_run_id": self.wandb_run_id,
        }

    def save_checkpoint(self) -> None:
        from cnnlab.checkpoint import save_checkpoint

        if not _all_finite(self.model):
            raise TrainingError(
                f"the weights became NaN or infinite at epoch {self.progress.epochs_done + 1}, "
                f"step {self.progress.global_step}; lower the learning rate (--lr "
                f"{self.config.lr / 10:g}); {self._checkpoint_note()}")
        save_checkpoint(self.run_dir / runs.CHECKPOINT_FILE, self.model, self.optimizer,
                        meta=self._meta())

    def restore(self, path: Path) -> None:
        """Load weights, optimizer state, gradients and dropout rng state from a checkpoint."""
        from cnnlab.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        self.model.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is not None:
            self.optimizer.load_state_dict(checkpoint.optimizer_state)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint.meta["scheduler"])
            self.optimizer.lr = self.scheduler.get_last_lr()[0]
        self.dropout_rng.bit_generator.state = checkpoint.meta["rng_state"]
        for name, parameter in self.model.named_parameters():
            if name in checkpoint.grads and parameter.grad is not None:
                parameter.grad[...] = checkpoint.grads[name]

    def _checkpoint_note(self) -> str:
        path = self.run_dir / runs.CHECKPOINT_FILE
        if path.is_file():
            return f"the last good checkpoint is {path}"
        return "no checkpoint was saved (it failed in the first epoch)"

    # ---------------------------------------------------------------- records

    def _record(self, record: dict) -> None:
        self.metrics.write(record)
        if self.wandb is not None:
            self.wandb.log(record)

    def _step_record(self, epoch: int, lr: float, window_start: float) -> None:
        progress = self.progress
        now = time.time()
        seconds = time.perf_counter() - window_start
        self._record({
            "kind": "step", "epoch": epoch, "step": progress.global_step,
            "loss": progress.window_loss_sum / progress.window_seen,
            "accuracy": progress.window_correct / progress.window_seen,
            "lr": lr,
            "images_per_second": progress.window_seen / seconds if seconds > 0 else None,
            "time": now,
        })
        progress.window_loss_sum, progress.window_correct, progress.window_seen = 0.0, 0, 0

    def summary(self, finished: bool) -> dict:
        progress = self.progress
        last = progress.last_epoch or {}
        seen = progress.epochs_done * len(self.data.train_labels)
        summary = {
            "test_accuracy": last.get("test_accuracy"),
            "test_loss": last.get("test_loss"),
            "val_accuracy": last.get("val_accuracy"),
            "val_loss": last.get("val_loss"),
            "train_accuracy": last.get("train_accuracy"),
            "train_loss": last.get("train_loss"),
            "epochs": progress.epochs_done,
            "epochs_planned": self.config.epochs,
            "steps": progress.global_step,
            "train_seconds": progress.train_seconds,
            "images_per_second": seen / progress.train_seconds if progress.train_seconds else None,
            "train_images": int(len(self.data.train_labels)),
            "test_images": int(len(self.data.test_labels)),
            "dataset": self.config.dataset,
            "input_shape": list(self.input_shape),
            "skipped_images": self.data.skipped_images,
            "augment": self.data.augment.spec if self.data.augment is not None else None,
            "model": self.config.model,
            "parameters": int(sum(p.data.size for p in self.model.parameters())),
            "seed": self.config.seed,
            "finished": finished,
            "versions": runs.versions(),
            "wandb_run_id": self.wandb_run_id,
        }
        return {key: value for key, value in summary.items()
                if value is not None or key in ("test_accuracy", "test_loss")}

    def _report_possible(self) -> bool:
        if not self.config.report:
            return False
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            if not self._report_notice_shown:
                print("cnnlab: report.html skipped: matplotlib is not installed "
                      "(pip install 'cnnlab[plot]')", file=sys.stderr)
                self._report_notice_shown = True
            return False
        return True

    def _write_report(self) -> None:
        """Rewrite report.html (a browser left open on it reloads it and follows the run).

        It is drawn here, between epochs, costing about 3 s each time (`--no-report` skips it):
        after the first epoch, then at most every REPORT_EVERY_SECONDS, and at the end. Drawing
        it in another process while training goes on was measured slower: on two cores it
        competes with the training threads and costs the epoch more than drawing it here.
        """
        if not self._report_possible():
            return
        self._report_written_at = _clock()
        from cnnlab.report import write_report

        try:
            write_report(self.run_dir)
        except CnnlabError as error:
            print(f"cnnlab: report.html not written: {error}", file=sys.stderr)

    # ---------------------------------------------------------------- the loop

    def _train_epoch(self, epoch: int, stop: _StopSignals) -> bool:
        """Run the rest of ``epoch``; False if a signal stopped it (after saving a checkpoint)."""
        from cnnlab.data.loader import epoch_order, iterate_batches
        config, progress, data = self.config, self.progress, self.data
        model, optimizer = self.model, self.optimizer
        order = epoch_order(len(data.train_labels), config.seed, epoch)
        batches = iterate_batches(data.train_images, data.train_labels, config.batch_size,
                                  order=order, normalization=config.normalization,
                                  mean=data.normalization["mean"], std=data.normalization["std"],
                                  start_batch=progress.batch_in_epoch, reuse_buffer=True,
                                  augment=data.augment, augment_seed=(config.seed, epoch))
        bar = ProgressBar(len(data.train_labels), f"epoch {epoch}/{config.epochs}", unit="img",
                          enabled=config.progress)
        if progress.batch_in_epoch:
            bar.update(min(progress.batch_in_epoch * config.batch_size, len(data.train_labels)))
        model.train()
        started = window_start = time.perf_counter()
        contexts = contextlib.ExitStack()
        try:
            contexts.enter_context(_ignore_overflow())
            # BLAS stays at one thread per shard for the whole epoch (cnnlab/parallel.py).
            contexts.enter_context(self.parallel.hold_blas())
            for x, y in batches:
                lr = optimizer.lr
                optimizer.zero_grad()
                # forward, loss and backward, over config.threads shards of the batch
                loss, logits = self.parallel.forward_backward(x, y)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss} at epoch {epoch}, step "
                        f"{progress.global_step + 1} (learning rate {lr:.3g}); lower the "
                        f"learning rate, e.g. --lr {config.lr / 10:g}; {self._checkpoint_note()}")
                optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                batch = len(y)
                correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
                progress.global_step += 1
                progress.batch_in_epoch += 1
                progress.epoch_loss_sum += loss * batch
                progress.epoch_correct += correct
                progress.epoch_seen += batch
                progress.window_loss_sum += loss * batch
                progress.window_correct += correct
                progress.window_seen += batch
                bar.update(batch, loss=progress.epoch_loss_sum / progress.epoch_seen,
                           acc=progress.epoch_correct / progress.epoch_seen)
                if progress.global_step % config.log_every == 0:
                    self._step_record(epoch, lr, window_start)
                    window_start = time.perf_counter()
                if stop.signum is not None:
                    break
        finally:
            contexts.close()
            bar.close()
            progress.train_seconds += time.perf_counter() - started
        if stop.signum is not None:
            self.save_checkpoint()
            return False
        self._finish_epoch(epoch, time.perf_counter() - started)
        return True

    def _finish_epoch(self, epoch: int, seconds: float) -> None:
        progress, data = self.progress, self.data
        record = {"kind": "epoch", "epoch": epoch, "step": progress.global_step,
                  "train_loss": progress.epoch_loss_sum / progress.epoch_seen,
                  "train_accuracy": progress.epoch_correct / progress.epoch_seen}
        with _ignore_overflow():  # overflowed weights give a non-finite test loss, reported below
            record["test_loss"], record["test_accuracy"] = evaluate_arrays(
                self.model, data.test_images, data.test_labels, data.normalization, self.config.threads)
            if data.val_images is not None:
                record["val_loss"], record["val_accuracy"] = evaluate_arrays(
                    self.model, data.val_images, data.val_labels, data.normalization,
                    self.config.threads)
        record["seconds"] = seconds
        record["time"] = time.time()
        progress.epochs_done = epoch
        progress.batch_in_epoch = 0
        progress.epoch_loss_sum, progress.epoch_correct, progress.epoch_seen = 0.0, 0, 0
        progress.last_epoch = record
        if not math.isfinite(record["test_loss"]):
            raise TrainingError(
                f"the test loss became {record['test_loss']} after epoch {epoch}; lower the "
                f"learning rate, e.g. --lr {self.config.lr / 10:g}; {self._checkpoint_note()}")
        self._record(record)
        self.save_checkpoint()
        write_json(self.run_dir / runs.SUMMARY_FILE, self.summary(finished=False))
        self._print_epoch(record)
        written_at = self._report_written_at
        if epoch < self.config.epochs and (
                written_at is None or _clock() - written_at >= REPORT_EVERY_SECONDS):
            self._write_report()

    def _print_epoch(self, record: dict) -> None:
        line = (f"epoch {record['epoch']}/{self.config.epochs}: train loss "
                f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  test loss "
                f"{record['test_loss']:.4f} acc {record['test_accuracy']:.4f}")
        if "val_accuracy" in record:
            line += f"  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
        print(line, file=self.out, flush=True)

    def run(self) -> TrainResult:
        """Train from the current progress to the last epoch, or until a signal stops it."""
        from cnnlab.wandb_log import WandbLogger

        config = self.config
        self.metrics = runs.MetricsWriter(self.run_dir / runs.METRICS_FILE)
        if config.wandb:
            self.wandb = WandbLogger(config.to_dict(), self.run_dir, config.wandb_project,
                                     config.wandb_name or self.run_dir.name, self.wandb_run_id)
            self.wandb_run_id = self.wandb.run_id
        exit_code = 1
        try:
            with _StopSignals() as stop:
                for epoch in range(self.progress.epochs_done + 1, config.epochs + 1):
                    if stop.signum is not None or not self._train_epoch(epoch, stop):
                        result = TrainResult(self.run_dir, self.summary(finished=False), stop.signum)
                        write_json(self.run_dir / runs.SUMMARY_FILE, result.summary)
                        exit_code = result.exit_code
                        return result
            summary = self.summary(finished=True)
            write_json(self.run_dir / runs.SUMMARY_FILE, summary)
            self._write_report()
            exit_code = 0
            return TrainResult(self.run_dir, summary)
        except TrainingError:
            write_json(self.run_dir / runs.SUMMARY_FILE, self.summary(finished=False))
            raise
        finally:
            self.parallel.close()
            self.metrics.close()
            if self.wandb is not None:
                self.wandb.finish(exit_code)


# --------------------------------------------------------------------------- entry points


def train(config: TrainConfig, run_dir: str | Path | None = None, runs_root: str | None = None,
          out=None) -> TrainResult:
    """Train ``config`` into a new run folder (Python API of ``cnnlab train``)."""
    from cnnlab.models import spec_tokens

    if run_dir is not None:
        runs.check_run_dir(run_dir)
    spec_tokens(config.model)  # a misspelt model name fails before any data is loaded
    data = _load_data(config)
    # Build once before making the folder, so a bad model spec leaves no empty run folder.
    input_shape = data.input_shape
    model = _build_model(config, input_shape, len(data.classes))
    _resolve_threads(config, model, input_shape)
    folder = runs.make_run_dir(config.model, config.dataset, run_dir, runs_root)
    write_json(folder / runs.CONFIG_FILE, config.to_dict())
    (folder / runs.METRICS_FILE).touch()
    trainer = Trainer(config, folder, data, Progress(), out=out)
    return trainer.run()


def resume(run: str | Path, overrides: dict | None = None, runs_root: str | None = None,
           out=None) -> TrainResult:
    """Continue the run folder ``run`` from its last checkpoint, to its last epoch."""
    from cnnlab.checkpoint import load_checkpoint

    folder = runs.find_run(str(run), runs_root)
    checkpoint = load_checkpoint(folder / runs.CHECKPOINT_FILE)
    meta = checkpoint.meta
    if "progress" not in meta or "config" not in meta:
        raise CheckpointError(f"{folder / runs.CHECKPOINT_FILE} was not written by cnnlab train; "
                              "it cannot be resumed")
    config = resolve_config(meta["config"], {k: v for k, v in (overrides or {}).items()
                                             if k in RESUME_OVERRIDABLE})
    progress = Progress(**meta["progress"])
    if progress.epochs_done >= config.epochs:
        raise ConfigError(f"run {folder} already finished its {progress.epochs_done} epochs; "
                          "start a new run to train longer")
    data = _load_data(config)
    trainer = Trainer(config, folder, data, progress, wandb_run_id=meta.get("wandb_run_id"),
                      out=out)
    trainer.restore(folder / runs.CHECKPOINT_FILE)
    runs.truncate_metrics(folder / runs.METRICS_FILE, progress.epochs_done, progress.global_step)
    print(f"resuming {folder} at epoch {progress.epochs_done + 1}, step {progress.global_step}",
          file=trainer.out, flush=True)
    return trainer.run()


def print_summary(result: TrainResult, out=None) -> None:
    """The one-screen summary printed at the end of ``cnnlab train``."""
    out = out if out is not None else sys.stdout
    summary, folder = result.summary, result.run_dir
    lines = []
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        lines.append(f"stopped by {name} at epoch {summary['epochs'] + 1}, step "
                     f"{summary['steps']}; checkpoint saved.")
        lines.append(f"  resume:    cnnlab train --resume {folder}")
    else:
        plural = "s" if summary["epochs"] != 1 else ""
        lines.append(f"finished {summary['epochs']} epoch{plural} of {summary['model']} on "
                     f"{summary['dataset']}")
    if summary.get("test_accuracy") is not None:
        lines.append(f"  test accuracy {summary['test_accuracy']:.4f}   test loss "
                     f"{summary['test_loss']:.4f}")
    if summary.get("val_accuracy") is not None:
        lines.append(f"  val accuracy  {summary['val_accuracy']:.4f}   val loss "
                     f"{summary['val_loss']:.4f}")
    rate = summary.get("images_per_second")
    lines.append(f"  train time {summary['train_seconds']:.1f} s"
                 + (f"   {rate:,.0f} images/s" if rate else ""))
    lines.append(f"  run folder {folder}")
    if (folder / runs.CHECKPOINT_FILE).is_file():
        lines.append(f"  evaluate:  cnnlab evaluate {folder / runs.CHECKPOINT_FILE}")
        lines.append(f"  report:    cnnlab report {folder}")
    print("\n".join(lines), file=out, flush=True)


def run_training(overrides: dict, config_file: str | None = None, run_dir: str | None = None,
                 runs_root: str | None = None, resume_run: str | None = None,
                 out=None) -> TrainResult:
    """``cnnlab train``: resolve the config, train (or resume), print the summary."""
    if resume_run is not None:
        given = sorted(name for name, value in overrides.items()
                       if value is not None and name not in RESUME_OVERRIDABLE)
        if config_file is not None or run_dir is not None or given:
            options = ", ".join("--" + name.replace("_", "-") for name in given) or \
                ("--config" if config_file is not None else "--run-dir")
            raise ConfigError(f"{options} cannot be combined with --resume: a resumed run keeps "
                              "its config (only progress, report and wandb options may change)")
        result = resume(resume_run, overrides, runs_root, out=out)
    else:
        file_values = load_config_file(config_file) if config_file is not None else {}
        config = resolve_config(file_values, overrides)
        result = train(config, run_dir, runs_root, out=out)
    print_summary(result, out)
    return result
