"""The torch backend's Trainer: cnnlab's training loop with a torch.nn model and torch.optim.

Everything but the engine is :class:`cnnlab.training.trainer.Trainer`'s: the seeded data order, the
batches (NumPy arrays, moved to the device), the records, the run folder, the checkpoints, the
report, Ctrl-C and ``--resume``. The model starts from the NumPy engine's initial weights for
the same seed, so the two backends train the same network from the same point.

Under torchrun the module is wrapped in ``DistributedDataParallel`` (NCCL on CUDA, gloo on the
CPU). Each rank runs its part of every global batch; the loss it differentiates is its mean
loss times ``W n_r / n``, so DDP's average over the W ranks is the gradient of the global
batch's mean loss, ``sum_r (n_r / n) g_r``, also when the ranks' parts differ in size.
"""

from __future__ import annotations

import contextlib

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.torch_backend import select_device
from cnnlab.torch_backend.modules import NumpyView, build_torch_model, load_numpy_state
from cnnlab.torch_backend.optim import load_numpy_optimizer_state, optimizer_state_to_numpy
from cnnlab.training.distributed import rank_bounds
from cnnlab.training.trainer import Trainer, _build_model, build_optimizer, build_scheduler


class _OptimizerView:
    """What ``save_checkpoint`` reads of an optimizer: its state in cnnlab's layout."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        return optimizer_state_to_numpy(self.optimizer)


def dropout_seed(seed: int, rank: int, step: int) -> int:
    """The seed of torch's generator for the Dropout masks of one step on one rank.

    Drawn afresh from (seed, rank, step) every step, so a resumed run draws the masks an
    uninterrupted one draws, with no generator state to checkpoint.
    """
    return int(np.random.SeedSequence([seed, 1, rank, step]).generate_state(1, np.uint64)[0])


class TorchTrainer(Trainer):
    """:class:`cnnlab.training.trainer.Trainer` on PyTorch (``cnnlab train --backend torch``)."""

    @classmethod
    def check_engine(cls, config, world) -> None:
        device, _ = select_device(config.device, world.local_rank)
        if world.size > 1 and device.type == "mps":
            raise ConfigError("torch.distributed has no backend for Apple's MPS; under "
                              "torchrun use --device cpu (or CUDA GPUs)")

    def _build_engine(self) -> None:
        import torch

        config, world = self.config, self.world
        self.device, line = select_device(config.device, world.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)   # NCCL and DDP use the current device
        elif config.threads is not None:
            torch.set_num_threads(config.threads)
        # the NumPy engine's initial weights (the seed's, or --init-from's): one starting point
        initial = self._initial_model().state_dict()
        self.module = build_torch_model(config.model, self.input_shape, self.num_classes,
                                        initial).to(self.device)
        self.model = NumpyView(self.module, self.device)
        self.network = self.module
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.network = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = build_optimizer(config, self.module.parameters(), torch.optim)
        self._has_dropout = any(isinstance(layer, torch.nn.Dropout) for layer in self.module)
        print(f"cnnlab: {line}" + (f", {world.size} processes" if world.size > 1 else ""),
              file=self.out, flush=True)

    def _build_scheduler(self):
        import torch

        return build_scheduler(self.config, self.optimizer, self.steps_per_epoch,
                               torch.optim.lr_scheduler)

    def _epoch_context(self):
        return contextlib.nullcontext()

    def _learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _forward_backward(self, x: np.ndarray, y: np.ndarray, stop_requested: bool
                          ) -> tuple[float, int, bool]:
        import torch
        import torch.nn.functional as F

        world, batch = self.world, len(y)
        start, stop = rank_bounds(batch, world.rank, world.size)
        count = stop - start
        self.optimizer.zero_grad()
        if self._has_dropout:
            torch.manual_seed(dropout_seed(self.config.seed, world.rank, self.progress.global_step))
        # x is the loader's reused buffer: copied before the next batch overwrites it
        inputs = torch.from_numpy(x[start:stop]).to(self.device)
        labels = torch.from_numpy(y[start:stop]).to(self.device)
        logits = self.network(inputs)
        if count:
            loss = F.cross_entropy(logits, labels)
            scale = world.size * count / batch   # DDP divides the ranks' sum by W
            (loss * scale if world.size > 1 else loss).backward()
            loss_sum = loss.item() * count
            correct = int((logits.argmax(dim=1) == labels).sum().item())
        else:   # an empty part still takes part in DDP's gradient all-reduce
            (logits.sum() * 0.0).backward()
            loss_sum, correct = 0.0, 0
        return self._step_totals(loss_sum, correct, batch, stop_requested)

    def _evaluate_model(self, images, labels) -> tuple[float, float]:
        from cnnlab.training.trainer import evaluate_arrays

        return evaluate_arrays(self.model, images, labels, self.data.normalization, threads=1)

    def _broadcast_buffers(self) -> None:
        self.collective.broadcast_(list(self.module.buffers()))

    def _weights_finite(self) -> bool:
        import torch

        return all(bool(torch.isfinite(parameter).all()) for parameter in self.module.parameters())

    def _parameter_count(self) -> int:
        return int(sum(parameter.numel() for parameter in self.module.parameters()))

    def _checkpoint_parts(self):
        return self.model, _OptimizerView(self.optimizer)

    def _restore_engine(self, checkpoint) -> None:
        import torch

        load_numpy_state(self.module, checkpoint.model_state)
        if checkpoint.optimizer_state is not None:
            load_numpy_optimizer_state(self.optimizer, checkpoint.optimizer_state)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint.meta["scheduler"])
        for name, parameter in self.module.named_parameters():
            if name in checkpoint.grads:
                parameter.grad = torch.from_numpy(
                    np.array(checkpoint.grads[name], dtype=np.float32)).to(self.device)

    def _kernels_summary(self) -> dict:
        import torch

        return {"device": str(self.device), "threads": torch.get_num_threads()}

    def _explained_model(self):
        """The live view draws cnnlab layers: the module's weights in a cnnlab model."""
        model = _build_model(self.config, self.input_shape, self.num_classes)
        model.load_state_dict(self.model.state_dict())
        return model

    def _close_engine(self) -> None:
        pass
