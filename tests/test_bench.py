"""`cnnlab bench --quick` runs end to end and reports every figure the issue asks for."""

import json
import time

import pytest

import torch  # noqa: F401  (the benchmark compares against it: CI installs it)

from cnnlab.cli import main


@pytest.mark.slow
def test_quick_bench_writes_every_figure(tmp_path, data_root, capsys):
    out = tmp_path / "bench.json"
    status = main(["bench", "--quick", "--repeats", "2", "--epoch-images", "1280",
                   "--json", str(out), "--data-dir", str(data_root / "fashion-mnist")])
    assert status == 0
    results = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "GEMM" in printed and "speedup" in printed

    assert results["gemm"]["gflops_median"] > 0
    chosen = results["environment"]["backend"]
    assert chosen["level"] == chosen["runnable_levels"][-1]  # the best this CPU runs
    assert f"kernel level {chosen['level']}" in printed
    blas = results["environment"]["blas"]
    assert blas["library"] and "threads" in blas
    assert results["environment"]["torch"]["threads"] >= 1

    for op in ("conv1", "conv2", "pool1", "pool2"):
        for kind in ("forward", "forward+backward"):
            entry = results["ops"][f"{op} {kind}"]
            assert {"cnnlab", "torch_nchw", "torch_channels_last"} <= entry.keys()
            assert entry["cnnlab"]["min_s"] <= entry["cnnlab"]["median_s"] <= entry["cnnlab"]["max_s"]
            assert entry["speedup_vs_torch"] > 0
    for op in ("relu (conv1 output) forward+backward", "linear forward+backward",
               "cross-entropy forward+backward"):
        assert results["ops"][op]["speedup_vs_torch"] > 0

    for model in ("cnn", "mlp"):
        for kind in ("train step", "inference"):
            entry = results["models"][f"{model} {kind} batch 128"]
            assert entry["cnnlab"]["images_per_second"] > 0
            # The fraction is achieved FLOP/s over the run's best GEMM rate. Its size is a
            # timing (a GEMM timed while the machine was busy can push it past 1), so check
            # only that it is computed from the figures reported beside it.
            achieved = entry["flops_per_image"] * entry["cnnlab"]["images_per_second"]
            assert entry["fraction_of_gemm_bound"] == pytest.approx(
                achieved / (results["gemm"]["gflops_max"] * 1e9))
            assert entry["fraction_of_gemm_bound"] > 0
            assert entry["speedup_vs_torch"] > 0
    assert "torch_channels_last" in results["models"]["cnn train step batch 128"]

    epoch = results["epoch"]
    assert epoch["images"] == 1280
    assert epoch["times_gemm_bound"] == pytest.approx(epoch["cnnlab_seconds"] / epoch["gemm_bound_seconds"])
    assert epoch["cnnlab_seconds"] > 0 and epoch["gemm_bound_seconds"] > 0
    assert results["train_memory"]["peak_rss_mb"] > 20, results["train_memory"]


def test_timing_runs_each_function_in_blocks_after_an_untimed_call():
    # Alternating single calls let each library run against the other's spinning BLAS
    # threads; blocks with an untimed first call (and a pause) measure each on its own.
    from cnnlab.bench import time_interleaved

    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               repeats=5, warmup=1, block=2, settle=0.0)
    assert [len(timings[name].samples) for name in "ab"] == [5, 5]
    # warm-up a, b; then rounds of (1 untimed + 2 timed) a, likewise b; the last round has 1 timed.
    assert "".join(calls) == "ab" + "aaabbb" * 2 + "aabb"


def test_note_when_openblas_is_held_to_a_weaker_kernel_on_an_avx512_cpu(monkeypatch):
    from cnnlab import bench

    monkeypatch.setattr(bench, "_cpu_has_avx512", lambda: True)
    held_back = {"kernel": "Haswell", "env": {"OPENBLAS_CORETYPE": "Haswell"}}
    assert "unset OPENBLAS_CORETYPE" in bench.blas_kernel_note(held_back)
    assert bench.blas_kernel_note({"kernel": "SkylakeX", "env": {"OPENBLAS_CORETYPE": "SkylakeX"}}) is None
    assert bench.blas_kernel_note({"kernel": "Haswell", "env": {}}) is None
    monkeypatch.setattr(bench, "_cpu_has_avx512", lambda: False)
    assert bench.blas_kernel_note(held_back) is None


def test_short_calls_are_timed_in_runs_long_enough_to_measure():
    from cnnlab.bench import time_interleaved

    counts = {"fast": 0, "slow": 0}

    def fast():
        counts["fast"] += 1

    def slow():
        counts["slow"] += 1
        deadline = time.perf_counter() + 0.004
        while time.perf_counter() < deadline:
            pass

    timings = time_interleaved({"fast": fast, "slow": slow}, repeats=2, warmup=1, block=2,
                               settle=0.0, min_sample_seconds=0.003)
    assert counts["slow"] == 1 + 1 + 2      # warm-up, untimed, two samples of one call
    assert counts["fast"] > 1 + 1 + 2 * 50  # two samples of many calls each
    assert timings["slow"].median >= 0.004


def test_warm_up_calls_run_for_warm_seconds_before_the_samples():
    from cnnlab.bench import time_interleaved

    calls = []

    def slow():
        calls.append(time.perf_counter())
        deadline = time.perf_counter() + 0.002
        while time.perf_counter() < deadline:
            pass

    timings = time_interleaved({"slow": slow}, repeats=2, warmup=0, block=2, settle=0.0,
                               warm_seconds=0.02)
    assert len(timings["slow"].samples) == 2
    untimed, first_sample = calls[:-2], calls[-2]
    # Untimed calls start while the 20 ms run (how many depends on the machine's load: a
    # preempted call lasts longer), and the first timed call only after it.
    assert first_sample - untimed[0] >= 0.0199
    assert untimed[-1] - untimed[0] < 0.02


def _timing(min_s, max_s):
    return {"median_s": (min_s + max_s) / 2, "min_s": min_s, "max_s": max_s, "repeats": 5}


def test_a_busy_machine_is_said_and_its_ratios_are_not_printed():
    """Other processes using the CPU (or samples spread by more than 2x) make the output say so,
    and the noisy rows print 'busy' instead of a ratio such as 'cross-entropy 520x'."""
    from cnnlab import bench
    from cnnlab.backend import threads

    steady = {"cnnlab": _timing(1.0e-3, 1.2e-3), "torch_nchw": _timing(2.0e-3, 2.1e-3),
              "speedup_vs_torch": 1.8}
    noisy = {"cnnlab": _timing(0.01e-3, 8.0e-3), "torch_nchw": _timing(2.0e-3, 2.1e-3),
             "speedup_vs_torch": 520.0}
    assert not bench.is_noisy(steady) and bench.is_noisy(noisy)
    results = {"ops": {"conv1 forward": steady, "cross-entropy forward+backward": noisy}, "models": {},
               "load": {"others_busy_cores": 0.1, "cores": 2}}
    assert "spread by more than 2x" in bench.busy_note(results)
    assert bench._ratio(noisy, busy=True) == "busy" and bench._ratio(steady, busy=True) == "1.80x"

    results["ops"] = {"conv1 forward": steady}
    assert bench.busy_note(results) is None
    start, end = threads.Sample(), threads.Sample()
    start.wall, start.own, start.busy = 0.0, 0.0, 0.0
    end.wall, end.own, end.busy = 10.0, 10.0, 19.0   # others kept 0.9 of a core busy
    results["load"] = bench.machine_load(start, end)
    assert results["load"]["others_busy_cores"] == pytest.approx(0.9)
    assert "the machine was busy: other processes used 0.9 of" in bench.busy_note(results)
