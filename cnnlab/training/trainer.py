"""The training loop behind ``cnnlab train``: run folders, resume, interruption, metrics.

One step is the lecture's minibatch gradient descent::

    logits = model(x);  loss, dlogits = cross_entropy(logits, y)
    model.backward(dlogits);  optimizer.step()

with the forward and backward split over ``config.threads`` shards of the batch
(cnnlab/backend/parallel.py): one thread and model replica per shard, gradients summed.

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

from cnnlab import backend
from cnnlab.backend.parallel import DataParallel
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, TrainingError
from cnnlab.training import runs
from cnnlab.training.config import TrainConfig, load_config_file, resolve_config, validate_config
from cnnlab.training.distributed import Collective, World, rank_bounds, world_from_environment
from cnnlab.utils.fileio import write_json
from cnnlab.utils.progress import ProgressBar

#: While a run goes on, report.html is redrawn after the first epoch and then at most this
#: often (drawing it takes ~3 s: after every 6 s epoch of the lecture CNN it cost a third of
#: the run). The finished run's report is always written.
REPORT_EVERY_SECONDS = 60.0


def _clock() -> float:
    """Seconds on a monotonic clock (tests replace it)."""
    return time.monotonic()


EVAL_BATCH_SIZE = 256  # larger batches are no faster, and batch 1000 doubles peak memory (conv2 im2col: 226 MB)
# Options a resumed run may change: they do not alter what it computes.
# The device too: a run may go on on another device (or GPU) of the same backend.
RESUME_OVERRIDABLE = {"progress", "report", "wandb", "wandb_project", "wandb_name", "device"}


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

    A second signal raises KeyboardInterrupt at once, for a user who cannot wait; not under
    torchrun (``second_aborts=False``), which passes the terminal's Ctrl-C on as a second
    SIGINT or SIGTERM and kills the ranks itself 30 s later.
    """

    def __init__(self, second_aborts: bool = True):
        self.signum: int | None = None
        self.second_aborts = second_aborts
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            if self.second_aborts:
                raise KeyboardInterrupt
            return
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


def _load_data(config: TrainConfig) -> _Data:
    from cnnlab.data import load_dataset
    from cnnlab.data.augment import parse_augment
    from cnnlab.data.datasets import dataset_options
    from cnnlab.data.images import background_polarity, preprocess_record
    from cnnlab.data.loader import dataset_mean_std, split_validation

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


def _initialize_from(config: TrainConfig, model) -> None:
    """Load ``config.init_from``'s weights into ``model`` (every mismatched key in one error)."""
    from cnnlab.training.checkpoint import check_state_fits, load_weights
    from cnnlab.training.interop import cast_to_model, is_safetensors

    if config.init_from is None:
        return
    # a PyTorch safetensors file names no model: it is taken to be the one being trained
    checkpoint = load_weights(config.init_from,
                              config.model if is_safetensors(config.init_from) else None)
    check_state_fits(model, checkpoint.model_state,
                     f"--init-from {checkpoint.path} (for model '{config.model}')")
    model.load_state_dict(cast_to_model(model, checkpoint.model_state))


def _resolve_threads(config: TrainConfig, model, input_shape) -> None:
    """Fill in ``config.threads`` (None: one per core, enough work per thread; under torchrun
    the cores are shared by the machine's ranks, each with its part of the batch)."""
    import os

    from cnnlab.backend.parallel import threads_for

    if config.threads is None:
        ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        batch_per_rank = max(1, config.batch_size // config.world_size)
        config.threads = max(1, threads_for(model, input_shape, batch_per_rank) // ranks_here)


def _ignore_overflow():
    """A diverging run overflows before its loss is NaN; the loss checks report it instead."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def _attach_dropout_rng(model, generator: np.random.Generator) -> None:
    """Make every random layer (Dropout) draw from ``generator``, whose state we checkpoint."""
    for module in model.modules():
        if isinstance(getattr(module, "rng", None), np.random.Generator):
            module.rng = generator


def build_optimizer(config: TrainConfig, parameters, library=None):
    """``config.optimizer`` over ``parameters``, from ``library``: ``cnnlab.optim`` (default)
    or ``torch.optim``, whose SGD, Adam and AdamW take the same arguments."""
    if library is None:
        import cnnlab.optim as library

    if config.optimizer == "sgd":
        return library.SGD(parameters, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return library.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return library.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int, library=None):
    """The learning-rate scheduler of ``config.schedule``, stepped once per training step.

    With T = epochs * steps_per_epoch steps: "cosine" is ``CosineAnnealingLR(T_max=T)``,
    "linear" decays to 0 with ``LinearLR(1, 0, T)``, "step" multiplies by ``gamma`` every
    ``step_epochs`` epochs (``StepLR``), "constant" is None. ``library`` is ``cnnlab.optim``
    (default) or ``torch.optim.lr_scheduler``: the same classes and arguments.
    """
    if library is None:
        import cnnlab.optim as library
    CosineAnnealingLR, LinearLR, StepLR = library.CosineAnnealingLR, library.LinearLR, library.StepLR

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
    from cnnlab.training.evaluation import evaluate

    result = evaluate(model, images, labels, batch_size=EVAL_BATCH_SIZE,
                      normalization=normalization["kind"], mean=normalization["mean"],
                      std=normalization["std"], threads=threads)
    return result.loss, result.accuracy


# --------------------------------------------------------------------------- the trainer


def _live_writer(config: TrainConfig, run_dir: Path, data: _Data, is_main: bool):
    """RUN/live.js for the open report's live view (cnnlab/viz/explorer/live.py); off with
    --no-report and on ranks other than 0."""
    if not config.report or not is_main:
        return None
    from cnnlab.viz.explorer.live import LiveWriter

    return LiveWriter(run_dir, data.test_images[0], data.normalization, config.epochs)


class _Discard:
    """The console of ranks other than 0: they train quietly."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class Trainer:
    """One training run in one run folder (use :func:`train` or :func:`run_training`).

    The loop, the records, the run folder and the checkpoints are here, for both backends;
    the engine is in a few methods a backend overrides (:class:`TorchTrainer
    <cnnlab.torch_backend.trainer.TorchTrainer>`): ``_build_engine``, ``_forward_backward``,
    ``_apply_step``, ``_evaluate_model``, ``_broadcast_buffers``, ``_checkpoint_parts``,
    ``_restore_engine``. Under torchrun each rank runs one; ``collective`` joins them.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, data: _Data, progress: Progress,
                 wandb_run_id: str | None = None, out=None, collective: Collective | None = None,
                 initial_model=None):
        self.config = config
        self._given_model = initial_model
        self.run_dir = Path(run_dir)
        self.data = data
        self.progress = progress
        self.collective = collective if collective is not None else Collective(World())
        self.world = self.collective.world
        self.is_main = self.world.is_main
        self.out = (out if out is not None else sys.stdout) if self.is_main else _Discard()
        self.input_shape = data.input_shape
        self.num_classes = len(data.classes)
        self._build_engine()
        self.steps_per_epoch = math.ceil(len(data.train_labels) / config.batch_size)
        self.scheduler = self._build_scheduler()
        self._report_written_at: float | None = None  # _clock() of the last report.html
        self.wandb = None
        self.wandb_run_id = wandb_run_id
        self._report_notice_shown = False
        self.metrics = None
        self.live = _live_writer(config, self.run_dir, data, self.is_main)

    # ---------------------------------------------------------------- the NumPy engine

    @classmethod
    def check_engine(cls, config: TrainConfig, world: World) -> None:
        """Raise ConfigError for an engine setting this machine cannot run, before a run
        folder is made (the NumPy engine runs anywhere)."""

    def _initial_model(self):
        """The cnnlab model a run starts from: the seed's weights, or ``--init-from``'s (a
        resumed run restores its own weights later). :func:`train` hands over the one it
        built to check the spec and ``--init-from`` before making the folder."""
        if self._given_model is not None:
            model, self._given_model = self._given_model, None
            return model
        model = _build_model(self.config, self.input_shape, self.num_classes)
        if self.progress.global_step == 0:
            _initialize_from(self.config, model)
        return model

    def _build_engine(self) -> None:
        config = self.config
        self.model = self._initial_model()
        self.dropout_rng = np.random.default_rng([config.seed, 1])
        _attach_dropout_rng(self.model, self.dropout_rng)
        self.optimizer = build_optimizer(config, self.model.parameters())
        _resolve_threads(config, self.model, self.input_shape)  # a run saved without threads
        self.parallel = DataParallel(self.model, config.threads, rng=self.dropout_rng)

    def _build_scheduler(self):
        return build_scheduler(self.config, self.optimizer, self.steps_per_epoch)

    def _epoch_context(self):
        """Held over a training epoch: BLAS at one thread per shard (cnnlab/backend/parallel.py)."""
        return self.parallel.hold_blas()

    def _learning_rate(self) -> float:
        return self.optimizer.lr

    def _forward_backward(self, x: np.ndarray, y: np.ndarray, stop_requested: bool
                          ) -> tuple[float, int, bool]:
        """Forward and backward of this rank's part of the batch; the gradient of the whole
        batch's mean loss summed over the ranks. Returns the batch's mean loss, how many it got
        right, and whether any rank was asked to stop (all over the ranks)."""
        self.optimizer.zero_grad()
        world, batch = self.world, len(y)
        if world.size == 1:
            loss, logits = self.parallel.forward_backward(x, y)
            return loss, int(np.count_nonzero(logits.argmax(axis=1) == y)), stop_requested
        start, stop = rank_bounds(batch, world.rank, world.size)
        if world.rank > 0:
            # ranks other than 0 draw their Dropout masks from (seed, rank, step): no state to
            # checkpoint, and a resumed run draws the same masks
            self.dropout_rng.bit_generator.state = np.random.default_rng(
                [self.config.seed, 1, world.rank, self.progress.global_step]).bit_generator.state
        loss_sum, correct = 0.0, 0
        if stop > start:
            loss, logits = self.parallel.forward_backward(x[start:stop], y[start:stop])
            loss_sum = loss * (stop - start)
            correct = int(np.count_nonzero(logits.argmax(axis=1) == y[start:stop]))
        grads = [parameter.grad for parameter in self.model.parameters()]
        share = (stop - start) / batch   # g = sum_r (n_r / n) g_r; exact for n_r / n = 1/2
        for grad in grads:
            grad *= share
        self.collective.sum_(grads)
        return self._step_totals(loss_sum, correct, batch, stop_requested)

    def _step_totals(self, loss_sum: float, correct: int, batch: int, stop_requested: bool
                     ) -> tuple[float, int, bool]:
        """This rank's loss sum, correct count and stop flag, summed over the ranks: the
        batch's mean loss, its correct count, and whether any rank was asked to stop."""
        if self.world.size == 1:
            return loss_sum / batch, correct, stop_requested
        loss_sum, correct, stops = self.collective.sum_values(loss_sum, correct, stop_requested)
        return loss_sum / batch, int(correct), bool(stops)

    def _apply_step(self) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def _evaluate_model(self, images, labels) -> tuple[float, float]:
        return evaluate_arrays(self.model, images, labels, self.data.normalization,
                               self.config.threads)

    def _broadcast_buffers(self) -> None:
        """Every rank takes rank 0's BatchNorm running statistics (as DDP does)."""
        self.collective.broadcast_([buffer for _, buffer in self.model.named_buffers()])

    def _weights_finite(self) -> bool:
        return all(np.isfinite(parameter.data).all() for parameter in self.model.parameters())

    def _parameter_count(self) -> int:
        return int(sum(p.data.size for p in self.model.parameters()))

    def _checkpoint_parts(self):
        """The model and optimizer to save: anything with cnnlab's ``state_dict()``."""
        return self.model, self.optimizer

    def _restore_engine(self, checkpoint) -> None:
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

    def _close_engine(self) -> None:
        self.parallel.close()

    def _evaluate(self, images, labels) -> tuple[float, float]:
        """Mean loss and accuracy over ``images``, each rank evaluating its part."""
        world, count = self.world, len(labels)
        if world.size == 1:
            return self._evaluate_model(images, labels)
        start, stop = rank_bounds(count, world.rank, world.size)
        loss_sum = correct = 0.0
        if stop > start:
            loss, accuracy = self._evaluate_model(images[start:stop], labels[start:stop])
            loss_sum, correct = loss * (stop - start), round(accuracy * (stop - start))
        loss_sum, correct = self.collective.sum_values(loss_sum, correct)
        return float(loss_sum / count), float(correct / count)

    # ---------------------------------------------------------------- checkpoints

    def _meta(self) -> dict:
        rng_state = getattr(self, "dropout_rng", None)
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
            "rng_state": rng_state.bit_generator.state if rng_state is not None else None,
            "progress": dataclasses.asdict(self.progress),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "wandb_run_id": self.wandb_run_id,
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes checkpoint.npz (atomically: a killed run leaves the last one whole)."""
        from cnnlab.training.checkpoint import save_checkpoint

        if not self._weights_finite():
            raise TrainingError(
                f"the weights became NaN or infinite at epoch {self.progress.epochs_done + 1}, "
                f"step {self.progress.global_step}; lower the learning rate (--lr "
                f"{self.config.lr / 10:g}); {self._checkpoint_note()}")
        if not self.is_main:
            return
        model, optimizer = self._checkpoint_parts()
        save_checkpoint(self.run_dir / runs.CHECKPOINT_FILE, model, optimizer, meta=self._meta())

    def restore(self, path: Path) -> None:
        """Load weights, optimizer state, gradients and dropout rng state from a checkpoint."""
        from cnnlab.training.checkpoint import load_checkpoint

        self._restore_engine(load_checkpoint(path))

    def _stop_now(self, agreed: bool, stop: _StopSignals) -> bool:
        """Whether a signal stops the run here. Alone: as soon as one came. Under torchrun:
        only what the ranks agreed on in the last step's sum (``agreed``), since a signal can
        reach one rank after that sum and the other before it; each rank stopping on its own
        flag would leave the other waiting in the next step's all-reduce."""
        return agreed if self.world.size > 1 else stop.signum is not None

    def _kernels_summary(self) -> dict:
        """What ran the steps: the kernel level of each family and the threads per step."""
        return {**backend.summary(), "threads": self.parallel.threads}

    def _explained_model(self):
        """The model as cnnlab layers, for the live view (the torch backend converts its own)."""
        return self.model

    def _write_live(self, status: str = "running") -> None:
        if self.live is not None:
            self.live.write(self._explained_model(), status=status)

    def _stop_live(self, status: str, reason: str) -> None:
        """The live view's last state of a run that did not finish (never raises)."""
        if self.live is not None:
            try:
                model = self._explained_model()
            except Exception:   # noqa: BLE001 - the run's own error is the one to report
                model = self.model
            self.live.stop(model, status, reason)

    def _stopped_reason(self, signum: int | None) -> str:
        name = signal.Signals(signum).name if signum is not None else "a signal"
        launcher = "torchrun ... -m cnnlab" if self.world.size > 1 else "cnnlab"
        return (f"stopped by {name} at epoch {self.progress.epochs_done + 1}, step "
                f"{self.progress.global_step}; the checkpoint is saved: continue with "
                f"{launcher} train --resume {self.run_dir}")

    def _write_summary(self, summary: dict) -> None:
        if self.is_main:
            write_json(self.run_dir / runs.SUMMARY_FILE, summary)

    def _checkpoint_note(self) -> str:
        path = self.run_dir / runs.CHECKPOINT_FILE
        if path.is_file():
            return f"the last good checkpoint is {path}"
        return "no checkpoint was saved (it failed in the first epoch)"

    # ---------------------------------------------------------------- records

    def _record(self, record: dict) -> None:
        if self.metrics is None:   # ranks other than 0
            return
        if self.live is not None:   # first: on its first use it reads the records so far
            self.live.add(record)
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
            "parameters": self._parameter_count(),
            "seed": self.config.seed,
            "backend": self.config.backend,
            "world_size": self.world.size,
            "finished": finished,
            "versions": runs.versions(),
            "kernels": self._kernels_summary(),
            "wandb_run_id": self.wandb_run_id,
        }
        return {key: value for key, value in summary.items()
                if value is not None or key in ("test_accuracy", "test_loss")}

    def _report_possible(self) -> bool:
        if not self.config.report or not self.is_main:
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
        """Rewrite report.html (a browser left open on it follows the run through live.js).

        It is drawn here, between epochs, costing about 3 s each time (`--no-report` skips it):
        after the first epoch, then at most every REPORT_EVERY_SECONDS, and at the end. Drawing
        it in another process while training goes on was measured slower: on two cores it
        competes with the training threads and costs the epoch more than drawing it here.
        """
        if not self._report_possible():
            return
        self._report_written_at = _clock()
        from cnnlab.viz.report import write_report

        try:
            write_report(self.run_dir)
        except CnnlabError as error:
            print(f"cnnlab: report.html not written: {error}", file=sys.stderr)

    # ---------------------------------------------------------------- the loop

    def _train_epoch(self, epoch: int, stop: _StopSignals) -> bool:
        """Run the rest of ``epoch``; False if a signal stopped it (after saving a checkpoint)."""
        from cnnlab.data.loader import epoch_order, iterate_batches
        config, progress, data = self.config, self.progress, self.data
        order = epoch_order(len(data.train_labels), config.seed, epoch)
        batches = iterate_batches(data.train_images, data.train_labels, config.batch_size,
                                  order=order, normalization=config.normalization,
                                  mean=data.normalization["mean"], std=data.normalization["std"],
                                  start_batch=progress.batch_in_epoch, reuse_buffer=True,
                                  augment=data.augment, augment_seed=(config.seed, epoch))
        bar = ProgressBar(len(data.train_labels), f"epoch {epoch}/{config.epochs}", unit="img",
                          enabled=config.progress and self.is_main)
        if progress.batch_in_epoch:
            bar.update(min(progress.batch_in_epoch * config.batch_size, len(data.train_labels)))
        self.model.train()
        started = window_start = time.perf_counter()
        stopped = False
        contexts = contextlib.ExitStack()
        try:
            contexts.enter_context(_ignore_overflow())
            # BLAS stays at one thread per shard for the whole epoch (cnnlab/backend/parallel.py)
            contexts.enter_context(self._epoch_context())
            for x, y in batches:
                lr = self._learning_rate()
                # forward, loss and backward (over config.threads shards and the ranks)
                loss, correct, stopping = self._forward_backward(x, y, stop.signum is not None)
                if stopping and stop.signum is None:   # another rank was stopped
                    stop.signum = signal.SIGTERM
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss} at epoch {epoch}, step "
                        f"{progress.global_step + 1} (learning rate {lr:.3g}); lower the "
                        f"learning rate, e.g. --lr {config.lr / 10:g}; {self._checkpoint_note()}")
                self._apply_step()
                batch = len(y)
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
                if self.live is not None and self.live.due():
                    self._write_live()
                if self._stop_now(stopping, stop):
                    stopped = True
                    break
        finally:
            contexts.close()
            bar.close()
            progress.train_seconds += time.perf_counter() - started
        if stopped or self._stop_now(False, stop):
            self.save_checkpoint()
            return False
        self._finish_epoch(epoch, time.perf_counter() - started)
        return True

    def _finish_epoch(self, epoch: int, seconds: float) -> None:
        progress, data = self.progress, self.data
        record = {"kind": "epoch", "epoch": epoch, "step": progress.global_step,
                  "train_loss": progress.epoch_loss_sum / progress.epoch_seen,
                  "train_accuracy": progress.epoch_correct / progress.epoch_seen}
        self._broadcast_buffers()
        with _ignore_overflow():  # overflowed weights give a non-finite test loss, reported below
            record["test_loss"], record["test_accuracy"] = self._evaluate(
                data.test_images, data.test_labels)
            if data.val_images is not None:
                record["val_loss"], record["val_accuracy"] = self._evaluate(
                    data.val_images, data.val_labels)
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
        self._write_summary(self.summary(finished=False))
        self._write_live()
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
        from cnnlab.training.wandb_log import WandbLogger

        config = self.config
        self.collective.failure_note = (
            f"the last checkpoint ({self.run_dir / runs.CHECKPOINT_FILE}) is whole: continue with "
            f"torchrun ... -m cnnlab train --resume {self.run_dir}")
        if self.is_main:
            self.metrics = runs.MetricsWriter(self.run_dir / runs.METRICS_FILE)
        if config.wandb and self.is_main:
            self.wandb = WandbLogger(config.to_dict(), self.run_dir, config.wandb_project,
                                     config.wandb_name or self.run_dir.name, self.wandb_run_id)
            self.wandb_run_id = self.wandb.run_id
        exit_code = 1
        try:
            with _StopSignals(second_aborts=not self.world.supervised) as stop:
                for epoch in range(self.progress.epochs_done + 1, config.epochs + 1):
                    if self._stop_now(False, stop) or not self._train_epoch(epoch, stop):
                        result = TrainResult(self.run_dir, self.summary(finished=False), stop.signum)
                        self._write_summary(result.summary)
                        self._stop_live("interrupted", self._stopped_reason(stop.signum))
                        exit_code = result.exit_code
                        return result
            summary = self.summary(finished=True)
            self._write_summary(summary)
            self._write_live(status="finished")
            self._write_report()
            exit_code = 0
            return TrainResult(self.run_dir, summary)
        except TrainingError as error:
            self._write_summary(self.summary(finished=False))
            self._stop_live("failed", str(error))
            raise
        except KeyboardInterrupt:   # a second Ctrl-C: stopped at once, without a checkpoint
            self._stop_live("interrupted", f"stopped at once by a second Ctrl-C at step "
                            f"{self.progress.global_step}; {self._checkpoint_note()}")
            raise
        except BaseException as error:
            self._stop_live("failed", f"{type(error).__name__}: {error}" if str(error)
                            else type(error).__name__)
            raise
        finally:
            self._close_engine()
            if self.metrics is not None:
                self.metrics.close()
            if self.wandb is not None:
                self.wandb.finish(exit_code)


# --------------------------------------------------------------------------- entry points


def trainer_class(config: TrainConfig) -> type:
    """The Trainer of ``config.backend`` (the torch backend is imported only when chosen)."""
    if config.backend == "torch":
        from cnnlab.torch_backend import require_torch

        require_torch()
        from cnnlab.torch_backend.trainer import TorchTrainer

        return TorchTrainer
    return Trainer


def _on_main_rank(collective: Collective, make_text):
    """``make_text()`` run on rank 0 alone, its result given to every rank.

    If it fails on rank 0, the error is raised there and the other ranks stop with a line
    pointing to rank 0's message (instead of waiting for a rank that has given up).
    """
    if collective.world.is_main:
        try:
            text = make_text()
        except BaseException:
            collective.broadcast_text(None)
            raise
        return collective.broadcast_text(text)
    text = collective.broadcast_text(None)
    if text is None:
        raise TrainingError(f"rank {collective.world.rank}: rank 0 could not start the run; "
                            "its message says why")
    return text


def train(config: TrainConfig, run_dir: str | Path | None = None, runs_root: str | None = None,
          out=None, collective: Collective | None = None) -> TrainResult:
    """Train ``config`` into a new run folder (Python API of ``cnnlab train``).

    Under torchrun (``collective`` over several ranks) rank 0 makes the run folder and writes
    it; every rank trains.
    """
    from cnnlab.models import spec_tokens

    collective = collective if collective is not None else Collective(World())
    config.world_size = collective.world.size
    validate_config(config)
    engine = trainer_class(config)
    engine.check_engine(config, collective.world)
    if run_dir is not None and collective.world.is_main:
        runs.check_run_dir(run_dir)
    spec_tokens(config.model)  # a misspelt model name fails before any data is loaded
    data = _load_data(config)
    # Build once before making the folder, so a bad model spec leaves no empty run folder.
    input_shape = data.input_shape
    model = _build_model(config, input_shape, len(data.classes))
    _initialize_from(config, model)  # weights that do not fit fail before the folder is made
    if config.backend == "numpy":
        _resolve_threads(config, model, input_shape)

    def make_folder() -> str:
        folder = runs.make_run_dir(config.model, config.dataset, run_dir, runs_root)
        write_json(folder / runs.CONFIG_FILE, config.to_dict())
        (folder / runs.METRICS_FILE).touch()
        return str(folder)

    folder = Path(_on_main_rank(collective, make_folder))
    trainer = engine(config, folder, data, Progress(), out=out, collective=collective,
                     initial_model=model)
    return trainer.run()


def resume(run: str | Path, overrides: dict | None = None, runs_root: str | None = None,
           out=None, collective: Collective | None = None) -> TrainResult:
    """Continue the run folder ``run`` from its last checkpoint, to its last epoch.

    Under torchrun rank 0 reads the run folder and sends its checkpoint to the other ranks,
    so machines that do not share rank 0's disk can resume too. The number of ranks may
    differ from the run's: ``--batch-size`` is the global batch.
    """
    from cnnlab.training.checkpoint import load_checkpoint

    collective = collective if collective is not None else Collective(World())
    world = collective.world
    folder = Path(_on_main_rank(collective, lambda: str(runs.find_run(str(run), runs_root))))
    copy = collective.broadcast_file(folder / runs.CHECKPOINT_FILE if world.is_main else None,
                                     suffix=".npz")
    if copy is None:
        raise TrainingError(f"rank {world.rank}: rank 0 could not read "
                            f"{folder / runs.CHECKPOINT_FILE}")
    try:
        checkpoint = load_checkpoint(copy)
        meta = checkpoint.meta
        if "progress" not in meta or "config" not in meta:
            raise CheckpointError(f"{folder / runs.CHECKPOINT_FILE} was not written by cnnlab "
                                  "train; it cannot be resumed")
        config = resolve_config(meta["config"], {k: v for k, v in (overrides or {}).items()
                                                 if k in RESUME_OVERRIDABLE})
        config.world_size = world.size
        validate_config(config)
        progress = Progress(**meta["progress"])
        if progress.epochs_done >= config.epochs:
            raise ConfigError(f"run {folder} already finished its {progress.epochs_done} epochs; "
                              "start a new run to train longer")
        engine = trainer_class(config)
        engine.check_engine(config, world)
        data = _load_data(config)
        trainer = engine(config, folder, data, progress, wandb_run_id=meta.get("wandb_run_id"),
                         out=out, collective=collective)
        trainer.restore(copy)
    finally:
        if copy != folder / runs.CHECKPOINT_FILE:
            copy.unlink(missing_ok=True)
    if world.is_main:
        runs.truncate_metrics(folder / runs.METRICS_FILE, progress.epochs_done,
                              progress.global_step)
        if meta["config"].get("world_size", 1) != world.size:
            print(f"cnnlab: the run was trained on {meta['config'].get('world_size', 1)} "
                  f"process(es) and goes on on {world.size}: the same global batch, the same "
                  "steps", file=trainer.out, flush=True)
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
        launcher = "torchrun ... -m cnnlab" if summary.get("world_size", 1) > 1 else "cnnlab"
        lines.append(f"  resume:    {launcher} train --resume {folder}")
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
    """``cnnlab train``: resolve the config, train (or resume), print the summary.

    Started by torchrun, every rank runs this; they meet in torch.distributed first.
    """
    collective = Collective(world_from_environment())
    try:
        collective.join()
        result = _train_or_resume(overrides, config_file, run_dir, runs_root, resume_run, out,
                                  collective)
        collective.finish()
    finally:
        collective.close()
    if collective.world.is_main:
        print_summary(result, out)
    return result


def _train_or_resume(overrides, config_file, run_dir, runs_root, resume_run, out,
                     collective) -> TrainResult:
    if resume_run is not None:
        given = sorted(name for name, value in overrides.items()
                       if value is not None and name not in RESUME_OVERRIDABLE)
        if config_file is not None or run_dir is not None or given:
            options = ", ".join("--" + name.replace("_", "-") for name in given) or \
                ("--config" if config_file is not None else "--run-dir")
            raise ConfigError(f"{options} cannot be combined with --resume: a resumed run keeps "
                              "its config (only progress, report and wandb options may change)")
        return resume(resume_run, overrides, runs_root, out=out, collective=collective)
    file_values = load_config_file(config_file) if config_file is not None else {}
    config = resolve_config(file_values, overrides)
    return train(config, run_dir, runs_root, out=out, collective=collective)
