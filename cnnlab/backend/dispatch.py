"""What runs here: the CPU, the compiled kernel levels, and the one level chosen for them.

A *level* names one build of the compiled kernels (cnnlab/backend/native/):

========== ==================================================================
numpy      no compiled code: every op runs its NumPy code (cnnlab.ops)
portable   plain C, any CPU
avx2       AVX2 + FMA (x86-64 since 2013-2015)
avx512     AVX-512 F/BW/DQ/VL (Intel Skylake-X and later, AMD Zen 4 and later)
neon       ARM64 NEON (Apple Silicon, ARM Linux)
========== ==================================================================

The compiled modules (``cnnlab.backend._sgemm``, ``cnnlab.backend._loops``) say which
levels they hold (``levels()``) and which this CPU runs (``cpu_levels()``); the backend
picks the best runnable one at first use, or the one ``CNNLAB_KERNELS`` (or
:func:`cnnlab.backend.use`) names. A level that cannot run here is refused with
:class:`KernelLevelError`, one line naming the levels that can.

Kernel families, each reported by :func:`families`: ``gemm`` (the float32 products of
conv and linear layers), ``loops`` (pool, ReLU, Adam, im2col), ``winograd`` (the
F(2x2, 3x3) transforms) and ``fused`` (the Conv -> ReLU -> MaxPool blocks).

The level is process-wide (shard threads must see what their caller chose), like the
flags of ``torch.backends``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from dataclasses import dataclass, field
from types import ModuleType

from cnnlab.errors import CnnlabError

#: Every level name, fastest last within each architecture.
LEVELS = ("numpy", "portable", "avx2", "avx512", "neon")
#: Preference when several run: the first one runnable wins.
PREFERENCE = ("avx512", "avx2", "neon", "portable", "numpy")
#: The CPU flags (from /proc/cpuinfo) each level needs.
REQUIRED_FLAGS = {
    "avx2": frozenset({"avx2", "fma"}),
    "avx512": frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"}),
    "neon": frozenset({"asimd"}),
}
#: Flags worth printing in ``cnnlab info`` and bug reports.
FLAGS_THAT_MATTER = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "asimd", "asimdhp", "sve")
ENVIRONMENT_VARIABLE = "CNNLAB_KERNELS"


class KernelLevelError(CnnlabError, ValueError):
    """A kernel level was asked for that is unknown, not compiled, or beyond this CPU."""


# ---------------------------------------------------------------------------
# The CPU
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuDescription:
    """What the kernel choice needs to know about a CPU (tests build fake ones)."""

    arch: str                       # "x86_64", "aarch64", ...
    model: str = "unknown CPU"
    flags: frozenset = field(default_factory=frozenset)

    def can_run(self, level: str) -> bool:
        if level in ("numpy", "portable"):
            return True
        if level == "neon":
            return self.arch in ("aarch64", "arm64")  # NEON is part of every ARMv8-A core
        if self.arch not in ("x86_64", "amd64"):
            return False
        return REQUIRED_FLAGS[level] <= self.flags


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, frozenset]:
    model, flags = "", frozenset()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def _detect_cpu() -> CpuDescription:
    arch = platform.machine().lower()
    model, flags = _read_cpuinfo()
    if not model and platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
    if arch == "arm64" and not flags:
        flags = frozenset({"asimd"})  # macOS: no /proc/cpuinfo, and every Apple core has NEON
    return CpuDescription(arch=arch, model=model or platform.processor() or "unknown CPU", flags=flags)


def _sysctl(name: str) -> str:
    import subprocess

    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                              timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ---------------------------------------------------------------------------
# The compiled modules, and what each can run
# ---------------------------------------------------------------------------

def _build_reason() -> str | None:
    """What setup.py recorded when it built no native code (cnnlab/backend/_build_info.py)."""
    try:
        from cnnlab.backend import _build_info
    except ImportError:   # never built: running from a source tree
        return None
    return None if _build_info.NATIVE else f"built without native code: {_build_info.REASON}"


class _Native:
    """The two compiled modules, imported once, and why either is missing."""

    def __init__(self) -> None:
        self.sgemm: ModuleType | None = None
        self.loops: ModuleType | None = None
        self.missing: dict[str, str] = {}
        for name in ("_sgemm", "_loops"):
            try:
                module = __import__(f"cnnlab.backend.{name}", fromlist=[name])
            except ImportError as error:
                self.missing[name] = _build_reason() or (
                    f"cnnlab.backend.{name} is not built ({error}); reinstall with a C compiler "
                    "(pip install --force-reinstall --no-deps .) or install a wheel")
                continue
            setattr(self, name[1:], module)

    def modules(self) -> list[ModuleType]:
        return [module for module in (self.sgemm, self.loops) if module is not None]

    @staticmethod
    def levels_of(module: ModuleType) -> tuple[str, ...]:
        return tuple(module.levels())

    @staticmethod
    def cpu_levels_of(module: ModuleType) -> tuple[str, ...]:
        return tuple(module.cpu_levels())


def compiled_levels(native: _Native) -> tuple[str, ...]:
    found = {level for module in native.modules() for level in native.levels_of(module)}
    return tuple(level for level in LEVELS if level in found)


def runnable_levels_for(cpu: CpuDescription, native: _Native) -> tuple[str, ...]:
    """numpy, then every compiled level that this CPU (and each module that has it) can run."""
    runnable = ["numpy"]
    for level in compiled_levels(native):
        modules = [module for module in native.modules() if level in native.levels_of(module)]
        if cpu.can_run(level) and all(level in native.cpu_levels_of(module) for module in modules):
            runnable.append(level)
    return tuple(runnable)


def choose_level(requested: str | None, runnable: tuple[str, ...], compiled: tuple[str, ...],
                 source: str = ENVIRONMENT_VARIABLE) -> str:
    """The level to run: ``requested`` when it can run here, else the best runnable one.

    Raises:
        KernelLevelError: ``requested`` is unknown, not compiled, or beyond this CPU.
    """
    if not requested:
        return next(level for level in PREFERENCE if level in runnable)
    name = requested.strip().lower()
    can_run = ", ".join(runnable)
    if name not in LEVELS:
        raise KernelLevelError(f"{source}={requested!r} is not a kernel level; use one of "
                               f"{', '.join(LEVELS)} (this machine runs: {can_run})")
    if name not in runnable:
        why = "is not compiled in this install" if name not in compiled else "needs CPU features this CPU lacks"
        raise KernelLevelError(f"{source}={name} cannot run here: it {why}; levels that can run "
                               f"here: {can_run} (unset {ENVIRONMENT_VARIABLE} for the best one)")
    return name


# ---------------------------------------------------------------------------
# The process-wide choice
# ---------------------------------------------------------------------------

class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cpu: CpuDescription | None = None
        self.native: _Native | None = None
        self.level: str | None = None
        self.resolved_for: tuple | None = None   # (environment value, override) of self.level
        self.override: str | None = None          # set by use()


_STATE = _State()


def cpu() -> CpuDescription:
    """This machine's CPU, detected once."""
    if _STATE.cpu is None:
        with _STATE.lock:
            if _STATE.cpu is None:
                _STATE.cpu = _detect_cpu()
    return _STATE.cpu


def native() -> _Native:
    if _STATE.native is None:
        with _STATE.lock:
            if _STATE.native is None:
                _STATE.native = _Native()
    return _STATE.native


def runnable_levels() -> tuple[str, ...]:
    """The levels this machine can run, "numpy" first."""
    return runnable_levels_for(cpu(), native())


def level() -> str:
    """The level the kernels run at now (resolved at first use; see the module docs)."""
    key = (os.environ.get(ENVIRONMENT_VARIABLE, ""), _STATE.override)
    if _STATE.resolved_for == key:
        return _STATE.level
    # Shard threads ask at once: the first resolves, the others wait (none may see "nothing
    # compiled" halfway through the import and run that step in NumPy: other rounding).
    with _STATE.lock:
        if _STATE.resolved_for != key:
            environment, override = key
            requested, source = ((override, "cnnlab.backend.use") if override is not None
                                 else (environment, ENVIRONMENT_VARIABLE))
            chosen = choose_level(requested or None, runnable_levels(), compiled_levels(native()),
                                  source)
            _apply(chosen)
            _STATE.level, _STATE.resolved_for = chosen, key
    return _STATE.level


def level_source() -> str:
    """Who chose the level: ``use()``, ``CNNLAB_KERNELS``, or the best for this CPU."""
    if _STATE.override is not None:
        return "cnnlab.backend.use"
    if os.environ.get(ENVIRONMENT_VARIABLE, "").strip():
        return f"{ENVIRONMENT_VARIABLE}={os.environ[ENVIRONMENT_VARIABLE].strip()}"
    return "best for this CPU"


def _apply(chosen: str) -> None:
    state = native()
    for module in state.modules():
        if chosen in state.levels_of(module) and hasattr(module, "set_level"):
            module.set_level(chosen)


def reset() -> None:
    """Forget the CPU, the modules and the choice (tests fake them)."""
    with _STATE.lock:
        _STATE.cpu = _STATE.native = _STATE.level = _STATE.resolved_for = None


@contextlib.contextmanager
def use(name: str):
    """Run the kernels at level ``name`` inside the ``with`` block (process-wide), e.g.::

        with cnnlab.backend.use("avx2"):
            model(x)

    Raises:
        KernelLevelError: the level cannot run here (the message names those that can).
    """
    with _STATE.lock:
        previous = _STATE.override
        _STATE.override = name
        try:
            level()
        except KernelLevelError:
            _STATE.override = previous
            raise
    try:
        yield name
    finally:
        with _STATE.lock:
            _STATE.override = previous
            _STATE.resolved_for = None
        level()


def _module_at_level(module: ModuleType | None) -> ModuleType | None:
    current = level()
    if module is None or current == "numpy" or current not in native().levels_of(module):
        return None
    return module


def loops() -> ModuleType | None:
    """``cnnlab.backend._loops`` when the chosen level has it, else None (run the NumPy code)."""
    return _module_at_level(native().loops)


def sgemm() -> ModuleType | None:
    """``cnnlab.backend._sgemm`` when the chosen level has it, else None (NumPy's BLAS)."""
    return _module_at_level(native().sgemm)


def winograd_loops() -> ModuleType | None:
    """The loops when their Winograd transforms run at the chosen level."""
    module = loops()
    usable = getattr(module, "winograd_usable", None)
    return module if module is not None and (usable is None or usable()) else None


def fused_loops() -> ModuleType | None:
    """The loops when their direct Conv -> ReLU -> MaxPool block runs at the chosen level."""
    module = loops()
    usable = getattr(module, "conv_relu_pool_usable", None)
    return module if module is not None and (usable is None or usable()) else None


def contiguous_float(*arrays) -> bool:
    """True when the arrays are C-contiguous and all float32 or all float64 (what the loops take)."""
    dtype = arrays[0].dtype
    return dtype.char in "fd" and all(array.dtype == dtype and array.flags.c_contiguous
                                      for array in arrays)


def families() -> dict[str, str]:
    """Which implementation each kernel family runs now, in words."""
    current = level()
    compiled_text = f"compiled ({current})"
    return {
        "gemm": _gemm_description(),
        "loops": f"cnnlab loops, {compiled_text}" if loops() is not None else "NumPy",
        "winograd": (f"F(2x2, 3x3), {compiled_text}" if winograd_loops() is not None
                     else "off (3x3 convolutions run as im2col)"),
        "fused": (f"Conv -> ReLU -> MaxPool in one op, {compiled_text}" if fused_loops() is not None
                  else "off (the layers run one after the other)"),
    }


def _gemm_description() -> str:
    from cnnlab.backend import gemm  # gemm imports this module

    return gemm.describe()


def why_native_missing() -> str | None:
    """Why no compiled code runs here, in one line; None when it does."""
    state = native()
    if state.missing:
        return "; ".join(state.missing.values())
    if not compiled_levels(state):
        return "the compiled modules hold no level this CPU runs"
    return None
