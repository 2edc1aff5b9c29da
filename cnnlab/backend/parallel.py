"""Data-parallel training steps: each batch split across threads, one model replica per thread.

A training step is a chain of ops, and most of them (im2col, pooling, ReLU, the loss) are
NumPy loops that run on one core; BLAS's own threads help only inside each matrix
product, and they spin between products, in the way of everything else. Splitting the
batch instead keeps every core busy for the whole step:

1. shard k of the batch goes to thread k, which runs forward, loss and backward of its
   own replica of the model, with single-threaded BLAS;
2. the loss is a mean over the batch, L = sum_k (N_k / N) L_k, so each shard's dlogits
   is scaled by N_k / N and the replicas' gradients simply add up;
3. the optimizer then steps the one set of parameters all replicas share.

As in ``torch.nn.DataParallel``: BatchNorm normalises each shard with that shard's
statistics, and the running statistics are those of shard 0 (the model itself); other
replicas keep private copies that nothing reads. Dropout in shard k > 0 draws its masks
from a generator seeded, step by step, from the model's own, so a run is reproducible. The step
equals the single-thread step up to float rounding (the same sums, in another order)
for models without BatchNorm and Dropout; for the same seed and thread count, the
result is the same every time.

How many shards run *at once* is the thread policy's (cnnlab/backend/threads.py): the cores
free now. With one free core the shards run one after the other on the calling thread,
with the same bits, so a busy machine never makes a step slower than one thread would.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from cnnlab.backend import blas, gemm, threads as thread_policy, workspace
from cnnlab.ops.loss import cross_entropy

#: Fewer images than this per thread and BatchNorm's per-shard statistics get noisy.
MIN_SHARD = 32
#: Forward FLOPs a shard must have to pay for its thread: the mlp (0.8 MFLOP per image) at
#: batch 128 took 3.3 ms per step on two threads against 2.8 ms on one, while the cnn
#: (7.7 MFLOP per image) at batch 128 took 28 ms against 47 ms.
MIN_SHARD_FLOPS = 200e6


def default_threads(batch_size: int, flops_per_image: float | None = None) -> int:
    """One thread per CPU core, but at least ``MIN_SHARD`` images and (when the model's
    forward FLOPs per image are given) ``MIN_SHARD_FLOPS`` of work per thread."""
    cores = thread_policy.affinity_cores()
    shards = batch_size // MIN_SHARD
    if flops_per_image:
        shards = min(shards, int(batch_size * flops_per_image // MIN_SHARD_FLOPS))
    return max(1, min(cores or 1, shards))


def threads_for(model, input_shape, batch_size: int) -> int:
    """:func:`default_threads` for ``model`` on inputs of ``input_shape`` (one image),
    its forward FLOPs counted by ``cnnlab.models.summary``."""
    from cnnlab.models.summary import summarize, totals

    return default_threads(batch_size, totals(summarize(model, input_shape))["flops"])


def shard_bounds(batch: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ranges covering ``range(batch)``, sizes differing by at most 1."""
    shards = max(1, min(shards, batch))
    edges = [round(index * batch / shards) for index in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def in_step() -> bool:
    """True inside a data-parallel call (on its calling thread or a shard's)."""
    return gemm.in_one_thread_region() or getattr(_local, "stepping", False)


def shards_for_call(model, x: np.ndarray) -> int:
    """How many shards a plain ``model(x)`` runs over (1: the plain single call).

    The same split as ``cnnlab train`` for models whose shards compute what one call computes
    (up to float rounding): none inside a shard, and in training mode none for models with
    buffers (BatchNorm's batch statistics) or random layers (Dropout's masks).
    """
    if in_step() or x.ndim < 2 or len(x) < 2 * MIN_SHARD:
        return 1
    if model.training and (model.named_buffers() or _random_layers(model)):
        return 1
    flops = _flops_per_image(model, tuple(x.shape[1:]))
    return default_threads(len(x), flops) if flops else 1


_FLOPS: dict = {}
_local = threading.local()  # .stepping: inside a DataParallel call on this thread


def _flops_per_image(model, image_shape: tuple) -> float | None:
    """The forward FLOPs of one image (cnnlab.models.summary), cached per model structure and
    shape."""
    key = (repr(model), image_shape)
    if key not in _FLOPS:
        from cnnlab.errors import CnnlabError
        from cnnlab.models.summary import summarize, totals

        try:
            _FLOPS[key] = totals(summarize(model, image_shape))["flops"]
        except (CnnlabError, ValueError, TypeError):
            _FLOPS[key] = None  # shapes that do not fit: the plain call reports the error
    return _FLOPS[key]


def replicate(model):
    """A copy of ``model`` that shares its parameter arrays but has its own gradients,
    buffers and caches (what a forward/backward on another thread needs)."""
    memo = {id(parameter.data): parameter.data for parameter in model.parameters()}
    for module in model.modules():
        for cached in module.cached():
            memo[id(cached)] = None  # not worth copying: the next forward replaces it
    replica = copy.deepcopy(model, memo)
    replica.clear_cache()
    for parameter in replica.parameters():
        parameter.grad = np.zeros_like(parameter.data)
    return replica


def _random_layers(model) -> list:
    return [module for module in model.modules()
            if isinstance(getattr(module, "rng", None), np.random.Generator)]


class DataParallel:
    """Runs the forward and backward of a training step over ``threads`` shards of each batch.

    Args:
        model: the model to train; it is shard 0's replica, and its parameters' ``.grad``
            receive the gradient of the whole batch.
        threads: number of shards (and threads). 1 runs the plain single-thread step.
        rng (np.random.Generator): seeds the Dropout masks of shards 1, 2, ... (one draw
            per shard and step; shard 0 is the model, whose layers draw as usual).
            Default: the generator of the model's first Dropout layer.

    While it is open, the workspace pool keeps a buffer of each shape per shard; :meth:`close`
    (or garbage collection) lowers that limit again. (``cnnlab train`` also tunes glibc's
    malloc for its process, :func:`cnnlab.backend.workspace.keep_freed_memory`; the class
    does not.)

    Example::

        parallel = DataParallel(model, threads=2)
        optimizer.zero_grad()
        loss, logits = parallel.forward_backward(x, y)   # mean cross-entropy, (N, C)
        optimizer.step()
    """

    def __init__(self, model, threads: int, rng: np.random.Generator | None = None) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        self.model = model
        self.threads = threads
        random_layers = _random_layers(model)
        self.rng = rng if rng is not None or not random_layers else random_layers[0].rng
        self._replicas: list = [model]
        self._pool: ThreadPoolExecutor | None = None
        # Each shard borrows its own scratch buffers of each shape; keep them all pooled.
        self._reservation = workspace.keep_per_key(2 * threads)
        self._finalizer = weakref.finalize(self, self._reservation.release)
        self._last_forward: tuple | None = None
        self._blas_limit: contextlib.ExitStack | None = None
        self._blas_threads: int | None = None
        self._holding = False

    @contextlib.contextmanager
    def hold_blas(self):
        """Keep BLAS's thread limit over many steps (a training epoch) instead of switching
        it at every step, which costs more than a small step."""
        self._holding = True
        try:
            yield self
        finally:
            self._holding = False
            self._release_blas()

    def _limit_blas(self, threads: int) -> None:
        if self._blas_threads == threads:
            return
        self._release_blas()
        self._blas_limit = contextlib.ExitStack()
        self._blas_limit.enter_context(blas.limit(threads))
        self._blas_threads = threads

    def _release_blas(self) -> None:
        if self._blas_limit is not None:
            self._blas_limit.close()
            self._blas_limit, self._blas_threads = None, None

    @contextlib.contextmanager
    def _step(self, shards: int):
        """BLAS at one thread per shard (or the free cores for a single shard) during a step;
        yields how many shards run at once."""
        workers = thread_policy.workers(limit=shards) if shards > 1 else 1
        self._limit_blas(1 if shards > 1 else thread_policy.workers())
        outer, _local.stepping = getattr(_local, "stepping", False), True  # no shards in shards
        try:
            yield workers
        finally:
            _local.stepping = outer
            if not self._holding:
                self._release_blas()

    def _run_shards(self, function, work: list, workers: int) -> list:
        """``function(*args, errors)`` for each args in ``work``, in that order: shards k,
        k + workers, ... on worker k, worker 0 being this thread (one worker: all here)."""
        errors = np.geterr()  # np.errstate is per thread: the shards follow the caller's settings.
        groups = [work[first::workers] for first in range(workers)]
        if workers > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="cnnlab-shard")
        futures = [self._pool.submit(_run_group, function, group, errors) for group in groups[1:]]
        try:
            own = _run_group(function, groups[0], errors)
        finally:
            # Every shard finishes before anything is raised or reduced.
            wait(futures)
        results = [own] + [future.result() for future in futures]
        return [results[index % workers][index // workers] for index in range(len(work))]

    def _replicas_for(self, shards: int) -> list:
        parameters = self.model.parameters()
        # A replica built before parameters were swapped for new arrays would train stale ones.
        if len(self._replicas) > 1 and any(
                ours.data is not theirs.data
                for ours, theirs in zip(parameters, self._replicas[1].parameters())):
            self._replicas = [self.model]
        while len(self._replicas) < shards:
            self._replicas.append(replicate(self.model))
        # Each module's mode and input-gradient flag as the model's own; set only where they
        # differ (the setters walk the model: ~60 us a step for the lecture CNN).
        for replica in self._replicas[1:]:
            for ours, theirs in zip(self.model.modules(), replica.modules()):
                if theirs.training != ours.training:
                    theirs.training = ours.training
                if theirs.requires_input_grad != ours.requires_input_grad:
                    theirs.requires_input_grad = ours.requires_input_grad
        return self._replicas[:shards]

    def forward_backward(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy of the batch and its logits; adds the batch's gradient into
        the model's ``.grad`` (as ``model.backward`` does)."""
        bounds = shard_bounds(len(x), self.threads)
        if len(bounds) == 1:
            with self._step(1):
                return _shard_step(self.model, x, y, 1.0)
        replicas = self._replicas_for(len(bounds))
        self._seed_random_layers(replicas)
        weights = [(stop - start) / len(x) for start, stop in bounds]
        work = [(replica, x[start:stop], y[start:stop], weight)
                for replica, (start, stop), weight in zip(replicas, bounds, weights)]
        with self._step(len(bounds)) as workers:
            results = self._run_shards(_shard_step, work, workers)
        self._reduce_gradients(replicas)
        loss = sum(shard_loss * weight for (shard_loss, _), weight in zip(results, weights))
        return loss, np.concatenate([logits for _, logits in results])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's output for ``x``, each shard on its own thread (inference: no backward).

        In eval mode the replicas first take the model's BatchNorm running statistics, so
        every shard computes what ``model(x)`` computes (up to float rounding in the GEMMs).
        """
        bounds = shard_bounds(len(x), self.threads)
        if len(bounds) == 1:
            with self._step(1):
                return self.model(x)
        replicas = self._replicas_for(len(bounds))
        if not self.model.training:
            for replica in replicas[1:]:
                for (_, ours), (_, theirs) in zip(self.model.named_buffers(), replica.named_buffers()):
                    np.copyto(theirs, ours)
        with self._step(len(bounds)) as workers:
            outputs = self._run_shards(_shard_forward, [(replica, x[start:stop]) for replica, (start, stop)
                                                         in zip(replicas, bounds)], workers)
        self._last_forward = (bounds, replicas)
        return np.concatenate(outputs)

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """The backward of the last :meth:`forward` (in training mode), shard by shard: adds the
        whole batch's gradient into the model's ``.grad``; returns dx, or None where the model
        returns None (no input gradient wanted)."""
        bounds, replicas = self._last_forward
        if len(dy) != bounds[-1][1]:
            raise ValueError(f"backward got a gradient for {len(dy)} images, the forward had "
                             f"{bounds[-1][1]}")
        work = [(replica, dy[start:stop]) for replica, (start, stop) in zip(replicas, bounds)]
        with self._step(len(bounds)) as workers:
            grads = self._run_shards(_shard_backward, work, workers)
        self._reduce_gradients(replicas)
        return None if grads[0] is None else np.concatenate(grads)

    def clear_cache(self) -> None:
        """Forget the replicas' caches (the model's own are the caller's)."""
        self._last_forward = None
        for replica in self._replicas[1:]:
            replica.clear_cache()

    def __deepcopy__(self, memo):
        # Threads and replicas belong to one model in one process: a copy starts without.
        return None

    def _seed_random_layers(self, replicas: list) -> None:
        """Shard 0 (the model) draws its Dropout masks as usual; every other shard gets a
        generator of its own, seeded from ``self.rng`` before the threads start, so the
        masks are reproducible and no generator is used by two threads at once."""
        if self.rng is None or len(replicas) < 2:
            return
        seeds = self.rng.integers(2**63, size=len(replicas) - 1)
        for replica, seed in zip(replicas[1:], seeds):
            generator = np.random.default_rng(int(seed))
            for layer in _random_layers(replica):
                layer.rng = generator

    def _reduce_gradients(self, replicas: list) -> None:
        # Fixed order (replica 1, 2, ...), so the sum is the same every run.
        for parameters in zip(*(replica.parameters() for replica in replicas)):
            total = parameters[0].grad
            for other in parameters[1:]:
                total += other.grad
                other.grad.fill(0)

    def close(self) -> None:
        """Stop the shard threads and give the workspace pool's raised limit back."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._release_blas()
        self._finalizer()


def _run_group(function, group: list, errors: dict) -> list:
    """The shards of one worker, one after the other, each product on this thread alone."""
    with gemm.one_thread_blas():
        return [function(*args, errors) for args in group]


def _shard_step(replica, x: np.ndarray, y: np.ndarray, weight: float,
                errors: dict | None = None) -> tuple[float, np.ndarray]:
    with np.errstate(**(errors or np.geterr())):
        logits = replica(x)
        loss, dlogits = cross_entropy(logits, y)
        if weight != 1.0:
            dlogits *= weight  # this shard's share of the batch mean
        if np.isfinite(loss):
            replica.backward(dlogits)
    return loss, logits


def _shard_backward(replica, dy: np.ndarray, errors: dict) -> np.ndarray | None:
    with np.errstate(**errors):
        return replica.backward(dy)


def _shard_forward(replica, x: np.ndarray, errors: dict) -> np.ndarray:
    with np.errstate(**errors):
        return replica(x)
