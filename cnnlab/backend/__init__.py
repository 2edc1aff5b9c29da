"""cnnlab's speed machinery, behind the one interface the layers call (like ``torch.backends``).

The lecture math lives in :mod:`cnnlab.ops` as readable reference code. This package
decides what runs here and makes it fast:

- ``dispatch``: the CPU (detected once), the compiled kernel levels (numpy, portable,
  avx2, avx512, neon) and the level chosen; ``CNNLAB_KERNELS`` or :func:`use` forces one.
- ``threads``: how many threads to run, from the cores that are free now.
- ``gemm``, ``conv``, ``conv_wide``, ``winograd``, ``fused``, ``kernels``: the fast paths.
- ``workspace``: pooled scratch buffers; ``blas``: NumPy's BLAS and its threads.
- ``parallel``: the data-parallel training step (replicas over shards of a batch).
- ``native/``: the C sources of ``cnnlab.backend._sgemm`` and ``cnnlab.backend._loops``.

The interface (what :mod:`cnnlab.nn` and :mod:`cnnlab.optim` call); each function has the
arguments and results of its reference op in :mod:`cnnlab.ops`, and falls back to it where
nothing faster applies::

    conv2d_forward / conv2d_backward
    conv2d_relu_maxpool2d_forward / conv2d_relu_maxpool2d_backward
    linear_forward / linear_backward
    max_pool2d_forward / max_pool2d_backward
    relu_forward / relu_backward
    adam_step
    shards_for_call(model, x) / DataParallel / in_step()   # the data-parallel step

Inspect or choose::

    cnnlab.backend.info()             # CPU, levels, the choice per kernel family, BLAS
    with cnnlab.backend.use("avx2"):  # run a block at another level
        ...
"""

from __future__ import annotations

import platform

from cnnlab.backend import blas, dispatch, threads
from cnnlab.backend.conv import conv2d_backward, conv2d_forward
from cnnlab.backend.dispatch import (LEVELS, CpuDescription, KernelLevelError, level,
                                     runnable_levels, use)
from cnnlab.backend.fused import conv2d_relu_maxpool2d_backward, conv2d_relu_maxpool2d_forward
from cnnlab.backend.kernels import (adam_step, linear_backward, linear_forward, max_pool2d_backward,
                                    max_pool2d_forward, relu_backward, relu_forward)
from cnnlab.backend.parallel import DataParallel, in_step, shards_for_call

__all__ = [
    "LEVELS", "CpuDescription", "KernelLevelError", "level", "runnable_levels", "use", "info",
    "format_info", "summary", "conv2d_forward", "conv2d_backward", "conv2d_relu_maxpool2d_forward",
    "conv2d_relu_maxpool2d_backward", "linear_forward", "linear_backward", "max_pool2d_forward",
    "max_pool2d_backward", "relu_forward", "relu_backward", "adam_step", "DataParallel",
    "shards_for_call", "in_step",
]


def info() -> dict:
    """What runs here: CPU, flags that matter, compiled and runnable levels, the chosen level
    and each kernel family's implementation, BLAS, threads, and why native code is missing.

    Raises:
        KernelLevelError: ``CNNLAB_KERNELS`` names a level that cannot run here.
    """
    cpu = dispatch.cpu()
    chosen = dispatch.level()
    return {
        "cpu": cpu.model,
        "arch": cpu.arch,
        "python": platform.python_version(),
        "flags": [flag for flag in dispatch.FLAGS_THAT_MATTER if flag in cpu.flags],
        "compiled_levels": list(dispatch.compiled_levels(dispatch.native())),
        "runnable_levels": list(dispatch.runnable_levels()),
        "level": chosen,
        "level_source": dispatch.level_source(),
        "families": dispatch.families(),
        "blas": blas.describe(),
        "threads": threads.describe(),
        "native_missing": dispatch.why_native_missing(),
    }


def summary() -> dict:
    """The short form kept in each run's summary.json: level, families, CPU, BLAS kernel."""
    details = info()
    return {"level": details["level"], "families": details["families"], "cpu": details["cpu"],
            "blas": {key: details["blas"].get(key) for key in ("library", "version", "kernel")}}


def format_info(details: dict | None = None) -> str:
    """:func:`info` as the lines ``cnnlab info`` prints."""
    details = info() if details is None else details
    blas_text = details["blas"]
    thread_text = details["threads"]
    lines = [
        f"cpu              {details['cpu']} ({details['arch']})",
        f"flags            {' '.join(details['flags']) or '-'}",
        f"compiled levels  {', '.join(details['compiled_levels']) or 'none'}",
        f"runnable levels  {', '.join(details['runnable_levels'])}",
        f"kernel level     {details['level']} ({details['level_source']})",
    ]
    lines += [f"  {family:<14} {text}" for family, text in details["families"].items()]
    lines.append(f"blas             {blas_text.get('library') or 'unknown'} {blas_text.get('version') or ''}"
                 f", kernel {blas_text.get('kernel') or '-'}, {blas_text.get('threads') or '?'} threads"
                 + (f", env {blas_text['env']}" if blas_text.get("env") else ""))
    lines.append(f"threads          {thread_text['free_cores']} of {thread_text['cores']} cores free "
                 f"(other processes use {thread_text['others_busy_cores']:.1f})")
    if details["native_missing"]:
        lines.append(f"native code      missing: {details['native_missing']}")
    return "\n".join(lines)
