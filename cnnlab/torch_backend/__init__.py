"""``cnnlab train --backend torch``: cnnlab's models as ``torch.nn`` modules, on any device.

The same spec (``mlp``, ``cnn``, ``cnn-bn``, or a user spec) becomes a ``torch.nn.Sequential``
with exactly cnnlab's state_dict keys and shapes (:mod:`cnnlab.torch_backend.modules`), trained
by torch.optim's optimizers and schedules (:mod:`cnnlab.torch_backend.optim`) inside cnnlab's
own training loop (:mod:`cnnlab.torch_backend.trainer`): the same data order, run folder and
checkpoint format as the NumPy engine, so either backend's checkpoint loads into the other.

torch is imported only when one of these functions runs (``import cnnlab`` never imports it).
"""

from __future__ import annotations

import importlib.util

from cnnlab.errors import ConfigError

INSTALL_HINT = "pip install 'cnnlab[torch]'"


def require_torch(what: str = "--backend torch") -> None:
    """Raise a one-line ConfigError naming the install command when torch is missing."""
    if importlib.util.find_spec("torch") is None:
        raise ConfigError(f"{what} needs PyTorch, which is not installed: {INSTALL_HINT}")


def select_device(requested: str = "auto", local_rank: int = 0, torch_module=None):
    """The ``torch.device`` to train on, and a line saying which and why.

    Args:
        requested: "auto" (CUDA, then Apple's MPS, then the CPU), "cpu", "cuda", "cuda:N"
            or "mps".
        local_rank: under torchrun, this process's rank on its machine; "cuda" and "auto"
            then take GPU ``local_rank`` (one GPU per process, as DDP wants).
        torch_module: the torch module to ask (tests pass a stand-in); default ``torch``.

    Raises:
        ConfigError: the requested device is not there, in one line saying what is.
    """
    if torch_module is None:
        require_torch()
        import torch as torch_module
    cuda_count = torch_module.cuda.device_count() if torch_module.cuda.is_available() else 0
    mps = getattr(torch_module.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    kind, _, index_text = requested.partition(":")
    if kind == "auto":
        kind = "cuda" if cuda_count else "mps" if mps_available else "cpu"
        why = {"cuda": f"{cuda_count} CUDA GPU{'s' if cuda_count > 1 else ''} found",
               "mps": "Apple MPS found", "cpu": "no CUDA or MPS device found"}[kind]
    else:
        why = "--device " + requested
    if kind == "cuda":
        if not cuda_count:
            raise ConfigError(f"--device {requested}: no CUDA GPU is visible to PyTorch "
                              f"(torch {torch_module.__version__}, built for CUDA "
                              f"{torch_module.version.cuda or 'none'}); use --device cpu or auto")
        index = int(index_text) if index_text else local_rank % cuda_count
        if index >= cuda_count:
            raise ConfigError(f"--device {requested}: there {'is' if cuda_count == 1 else 'are'} "
                              f"only {cuda_count} CUDA GPU{'s' if cuda_count > 1 else ''} "
                              f"(cuda:0..cuda:{cuda_count - 1})")
        device = torch_module.device("cuda", index)
        name = torch_module.cuda.get_device_name(index)
        return device, f"training on {device} ({name}; {why})"
    if kind == "mps":
        if not mps_available:
            raise ConfigError(f"--device mps: Apple's MPS is not available in this PyTorch "
                              f"build or machine; use --device cpu or auto")
        device = torch_module.device("mps")
        return device, f"training on mps ({why})"
    return torch_module.device("cpu"), f"training on cpu ({why})"
