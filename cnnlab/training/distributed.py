"""Data parallel training over processes and machines, on PyTorch's torch.distributed.

``torchrun`` starts one process per rank and tells each where it stands through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    torchrun --nproc-per-node 2 -m cnnlab train --model cnn --epochs 1

Every rank builds the same model from the same seed, visits the same seeded permutation of the
training set and takes its own contiguous part of every global batch (:func:`rank_bounds`), so
the ranks together see each image once per epoch. ``--batch-size`` is the global batch, for both
backends: a run on W ranks takes the steps a one-process run takes.

The gradient of the global batch mean is the sum over ranks of each rank's gradient weighted by
its share of the batch, ``g = sum_r (n_r / n) g_r``. The torch backend leaves the sum to
DistributedDataParallel; the NumPy engine runs cnnlab's forward and backward on its shard and
all-reduces the NumPy gradient arrays in place through gloo (``torch.from_numpy`` shares their
memory: nothing is copied).

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import tempfile
from pathlib import Path

import numpy as np

from cnnlab.errors import TrainingError

TIMEOUT_VARIABLE = "CNNLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    supervised: bool = False   # started by torchrun, which forwards Ctrl-C to every rank


    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder, the checkpoints, the report and the console."""
        return self.rank == 0


def world_from_environment(environ=None) -> World:
    """The World that torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
    from cnnlab.errors import ConfigError

    environ = os.environ if environ is None else environ
    try:
        size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start the "
                          "processes with torchrun") from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ConfigError(f"RANK {rank} does not fit WORLD_SIZE {size}; start the processes "
                          "with torchrun")
    return World(rank, size, local_rank, supervised="TORCHELASTIC_RUN_ID" in environ)


def timeout_seconds(environ=None) -> float:
    """How long a rank waits for the others (``CNNLAB_DIST_TIMEOUT``, default 120 s)."""
    from cnnlab.errors import ConfigError

    environ = os.environ if environ is None else environ
    text = environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r} must be a number of seconds > 0")
    return seconds


def rank_bounds(batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part ``[start, stop)`` of a batch of ``batch`` samples.

    Sizes differ by at most one; the ranks' parts are disjoint and cover the batch. A rank's
    part is empty when the batch has fewer samples than there are ranks.
    """
    return round(rank * batch / world_size), round((rank + 1) * batch / world_size)


class Collective:
    """The collective operations a training run needs, over the ranks of ``world``.

    With one rank every operation returns at once and torch is never imported. With several,
    :meth:`join` starts the process group (gloo for CPU tensors, NCCL for CUDA ones). A rank
    that dies, is killed or stops answering for ``timeout`` seconds makes the others raise a
    one-line :class:`TrainingError` instead of waiting for ever.

    Attributes:
        failure_note: appended to that message (the trainer names the last checkpoint).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.failure_note = ""
        self._dist = None

    @property
    def active(self) -> bool:
        return self.world.size > 1

    def join(self) -> None:
        """Join the process group: gloo for CPU tensors and, where CUDA is there, NCCL for
        CUDA tensors (``"cpu:gloo,cuda:nccl"``; NCCL connects only when first used)."""
        if not self.active or self._dist is not None:
            return
        from cnnlab.torch_backend import require_torch

        require_torch("training with several processes (torchrun)")
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            with self._failures("could not meet the other ranks"):
                dist.init_process_group(backend,
                                        timeout=datetime.timedelta(seconds=timeout_seconds()))
        self._dist = dist

    def finish(self) -> None:
        """Wait for every rank at the end of a run that went well: a rank that tears down
        its process group while another still finishes its last step can abort inside gloo
        ("terminate called without an active exception")."""
        if self._dist is not None and self._dist.is_initialized():
            with self._failures("lost the other ranks at the end of the run"):
                self._dist.barrier()

    def close(self) -> None:
        if self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()
        self._dist = None

    @contextlib.contextmanager
    def _failures(self, what: str):
        """Any error of a collective becomes one line naming the likely cause and the fix."""
        try:
            yield
        except (RuntimeError, ValueError, OSError) as error:
            detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else \
                type(error).__name__
            raise TrainingError(
                f"rank {self.world.rank} of {self.world.size} {what}: another rank died, was "
                f"killed or did not answer within {timeout_seconds():g} s ({TIMEOUT_VARIABLE}) "
                f"[{detail}]" + (f"; {self.failure_note}" if self.failure_note else "")
            ) from None

    # ---------------------------------------------------------------- operations

    def sum_(self, arrays) -> None:
        """Replace each array (NumPy, or a torch tensor) by its sum over the ranks, in place.

        NumPy arrays are shared with torch through ``torch.from_numpy`` (no copy); they must be
        C-contiguous. The reductions are started together and then waited for.
        """
        if not self.active:
            return
        import torch

        tensors = [torch.from_numpy(array) if isinstance(array, np.ndarray) else array
                   for array in arrays]
        with self._failures("lost the other ranks while summing gradients"):
            handles = [self._dist.all_reduce(tensor, async_op=True) for tensor in tensors]
            for handle in handles:
                handle.wait()

    def sum_values(self, *values: float) -> np.ndarray:
        """The sums over the ranks of a few numbers (float64)."""
        totals = np.array(values, dtype=np.float64)
        self.sum_([totals])
        return totals

    def broadcast_(self, arrays) -> None:
        """Give every rank rank 0's values of ``arrays`` (NumPy arrays or tensors), in place."""
        if not self.active:
            return
        import torch

        with self._failures("lost the other ranks while receiving rank 0's state"):
            for array in arrays:
                if isinstance(array, np.ndarray) and array.ndim == 0:
                    array = array.reshape(1)  # torch.from_numpy of a 0-d array shares memory too
                self._dist.broadcast(torch.from_numpy(array) if isinstance(array, np.ndarray)
                                     else array, src=0)

    def broadcast_bytes(self, payload: bytes | None) -> bytes | None:
        """Rank 0's ``payload`` on every rank (None on rank 0 means it failed: None everywhere).

        Sent as a uint8 tensor, never pickled (``broadcast_object_list`` would unpickle).
        """
        if not self.active:
            return payload
        size = np.array([-1 if payload is None else len(payload)], dtype=np.int64)
        self.broadcast_([size])
        if size[0] < 0:
            return None
        data = (np.frombuffer(payload, dtype=np.uint8).copy() if self.world.is_main
                else np.empty(int(size[0]), dtype=np.uint8))
        if len(data):
            self.broadcast_([data])
        return data.tobytes()

    def broadcast_text(self, text: str | None) -> str | None:
        payload = self.broadcast_bytes(None if text is None else text.encode("utf-8"))
        return None if payload is None else payload.decode("utf-8")

    def broadcast_file(self, path: Path | None, suffix: str = "") -> Path | None:
        """Rank 0's file ``path`` copied into a temporary file on every other rank.

        For machines that do not share rank 0's disk (resuming on several nodes). The caller
        deletes the copy. Rank 0 gets ``path`` back; the others get None when rank 0 could not
        read it (rank 0 then says why, loading it).
        """
        if not self.active:
            return path
        payload = None
        if self.world.is_main and path is not None:
            try:
                payload = path.read_bytes()
            except OSError:
                payload = None   # rank 0 reports it when it loads the file itself
        payload = self.broadcast_bytes(payload)
        if self.world.is_main:
            return path
        if payload is None:
            return None
        handle, name = tempfile.mkstemp(prefix="cnnlab-rank0-", suffix=suffix)
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        return Path(name)
