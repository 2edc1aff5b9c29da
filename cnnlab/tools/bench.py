"""cnnlab against PyTorch on this CPU, side by side in one run.

Every figure is a median over repeats, with the min and max, and every
comparison is a ratio taken in the same run on identical shapes, weights and
batches (float32, same thread count). Absolute times on a shared machine mean
little; the ratios are what to read.

PyTorch runs in its default NCHW layout and in channels_last; each ratio is
taken against the better of the two.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cnnlab import backend
from cnnlab.backend import threads as thread_policy
from cnnlab.utils.fileio import write_json


# ---------------------------------------------------------------------------
# Environment: CPU, BLAS library, the kernel it chose, threads
# ---------------------------------------------------------------------------

def _cpu_has_avx512() -> bool:
    return backend.dispatch.cpu().can_run("avx512")


# OpenBLAS kernels (its core types, any case) that use AVX-512.
_AVX512_KERNELS = ("skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5")


def blas_kernel_note(blas: dict) -> str | None:
    """A line for the user when OPENBLAS_CORETYPE holds OpenBLAS back on an AVX-512 CPU."""
    forced = blas.get("env", {}).get("OPENBLAS_CORETYPE")
    kernel = (blas.get("kernel") or "").lower()
    if forced and kernel and not kernel.startswith(_AVX512_KERNELS) and _cpu_has_avx512():
        return (f"note: OPENBLAS_CORETYPE={forced} makes OpenBLAS use its {blas['kernel']} kernel on "
                "this AVX-512 CPU; without it (unset OPENBLAS_CORETYPE) OpenBLAS picks its "
                "AVX-512 kernel and NumPy's float32 GEMM runs up to ~2x faster")
    return None


def environment(torch_module=None) -> dict:
    details = backend.info()
    env = {
        "cpu": details["cpu"],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "blas": details["blas"],
        "backend": details,
    }
    if torch_module is not None:
        env["torch"] = {
            "version": torch_module.__version__,
            "threads": torch_module.get_num_threads(),
            "cpu_capability": _torch_cpu_capability(torch_module),
        }
    return env


def _torch_cpu_capability(torch_module) -> str | None:
    with contextlib.suppress(Exception):
        return torch_module.backends.cpu.get_cpu_capability()
    return None


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

@dataclass
class Timing:
    """Seconds per call over repeats: the median, min and max."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "min_s": min(self.samples), "max_s": max(self.samples),
                "repeats": len(self.samples)}


# How long a block waits before it starts. After a BLAS call, OpenBLAS's idle worker
# threads keep spinning for about 2^28 cycles (~0.1 s) before they sleep, and PyTorch's
# OpenMP threads do likewise; on a 2-core machine whoever runs next pays for it.
# Measured here: PyTorch's MLP inference right after a NumPy GEMM took 2-10x its time.
SETTLE_SECONDS = 0.25
# Throughput samples last at least this long (several calls of a fast inference each).
MIN_SAMPLE_SECONDS = 0.005
# Untimed calls after the pause, for at least this long: a core left idle during the pause
# comes back slowly on a VM. One untimed call (0.7 ms for the mlp) left the first samples up
# to 2x slow for cnnlab and PyTorch alike here; 20 ms of calls halved the spread.
WARM_SECONDS = 0.02


def _settle(seconds: float) -> None:
    """Wait, busy: a sleeping process lets a virtual CPU's clock drop, and the next
    timed calls ran ~25% slower after time.sleep here."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def time_interleaved(functions: dict[str, Callable[[], object]], repeats: int,
                     warmup: int = 2, inner: int = 1, block: int = 3,
                     settle: float | None = None, min_sample_seconds: float = 0.0,
                     warm_seconds: float = 0.0) -> dict[str, Timing]:
    """Time each function ``repeats`` times, in rounds that take turns, so drift hits all alike.

    Each round runs every function as a block: a pause of ``settle`` seconds (default
    SETTLE_SECONDS when there is more than one function), untimed calls (one, or as many as
    take ``warm_seconds``), then ``block`` timed samples, each the mean over ``inner``
    consecutive calls. Alternating single calls instead measured PyTorch's cnn training step
    at half its real speed: each library ran against the other's spinning threads. With
    ``min_sample_seconds``, a function whose calls are shorter gets a larger ``inner`` of its
    own (from its last warm-up call), so one sample is not a single sub-millisecond call after
    the pause.
    """
    if settle is None:
        settle = SETTLE_SECONDS if len(functions) > 1 else 0.0
    inners = {}
    for name, function in functions.items():
        for _ in range(warmup):
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
        inners[name] = inner
        if min_sample_seconds > 0 and warmup > 0:
            inners[name] = max(inner, min(100, math.ceil(min_sample_seconds / max(elapsed, 1e-9))))
    timings = {name: Timing() for name in functions}
    rounds = -(-repeats // block)
    for round_index in range(rounds):
        samples_this_round = min(block, repeats - round_index * block)
        for name, function in functions.items():
            _settle(settle)
            warm_until = time.perf_counter() + warm_seconds
            function()
            while time.perf_counter() < warm_until:
                function()
            for _ in range(samples_this_round):
                start = time.perf_counter()
                for _ in range(inners[name]):
                    function()
                timings[name].samples.append((time.perf_counter() - start) / inners[name])
    return timings


def gemm_rate(size: int = 2048, repeats: int = 5) -> dict:
    """Measured float32 GEMM rate of NumPy's BLAS (GFLOP/s), at (size x size) @ (size x size)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    timing = time_interleaved({"gemm": lambda: np.matmul(a, b, out=out)}, repeats)["gemm"]
    flops = 2.0 * size ** 3
    return {"size": size, "gflops_median": flops / timing.median / 1e9,
            "gflops_max": flops / min(timing.samples) / 1e9, **timing.as_dict()}


# ---------------------------------------------------------------------------
# The networks, in cnnlab and in PyTorch with identical weights
# ---------------------------------------------------------------------------

def torch_twin(torch_module, model):
    """The cnnlab Sequential ``model`` as a torch Sequential with the same weights.

    Used wherever cnnlab and PyTorch are timed side by side (here and
    benchmarks/train_pytorch.py), so both always run the same network.
    """
    torch_nn = torch_module.nn
    layers = []
    for layer in model:
        kind = type(layer).__name__
        if kind == "Conv2d":
            layers.append(torch_nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                          stride=layer.stride, padding=layer.padding,
                                          dilation=layer.dilation, groups=layer.groups,
                                          bias=layer.bias is not None))
        elif kind == "Linear":
            layers.append(torch_nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None))
        elif kind in ("MaxPool2d", "AvgPool2d"):
            layers.append(getattr(torch_nn, kind)(layer.kernel_size, layer.stride, layer.padding))
        elif kind in ("BatchNorm1d", "BatchNorm2d"):
            layers.append(getattr(torch_nn, kind)(layer.num_features, eps=layer.eps, momentum=layer.momentum))
        elif kind == "Dropout":
            layers.append(torch_nn.Dropout(layer.p))
        elif kind in ("ReLU", "Flatten", "Sigmoid", "Tanh"):
            layers.append(getattr(torch_nn, kind)())
        elif kind == "LeakyReLU":
            layers.append(torch_nn.LeakyReLU(layer.negative_slope))
        else:
            raise ValueError(f"no PyTorch twin for layer {kind}")
    twin = torch_nn.Sequential(*layers)
    twin.load_state_dict({key: torch_module.from_numpy(np.array(value))
                          for key, value in model.state_dict().items()})
    return twin


def _lecture_model(name: str, seed: int):
    from cnnlab.models import build_model

    return build_model(name, np.random.default_rng(seed))


def _flops_per_image(model, kind: str) -> int:
    """Forward FLOPs; a training step adds the weight gradient and the input gradient of
    each layer (about one forward each), except the first layer's input gradient, which
    nobody needs (for the mlp that layer is almost all of the work)."""
    from cnnlab.models.summary import summarize

    rows = summarize(model, (1, 28, 28))
    forward = sum(row.flops for row in rows)
    if kind != "train step":
        return forward
    first_with_weights = next((row.flops for row in rows if row.parameters), 0)
    return 3 * forward - first_with_weights


def _data_parallel(model, threads: int, batch_size: int):
    """The batch split over threads as `cnnlab train` and `cnnlab evaluate` split it (as many
    as their default would use: enough work per thread), at most ``threads``."""
    from cnnlab.backend.parallel import DataParallel, default_threads

    flops = _flops_per_image(model, "inference")
    return DataParallel(model, max(1, min(threads, default_threads(batch_size, flops))))


def _cnnlab_train_step(parallel, optimizer, x, y):
    def step():
        parallel.forward_backward(x, y)
        optimizer.step()
        optimizer.zero_grad()
    return step


def _torch_train_step(torch_module, model, optimizer, x, y):
    loss_function = torch_module.nn.functional.cross_entropy

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss = loss_function(model(x), y)
        loss.backward()
        optimizer.step()
    return step


def _batch(batch_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=batch_size).astype(np.int64)
    return x, y


# ---------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------

def _best_torch(result: dict) -> tuple[str, float]:
    """The faster PyTorch layout of a result: (name, median seconds)."""
    candidates = {name: result[name]["median_s"] for name in ("torch_nchw", "torch_channels_last")
                  if name in result}
    name = min(candidates, key=candidates.get)
    return name, candidates[name]


def _with_ratio(result: dict) -> dict:
    if any(name.startswith("torch") for name in result):
        best, seconds = _best_torch(result)
        result["torch_best"] = best
        # > 1 means cnnlab is faster than PyTorch's better layout.
        result["speedup_vs_torch"] = seconds / result["cnnlab"]["median_s"]
    return result


def bench_ops(torch_module, repeats: int, batch_size: int = 128) -> dict:
    """Each op of the lecture CNN at its shape in that network, forward and forward+backward."""
    # what the layers run: the backend's ops
    from cnnlab.backend import (conv2d_backward, conv2d_forward, linear_backward, linear_forward,
                                max_pool2d_backward, max_pool2d_forward, relu_backward, relu_forward)
    from cnnlab.ops.loss import cross_entropy

    rng = np.random.default_rng(0)

    def array(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    n = batch_size
    cases = {
        "conv1": dict(x=array(n, 1, 28, 28), w=array(32, 1, 3, 3), b=array(32), input_grad=False),
        "conv2": dict(x=array(n, 32, 14, 14), w=array(64, 32, 3, 3), b=array(64), input_grad=True),
    }
    results: dict = {}
    for name, case in cases.items():
        x, w, b = case["x"], case["w"], case["b"]
        dy = array(*conv2d_forward(x, w, b, padding=1)[0].shape)

        def fwd(x=x, w=w, b=b):
            return conv2d_forward(x, w, b, padding=1)

        def fwd_bwd(x=x, w=w, b=b, dy=dy, input_grad=case["input_grad"]):
            _, cache = conv2d_forward(x, w, b, padding=1)
            return conv2d_backward(dy, cache, input_grad=input_grad)

        results[f"{name} forward"] = {"cnnlab": fwd}
        results[f"{name} forward+backward"] = {"cnnlab": fwd_bwd}
        if torch_module is not None:
            conv = torch_module.nn.functional.conv2d
            for layout in ("nchw", "channels_last"):
                tx, tw, tb, tdy = (torch_module.from_numpy(a.copy()) for a in (x, w, b, dy))
                if layout == "channels_last":
                    tx = tx.contiguous(memory_format=torch_module.channels_last)
                    tw = tw.contiguous(memory_format=torch_module.channels_last)
                    tdy = tdy.contiguous(memory_format=torch_module.channels_last)
                tx.requires_grad_(case["input_grad"])
                tw.requires_grad_(True)
                tb.requires_grad_(True)

                def t_fwd(tx=tx, tw=tw, tb=tb):
                    with torch_module.no_grad():
                        return conv(tx, tw, tb, padding=1)

                def t_fwd_bwd(tx=tx, tw=tw, tb=tb, tdy=tdy):
                    out = conv(tx, tw, tb, padding=1)
                    inputs = [tw, tb] + ([tx] if tx.requires_grad else [])
                    return torch_module.autograd.grad(out, inputs, tdy)

                results[f"{name} forward"][f"torch_{layout}"] = t_fwd
                results[f"{name} forward+backward"][f"torch_{layout}"] = t_fwd_bwd

    pool_inputs = {"pool1": array(n, 32, 28, 28), "pool2": array(n, 64, 14, 14)}
    for name, x in pool_inputs.items():
        dy = array(n, x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
        results[f"{name} forward"] = {"cnnlab": lambda x=x: max_pool2d_forward(x, 2)}
        results[f"{name} forward+backward"] = {
            "cnnlab": lambda x=x, dy=dy: max_pool2d_backward(dy, max_pool2d_forward(x, 2)[1])}
        if torch_module is not None:
            pool = torch_module.nn.functional.max_pool2d
            for layout in ("nchw", "channels_last"):
                tx = torch_module.from_numpy(x.copy())
                tdy = torch_module.from_numpy(dy.copy())
                if layout == "channels_last":
                    tx = tx.contiguous(memory_format=torch_module.channels_last)
                    tdy = tdy.contiguous(memory_format=torch_module.channels_last)
                tx.requires_grad_(True)

                def t_fwd(tx=tx):
                    with torch_module.no_grad():
                        return pool(tx, 2)

                def t_fwd_bwd(tx=tx, tdy=tdy):
                    return torch_module.autograd.grad(pool(tx, 2), [tx], tdy)

                results[f"{name} forward"][f"torch_{layout}"] = t_fwd
                results[f"{name} forward+backward"][f"torch_{layout}"] = t_fwd_bwd

    relu_x = array(n, 32, 28, 28)
    relu_dy = array(n, 32, 28, 28)
    linear_x, linear_w, linear_b, linear_dy = array(n, 3136), array(10, 3136), array(10), array(n, 10)
    logits = array(n, 10)
    labels = rng.integers(0, 10, n).astype(np.int64)
    results["relu (conv1 output) forward"] = {"cnnlab": lambda: relu_forward(relu_x)}
    results["relu (conv1 output) forward+backward"] = {
        "cnnlab": lambda: relu_backward(relu_dy, relu_forward(relu_x)[1])}
    results["linear forward"] = {"cnnlab": lambda: linear_forward(linear_x, linear_w, linear_b)}
    results["linear forward+backward"] = {
        "cnnlab": lambda: linear_backward(linear_dy, linear_forward(linear_x, linear_w, linear_b)[1])}
    results["cross-entropy forward+backward"] = {"cnnlab": lambda: cross_entropy(logits, labels)}
    if torch_module is not None:
        functional = torch_module.nn.functional
        t_relu_x = torch_module.from_numpy(relu_x.copy()).requires_grad_(True)
        t_relu_dy = torch_module.from_numpy(relu_dy.copy())
        t_lx = torch_module.from_numpy(linear_x.copy()).requires_grad_(True)
        t_lw = torch_module.from_numpy(linear_w.copy()).requires_grad_(True)
        t_lb = torch_module.from_numpy(linear_b.copy()).requires_grad_(True)
        t_ldy = torch_module.from_numpy(linear_dy.copy())
        t_logits = torch_module.from_numpy(logits.copy()).requires_grad_(True)
        t_labels = torch_module.from_numpy(labels.copy())

        def no_grad(function):
            def wrapped():
                with torch_module.no_grad():
                    return function()
            return wrapped

        results["relu (conv1 output) forward"]["torch_nchw"] = no_grad(lambda: functional.relu(t_relu_x))
        results["relu (conv1 output) forward+backward"]["torch_nchw"] = lambda: torch_module.autograd.grad(
            functional.relu(t_relu_x), [t_relu_x], t_relu_dy)
        results["linear forward"]["torch_nchw"] = no_grad(lambda: functional.linear(t_lx, t_lw, t_lb))
        results["linear forward+backward"]["torch_nchw"] = lambda: torch_module.autograd.grad(
            functional.linear(t_lx, t_lw, t_lb), [t_lx, t_lw, t_lb], t_ldy)
        results["cross-entropy forward+backward"]["torch_nchw"] = lambda: torch_module.autograd.grad(
            functional.cross_entropy(t_logits, t_labels), [t_logits])

    timed = {}
    for name, functions in results.items():
        timings = time_interleaved(functions, repeats, inner=3, warm_seconds=WARM_SECONDS)
        timed[name] = _with_ratio({key: timing.as_dict() for key, timing in timings.items()})
    return timed


def bench_models(torch_module, repeats: int, batch_sizes: tuple[int, ...], threads: int) -> dict:
    """Training-step and inference throughput (images/s) for `cnn` and `mlp`."""
    from cnnlab.optim import Adam

    results: dict = {}
    for model_name in ("cnn", "mlp"):
        for batch_size in batch_sizes:
            x, y = _batch(batch_size)
            model = _lecture_model(model_name, seed=0)
            optimizer = Adam(model.parameters(), lr=1e-3)
            parallel = _data_parallel(model, threads, batch_size)
            train = {"cnnlab": _cnnlab_train_step(parallel, optimizer, x, y)}
            infer_model = _lecture_model(model_name, seed=0)
            infer_model.eval()
            # As `cnnlab evaluate` and the evaluation after each epoch run it.
            infer_parallel = _data_parallel(infer_model, threads, batch_size)
            infer = {"cnnlab": lambda p=infer_parallel, x=x: p.forward(x)}
            if torch_module is not None:
                for layout in ("nchw", "channels_last"):
                    if model_name == "mlp" and layout == "channels_last":
                        continue  # no spatial layout to choose for a fully connected net
                    memory_format = (torch_module.channels_last if layout == "channels_last"
                                     else torch_module.contiguous_format)
                    t_model = torch_twin(torch_module, _lecture_model(model_name, seed=0))
                    t_model = t_model.to(memory_format=memory_format)
                    t_optimizer = torch_module.optim.Adam(t_model.parameters(), lr=1e-3)
                    tx = torch_module.from_numpy(x.copy()).contiguous(memory_format=memory_format)
                    ty = torch_module.from_numpy(y.copy())
                    train[f"torch_{layout}"] = _torch_train_step(torch_module, t_model, t_optimizer, tx, ty)
                    t_infer = torch_twin(torch_module, _lecture_model(model_name, seed=0)).eval()
                    t_infer = t_infer.to(memory_format=memory_format)

                    def t_infer_step(m=t_infer, tx=tx):
                        with torch_module.no_grad():
                            return m(tx)
                    infer[f"torch_{layout}"] = t_infer_step
            for kind, functions in (("train step", train), ("inference", infer)):
                timings = time_interleaved(functions, repeats, min_sample_seconds=MIN_SAMPLE_SECONDS,
                                           warm_seconds=WARM_SECONDS)
                entry = {key: {**timing.as_dict(), "images_per_second": batch_size / timing.median}
                         for key, timing in timings.items()}
                entry["batch_size"] = batch_size
                entry["flops_per_image"] = _flops_per_image(model, kind)
                results[f"{model_name} {kind} batch {batch_size}"] = _with_ratio(entry)
            results[f"{model_name} train step batch {batch_size}"]["cnnlab_threads"] = parallel.threads
            results[f"{model_name} inference batch {batch_size}"]["cnnlab_threads"] = infer_parallel.threads
            parallel.close()
            infer_parallel.close()
    return results


def bench_epoch(torch_module, images: int, batch_size: int, gemm_gflops: float, threads: int) -> dict:
    """One training epoch of `cnn` over ``images`` random images, against the GEMM bound."""
    from cnnlab.optim import Adam

    rng = np.random.default_rng(1)
    data = rng.random((images, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, images).astype(np.int64)
    batches = [(data[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, images, batch_size)]

    model = _lecture_model("cnn", seed=0)
    optimizer = Adam(model.parameters(), lr=1e-3)
    # One untimed step each, so neither side starts against the other's spinning threads
    # (see time_interleaved).
    parallel = _data_parallel(model, threads, batch_size)
    _cnnlab_train_step(parallel, optimizer, *batches[0])()
    _settle(SETTLE_SECONDS)
    start = time.perf_counter()
    for x, y in batches:
        _cnnlab_train_step(parallel, optimizer, x, y)()
    cnnlab_seconds = time.perf_counter() - start
    parallel.close()

    flops_per_image = _flops_per_image(model, "train step")
    bound_seconds = flops_per_image * images / (gemm_gflops * 1e9)
    result = {"images": images, "batch_size": batch_size, "cnnlab_seconds": cnnlab_seconds,
              "gemm_bound_seconds": bound_seconds, "times_gemm_bound": cnnlab_seconds / bound_seconds}
    if torch_module is not None:
        t_model = torch_twin(torch_module, _lecture_model("cnn", seed=0)).to(
            memory_format=torch_module.channels_last)
        t_optimizer = torch_module.optim.Adam(t_model.parameters(), lr=1e-3)
        t_batches = [(torch_module.from_numpy(x).contiguous(memory_format=torch_module.channels_last),
                      torch_module.from_numpy(y)) for x, y in batches]
        _settle(SETTLE_SECONDS)
        _torch_train_step(torch_module, t_model, t_optimizer, *t_batches[0])()
        start = time.perf_counter()
        for tx, ty in t_batches:
            _torch_train_step(torch_module, t_model, t_optimizer, tx, ty)()
        result["torch_channels_last_seconds"] = time.perf_counter() - start
        result["speedup_vs_torch"] = result["torch_channels_last_seconds"] / cnnlab_seconds
    return result


# Runs `cnnlab ARGS...` and then prints its own peak RSS, as VmHWM of /proc/self/status: the
# high-water mark of this program's own address space. getrusage's ru_maxrss would not do:
# Linux carries it across exec, so it includes the benchmark process the child was forked
# (or vforked) from, with torch and the benchmark's arrays.
_PEAK_RSS_SCRIPT = """
import resource, runpy, sys

def peak_kb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

sys.argv = ["cnnlab", *sys.argv[1:]]
try:
    runpy.run_module("cnnlab", run_name="__main__")
finally:
    print("peak_rss_kb", peak_kb(), file=sys.stderr)
"""


def bench_train_memory(limit_train: int, data_dir: str | None) -> dict:
    """Peak RSS (MB) of a real `cnnlab train --model cnn` process."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        arguments = ["train", "--model", "cnn", "--dataset", "fashion-mnist", "--epochs", "1",
                     "--limit-train", str(limit_train), "--no-progress", "--no-report"]
        if data_dir:
            arguments += ["--data-dir", data_dir]
        completed = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, *arguments,
                                    "--run-dir", os.path.join(tmp, "run")],
                                   capture_output=True, text=True)
    command = "cnnlab " + " ".join(arguments)
    lines = completed.stderr.strip().splitlines()
    if completed.returncode != 0 or not lines or not lines[-1].startswith("peak_rss_kb"):
        error = next((line for line in reversed(lines) if not line.startswith("peak_rss_kb")), "failed")
        return {"error": error, "command": command}
    peak_kb = int(lines[-1].split()[1])
    return {"peak_rss_mb": peak_kb / 1024, "limit_train": limit_train, "command": command}


# ---------------------------------------------------------------------------
# Orchestration and output
# ---------------------------------------------------------------------------

def run_benchmark(quick: bool = False, threads: int | None = None, with_torch: bool = True,
                  repeats: int | None = None, batch_sizes: tuple[int, ...] | None = None,
                  epoch_images: int | None = None, data_dir: str | None = None,
                  measure_memory: bool = True, log=print) -> dict:
    """Run every benchmark; returns the JSON-ready results."""
    torch_module = None
    if with_torch:
        try:
            import torch as torch_module
        except ImportError:
            log("PyTorch is not installed: measuring cnnlab alone (pip install torch==2.13.0 to compare)")
    if threads is None:
        threads = os.cpu_count() or 1
    if torch_module is not None:
        torch_module.set_num_threads(threads)
    repeats = repeats or (5 if quick else 15)
    batch_sizes = batch_sizes or ((128,) if quick else (64, 128, 256))
    epoch_images = epoch_images or (6400 if quick else 60000)

    started = thread_policy.Sample()
    log("measuring the float32 GEMM rate ...")
    gemm = gemm_rate(1024 if quick else 2048, repeats=5 if quick else 9)
    log(f"  {gemm['gflops_median']:.0f} GFLOP/s median, {gemm['gflops_max']:.0f} best")
    log("timing ops ...")
    ops = bench_ops(torch_module, repeats)
    log("timing training steps and inference ...")
    models = bench_models(torch_module, repeats, batch_sizes, threads)
    for entry in models.values():
        entry["fraction_of_gemm_bound"] = (entry["flops_per_image"] * entry["cnnlab"]["images_per_second"]
                                           / (gemm["gflops_max"] * 1e9))
    log(f"timing one epoch of cnn on {epoch_images} images ...")
    # The bound takes BLAS's best rate: what the hardware did, not a noisy median.
    epoch = bench_epoch(torch_module, epoch_images, 128, gemm["gflops_max"], threads)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "cnnlab bench" + (" --quick" if quick else ""),
        "threads": threads,
        "environment": environment(torch_module),
        "gemm": gemm,
        "ops": ops,
        "models": models,
        "epoch": epoch,
        "load": machine_load(started, thread_policy.Sample()),
    }
    if measure_memory:
        log("measuring peak memory of a training run ...")
        results["train_memory"] = bench_train_memory(2048 if quick else 60000, data_dir)
    return results


#: Samples of one measurement whose slowest is more than this times its fastest: noise.
MAX_SPREAD = 2.0
#: Other processes using more than this many cores during the run make the machine busy.
BUSY_CORES = 0.5


def machine_load(start, end) -> dict:
    """How many cores other processes used between two samples (cnnlab/backend/threads.py)."""
    return {"others_busy_cores": thread_policy.others_busy_cores(start, end),
            "cores": thread_policy.affinity_cores()}


def _timings(entry: dict) -> list[dict]:
    return [value for value in entry.values() if isinstance(value, dict) and "min_s" in value]


def is_noisy(entry: dict) -> bool:
    """True when one of the entry's measurements spread by more than MAX_SPREAD."""
    return any(timing["max_s"] > MAX_SPREAD * timing["min_s"] for timing in _timings(entry))


def busy_note(results: dict) -> str | None:
    """One line saying the machine was busy (other processes, or noisy samples), or None."""
    load = results.get("load") or {}
    others = load.get("others_busy_cores")
    noisy = [name for section in ("ops", "models") for name, entry in results.get(section, {}).items()
             if is_noisy(entry)]
    if others is not None and others > BUSY_CORES:
        return (f"warning: the machine was busy: other processes used {others:.1f} of "
                f"{load['cores']} cores during the run; ratios marked 'busy' are unreliable, "
                "rerun on an idle machine")
    if noisy:
        return (f"warning: {len(noisy)} measurements spread by more than {MAX_SPREAD:g}x (another "
                "process competed for the CPU); ratios marked 'busy' are unreliable")
    return None


def _ratio(entry: dict, busy: bool) -> str:
    if "speedup_vs_torch" not in entry:
        return "-"
    if busy and is_noisy(entry) or entry["speedup_vs_torch"] <= 0:
        return "busy"
    return f"{entry['speedup_vs_torch']:.2f}x"


def _spread(entry: dict) -> str:
    return f"{entry['median_s'] * 1e3:7.2f} [{entry['min_s'] * 1e3:.2f}-{entry['max_s'] * 1e3:.2f}]"


def format_results(results: dict) -> str:
    env = results["environment"]
    blas = env["blas"]
    lines = [
        f"cnnlab bench  {results['date']}  {env['cpu']}  ({env['cores']} cores, {results['threads']} threads)",
        f"NumPy {blas.get('numpy')}  BLAS {blas.get('library')} {blas.get('version') or ''}  "
        f"kernel {blas.get('kernel')}  BLAS threads {blas.get('threads')}  env {blas.get('env') or '{}'}",
    ]
    if "backend" in env:
        lines.append(f"kernel level {env['backend']['level']} (runnable: "
                     f"{', '.join(env['backend']['runnable_levels'])})")
        lines += [f"  {family:<9} {text}" for family, text in env["backend"]["families"].items()]
    note = blas_kernel_note(blas)
    if note:
        lines.append(note)
    busy = busy_note(results)
    if busy:
        lines.append(busy)
    if "torch" in env:
        lines.append(f"PyTorch {env['torch']['version']}  threads {env['torch']['threads']}  "
                     f"cpu capability {env['torch']['cpu_capability']}")
    gemm = results["gemm"]
    lines.append(f"float32 GEMM ({gemm['size']}^3): {gemm['gflops_median']:.0f} GFLOP/s median, "
                 f"{gemm['gflops_max']:.0f} best")
    lines.append("")
    lines.append("ops at batch 128, ms: median [min-max] over blocks taken in turns (see time_interleaved); "
                 "speedup = PyTorch's better layout / cnnlab")
    lines.append(f"{'op':38s} {'cnnlab':>22s} {'torch NCHW':>22s} {'torch ch_last':>22s} {'speedup':>8s}")
    for name, entry in results["ops"].items():
        cells = [_spread(entry[key]) if key in entry else "-" for key in
                 ("cnnlab", "torch_nchw", "torch_channels_last")]
        ratio = _ratio(entry, busy is not None)
        lines.append(f"{name:38s} {cells[0]:>22s} {cells[1]:>22s} {cells[2]:>22s} {ratio:>8s}")
    lines.append("")
    lines.append("throughput, images/s (median); GEMM bound = FLOPs / best measured GEMM rate")
    lines.append("(FLOPs of the direct convolution; Winograd needs 2.25x fewer multiplies, so it can pass 100%)")
    lines.append("cnnlab splits each batch over 'thr' threads, as `cnnlab train` and `cnnlab evaluate` do")
    lines.append(f"{'model':32s} {'thr':>3s} {'cnnlab':>9s} {'torch NCHW':>11s} {'torch ch_l':>11s} "
                 f"{'speedup':>8s} {'of bound':>9s}")
    for name, entry in results["models"].items():
        cells = [f"{entry[key]['images_per_second']:,.0f}" if key in entry else "-" for key in
                 ("cnnlab", "torch_nchw", "torch_channels_last")]
        ratio = _ratio(entry, busy is not None)
        lines.append(f"{name:32s} {entry.get('cnnlab_threads', '-'):>3} {cells[0]:>9s} {cells[1]:>11s} "
                     f"{cells[2]:>11s} {ratio:>8s} {entry['fraction_of_gemm_bound']:>8.0%}")
    epoch = results["epoch"]
    lines.append("")
    line = (f"one cnn epoch, {epoch['images']} images: cnnlab {epoch['cnnlab_seconds']:.1f} s, "
            f"GEMM bound {epoch['gemm_bound_seconds']:.1f} s ({epoch['times_gemm_bound']:.2f}x the bound)")
    if "torch_channels_last_seconds" in epoch:
        line += (f", PyTorch channels_last {epoch['torch_channels_last_seconds']:.1f} s "
                 f"({epoch['speedup_vs_torch']:.2f}x)")
    lines.append(line)
    memory = results.get("train_memory")
    if memory:
        if "peak_rss_mb" in memory:
            lines.append(f"peak RSS of `cnnlab train --model cnn` ({memory['limit_train']} images): "
                         f"{memory['peak_rss_mb']:.0f} MB")
        else:
            lines.append(f"peak RSS: not measured ({memory['error']})")
    return "\n".join(lines)


def save_results(path: str, results: dict) -> None:
    write_json(path, json.loads(json.dumps(results, default=float)))
