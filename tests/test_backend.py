"""The backend's choice of what runs (cnnlab/backend/dispatch.py), on faked CPUs and builds,
and the thread policy's arithmetic (cnnlab/backend/threads.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cnnlab import backend
from cnnlab.backend import dispatch, threads
from cnnlab.backend.dispatch import CpuDescription, KernelLevelError
from cnnlab.cli import main

ZEN3 = CpuDescription("x86_64", "AMD EPYC 7B13 (Zen 3)", frozenset({"sse4_2", "avx", "avx2", "fma"}))
ZEN5 = CpuDescription("x86_64", "AMD EPYC (Zen 5)", ZEN3.flags | {"avx512f", "avx512bw", "avx512dq",
                                                                  "avx512vl"})
OLD_X86 = CpuDescription("x86_64", "Intel Core 2", frozenset({"sse4_1"}))
APPLE = CpuDescription("arm64", "Apple M2", frozenset({"asimd"}))


class _Module:
    """A compiled module as the native build gives it: levels(), cpu_levels(), set_level()."""

    def __init__(self, levels, cpu_levels):
        self._levels, self._cpu_levels, self.level = tuple(levels), tuple(cpu_levels), None

    def levels(self):
        return self._levels

    def cpu_levels(self):
        return self._cpu_levels

    def set_level(self, name):
        if name not in self._cpu_levels:
            raise ValueError(name)
        self.level = name


def _native(sgemm, loops):
    native = dispatch._Native.__new__(dispatch._Native)
    native.sgemm, native.loops, native.missing = sgemm, loops, {}
    return native


X86_BUILD = ("portable", "avx2", "avx512")


@pytest.mark.parametrize("cpu, build, expected", [
    (ZEN5, X86_BUILD, ("numpy", "portable", "avx2", "avx512")),
    (ZEN3, X86_BUILD, ("numpy", "portable", "avx2")),
    (OLD_X86, X86_BUILD, ("numpy", "portable")),
    (APPLE, ("portable", "neon"), ("numpy", "portable", "neon")),
])
def test_runnable_levels_follow_the_cpu(cpu, build, expected):
    native = _native(_Module(build, build), _Module(build, build))
    assert dispatch.runnable_levels_for(cpu, native) == expected
    best = dispatch.choose_level(None, expected, build)
    assert best == expected[-1]  # the fastest that runs


def test_a_level_the_module_says_the_cpu_lacks_is_not_runnable():
    """The modules' own cpu_levels() have the last word (e.g. the OS has AVX-512 state off)."""
    native = _native(_Module(X86_BUILD, ("portable", "avx2")), _Module(X86_BUILD, ("portable", "avx2")))
    assert dispatch.runnable_levels_for(ZEN5, native) == ("numpy", "portable", "avx2")


@pytest.mark.parametrize("requested, message", [
    ("avx512", "CNNLAB_KERNELS=avx512 cannot run here: it needs CPU features this CPU lacks; "
               "levels that can run here: numpy, portable, avx2"),
    ("neon", "CNNLAB_KERNELS=neon cannot run here: it is not compiled in this install"),
    ("sse9", "CNNLAB_KERNELS='sse9' is not a kernel level; use one of numpy, portable, avx2, avx512, neon"),
])
def test_a_level_that_cannot_run_is_refused_in_one_line(requested, message):
    native = _native(_Module(X86_BUILD, X86_BUILD), _Module(X86_BUILD, X86_BUILD))
    runnable = dispatch.runnable_levels_for(ZEN3, native)
    with pytest.raises(KernelLevelError) as error:
        dispatch.choose_level(requested, runnable, dispatch.compiled_levels(native))
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


@pytest.fixture
def fake_machine(monkeypatch):
    """This process's backend sees a Zen 3 CPU and a build of portable, avx2 and avx512."""
    native = _native(_Module(X86_BUILD, X86_BUILD), _Module(X86_BUILD, X86_BUILD))
    monkeypatch.delenv("CNNLAB_KERNELS", raising=False)
    dispatch.reset()
    monkeypatch.setattr(dispatch._STATE, "cpu", ZEN3)
    monkeypatch.setattr(dispatch._STATE, "native", native)
    yield native
    monkeypatch.undo()
    dispatch.reset()


def test_the_best_level_is_chosen_and_applied_to_the_modules(fake_machine):
    assert backend.level() == "avx2"
    assert fake_machine.sgemm.level == fake_machine.loops.level == "avx2"
    with backend.use("portable"):
        assert backend.level() == "portable" and fake_machine.loops.level == "portable"
        assert dispatch.level_source() == "cnnlab.backend.use"
    assert backend.level() == "avx2" and fake_machine.loops.level == "avx2"


def test_use_refuses_a_level_and_keeps_the_current_one(fake_machine):
    with pytest.raises(KernelLevelError, match="levels that can run here: numpy, portable, avx2"):
        with backend.use("avx512"):
            pass
    assert backend.level() == "avx2"


def test_the_cli_refuses_a_forced_level_in_one_line(fake_machine, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_KERNELS", "avx512")
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: CNNLAB_KERNELS=avx512 cannot run here")
    assert "numpy, portable, avx2" in err and err.count("\n") == 1


def test_cnnlab_info_prints_the_chosen_level(fake_machine, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "AMD EPYC 7B13 (Zen 3)" in out
    assert "kernel level     avx2 (best for this CPU)" in out
    assert "runnable levels  numpy, portable, avx2" in out
    assert main(["info", "--json"]) == 0
    assert '"level": "avx2"' in capsys.readouterr().out


def test_cnnlab_info_says_why_no_native_code_runs(monkeypatch, capsys):
    native = _native(None, None)
    native.missing = {"_loops": "cnnlab.backend._loops is not built (no compiler)"}
    dispatch.reset()
    monkeypatch.setattr(dispatch._STATE, "native", native)
    try:
        assert main(["info"]) == 0
        out = capsys.readouterr().out
        assert "kernel level     numpy" in out and "_loops is not built (no compiler)" in out
    finally:
        monkeypatch.undo()
        dispatch.reset()


def test_numpy_level_runs_everything_in_numpy():
    """CNNLAB_KERNELS=numpy in a fresh process: no compiled function is ever called."""
    code = """
import numpy as np
from cnnlab import backend
from cnnlab.backend import dispatch
calls = []
class Spy:
    def __init__(self, module): self.module = module
    def __getattr__(self, name):
        calls.append(name)
        return getattr(self.module, name)
native = dispatch.native()
native.sgemm, native.loops = Spy(native.sgemm), Spy(native.loops)
from cnnlab.models import build_model
from cnnlab.optim import Adam
from cnnlab.ops.loss import cross_entropy
model = build_model("cnn", np.random.default_rng(0))
optimizer = Adam(model.parameters())
x = np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32)
loss, dlogits = cross_entropy(model(x), np.zeros(64, dtype=np.int64))
model.backward(dlogits)
optimizer.step()
assert backend.level() == "numpy"
print(sorted(set(name for name in calls if name not in ("levels", "cpu_levels", "avx512"))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**__import__("os").environ, "CNNLAB_KERNELS": "numpy"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("others, cores, expected", [
    (0.0, 2, 2), (0.3, 2, 2), (0.7, 2, 1), (1.0, 2, 1), (2.0, 2, 1), (5.0, 8, 3), (0.0, 1, 1),
])
def test_threads_are_the_cores_left_by_other_processes(others, cores, expected):
    assert threads.free_cores(others, cores) == expected


def test_the_policy_measures_other_processes_from_machine_and_own_cpu_time(monkeypatch):
    policy = threads.Policy()
    monkeypatch.setattr(threads, "affinity_cores", lambda: 2)
    earlier, later = threads.Sample(), threads.Sample()
    earlier.wall, earlier.own, earlier.busy = 0.0, 0.0, 100.0
    # in 2 s the machine was busy 3.9 CPU-seconds, 2.0 of them ours: others used ~1 core
    later.wall, later.own, later.busy = 2.0, 2.0, 103.9
    assert policy._measure(earlier, later) == 1
    assert policy.others == pytest.approx(0.95)
    later.busy = 102.1  # others: 0.05 cores
    assert policy._measure(earlier, later) == 2


def test_workers_are_capped_by_the_blas_variables(monkeypatch):
    monkeypatch.setattr(threads._POLICY, "free", lambda refresh=False: 2)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert threads.workers() == 1
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.workers() == 2 and threads.workers(limit=1) == 1


def test_one_thread_region_is_per_thread():
    """A shard marking its products one-thread does not make another thread's products so."""
    import threading

    from cnnlab.backend import gemm

    seen = []
    with gemm.one_thread_blas():
        worker = threading.Thread(target=lambda: seen.append(gemm.in_one_thread_region()))
        worker.start()
        worker.join()
        assert gemm.in_one_thread_region()
    assert seen == [False] and not gemm.in_one_thread_region()


def test_module_clear_cache_forgets_every_forward(rng):
    from cnnlab.models import build_model

    model = build_model("cnn", rng)
    logits = model(rng.standard_normal((4, 1, 28, 28)).astype(np.float32))
    assert model.plan is not None and any(module.cached() for module in model.modules())
    model.clear_cache()
    assert model.plan is None and not any(module.cached() for module in model.modules())
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones_like(logits))


def test_the_first_estimate_counts_the_other_runnable_threads(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.58 0.59 3/812 12345\n")
    assert threads._runnable_now(str(loadavg)) == 3
    assert threads._runnable_now(str(tmp_path / "missing")) is None
    policy = threads.Policy()
    monkeypatch.setattr(threads, "_runnable_now", lambda: 2)  # the caller and one busy process
    monkeypatch.setattr(threads, "_own_running_threads", lambda: 1)
    monkeypatch.setattr(threads, "affinity_cores", lambda: 2)
    assert policy.free() == 1 and policy.others == 1.0


def test_the_first_estimate_is_measured_again_soon(monkeypatch):
    """An instant's runnable threads (a process starting just then) hold the workers only
    until the first interval, FIRST_RECHECK_SECONDS later; then every RECHECK_SECONDS."""
    clock = [100.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads, "_runnable_now", lambda: 3)   # the caller and two others
    monkeypatch.setattr(threads, "_own_running_threads", lambda: 1)
    monkeypatch.setattr(threads, "affinity_cores", lambda: 2)
    measured = []

    def measure(previous, current):
        measured.append(current.wall - previous.wall)
        return 2                                               # they were gone
    policy = threads.Policy()
    monkeypatch.setattr(policy, "_measure", measure)
    assert policy.free() == 1
    clock[0] += threads.FIRST_RECHECK_SECONDS / 2
    assert policy.free() == 1 and measured == []
    clock[0] += threads.FIRST_RECHECK_SECONDS
    assert policy.free() == 2 and measured == [pytest.approx(1.5 * threads.FIRST_RECHECK_SECONDS)]
    clock[0] += threads.FIRST_RECHECK_SECONDS * 2
    assert policy.free() == 2 and len(measured) == 1            # now every RECHECK_SECONDS
    clock[0] += threads.RECHECK_SECONDS
    assert policy.free() == 2 and len(measured) == 2


def test_the_first_estimate_leaves_out_this_processs_own_running_threads(monkeypatch):
    """Two runnable threads, both ours (e.g. OpenMP workers still spinning after a torch
    call in the same process): no other process is busy, both cores are free."""
    policy = threads.Policy()
    monkeypatch.setattr(threads, "_runnable_now", lambda: 2)
    monkeypatch.setattr(threads, "_own_running_threads", lambda: 2)
    monkeypatch.setattr(threads, "affinity_cores", lambda: 2)
    assert policy.free() == 2 and policy.others == 0.0


def test_own_running_threads_reads_the_state_after_the_command_name(tmp_path):
    for task, stat in (("1", "1 (python) R 0 1"), ("2", "2 (odd ) name) S 0 1"),
                       ("3", "3 (w) R 0 1")):
        (tmp_path / task).mkdir()
        (tmp_path / task / "stat").write_text(stat)
    assert threads._own_running_threads(str(tmp_path)) == 2
    assert threads._own_running_threads(str(tmp_path / "missing")) is None
