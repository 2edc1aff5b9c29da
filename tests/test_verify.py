"""`cnnlab verify`: the quick sweep passes, its JSON is complete, and a broken op is caught."""

from __future__ import annotations

import json

import numpy as np
import torch  # noqa: F401  (the sweep compares against PyTorch: fail, not skip, without it)

import cnnlab.ops.activation
import cnnlab.verify
from cnnlab.cli import main

CHECKS_WITH_GRADIENTS = {"forward vs PyTorch", "grads vs PyTorch", "grads vs finite diff.",
                         "float32 vs float64"}


def test_quick_sweep_passes_and_writes_complete_json(tmp_path, capsys):
    report_path = tmp_path / "verify.json"
    assert main(["verify", "--quick", "--json", str(report_path)]) == 0
    output = capsys.readouterr().out
    assert "FAIL" not in output and "PASS: all" in output

    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["quick"] is True and report["torch"]
    assert list(report["ops"]) == list(cnnlab.verify.OPS)
    for name, result in report["ops"].items():
        assert result["passed"] and result["error"] is None, name
        assert result["configs"] >= 2, name
        for check in result["checks"].values():
            assert check["worst_error"] <= check["tolerance"], name
    for name in ("conv2d", "linear", "relu", "cross_entropy", "batch_norm", "dropout"):
        assert CHECKS_WITH_GRADIENTS <= set(report["ops"][name]["checks"]), name
    assert "fast vs naive" in report["ops"]["conv2d"]["checks"]
    # Pool ties have no derivative, but the tie configurations still face PyTorch.
    assert report["ops"]["max_pool2d"]["checks"]["grads vs PyTorch"]["passed"]


def test_broken_backward_is_reported_as_failure(tmp_path, capsys, monkeypatch):
    def wrong_relu_backward(dy, cache):
        return dy  # ignores the mask: the gradient is wrong wherever x < 0

    monkeypatch.setattr(cnnlab.ops.activation, "relu_backward", wrong_relu_backward)
    report_path = tmp_path / "verify.json"
    status = main(["verify", "--quick", "--ops", "relu,tanh", "--json", str(report_path)])
    assert status == 1
    assert "FAIL: relu" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert list(report["ops"]) == ["relu", "tanh"] and report["passed"] is False
    relu_checks = report["ops"]["relu"]["checks"]
    assert not relu_checks["grads vs PyTorch"]["passed"]
    assert not relu_checks["grads vs finite diff."]["passed"]
    assert relu_checks["forward vs PyTorch"]["passed"]
    assert report["ops"]["tanh"]["passed"]


def test_op_that_upcasts_float32_fails(monkeypatch):
    original = cnnlab.ops.activation.tanh_forward
    monkeypatch.setattr(cnnlab.ops.activation, "tanh_forward",
                        lambda x: original(x.astype(np.float64)))
    report = cnnlab.verify.run_verify(["tanh"], quick=True)
    assert not report["ops"]["tanh"]["checks"]["float32 vs float64"]["passed"]
    assert report["ops"]["tanh"]["checks"]["float32 vs float64"]["worst_error"] is None


def test_without_pytorch_uses_finite_differences_only(monkeypatch, capsys):
    monkeypatch.setattr(cnnlab.verify, "_import_torch", lambda: None)
    assert main(["verify", "--quick", "--ops", "linear,sigmoid"]) == 0
    output = capsys.readouterr().out
    assert "PyTorch not installed: finite differences only" in output
    assert "vs PyTorch" not in output and "grads vs finite diff." in output


def test_same_seed_gives_same_report():
    first = cnnlab.verify.run_verify(["linear", "batch_norm"], seed=3, quick=True)
    second = cnnlab.verify.run_verify(["linear", "batch_norm"], seed=3, quick=True)
    assert first["ops"] == second["ops"]


def test_unknown_op_is_a_one_line_error(capsys):
    assert main(["verify", "--ops", "conv3d"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown op conv3d" in error and "conv2d" in error


def test_json_into_missing_folder_fails_before_the_sweep(tmp_path, capsys):
    assert main(["verify", "--ops", "relu", "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "folder does not exist" in capsys.readouterr().err


def test_dropout_is_verified_and_a_wrong_scale_is_caught(monkeypatch):
    import cnnlab.ops.dropout as dropout

    assert cnnlab.verify.run_verify(["dropout"], quick=True)["passed"]
    original = dropout.dropout_forward

    def unscaled(x, p, training, rng):  # forgets the 1 / (1 - p) of inverted dropout
        y, mask = original(x, p, training, rng)
        return (y * (1 - p), mask) if training and 0 < p < 1 else (y, mask)
    monkeypatch.setattr(dropout, "dropout_forward", unscaled)
    report = cnnlab.verify.run_verify(["dropout"], quick=True)
    assert not report["ops"]["dropout"]["checks"]["forward vs PyTorch"]["passed"]


def test_engine_paths_run_at_every_level_and_catch_a_wrong_fast_path(monkeypatch):
    """By default verify checks the float32 paths training takes (Winograd, the fused blocks,
    the GEMM, the compiled loops) at every level this CPU runs; a fast path off by more than
    float32 rounding fails, though the float64 reference sweep still passes."""
    from cnnlab import backend
    from cnnlab.backend import kernels

    report = cnnlab.verify.run_verify(["linear", "conv2d"], quick=True)
    engine = report["engine"]
    assert engine["levels"] == list(backend.runnable_levels())
    assert {"conv Winograd (16->12, k3 p1, 10x10)", "linear 196->48, batch 64"} <= set(engine["paths"])
    for rows in engine["paths"].values():
        assert set(rows) == set(engine["levels"]) and all(row["passed"] for row in rows.values())
    winograd = engine["paths"]["conv Winograd (16->12, k3 p1, 10x10)"]
    for level, row in winograd.items():
        with backend.use(level):  # Winograd exactly where the backend says it runs
            assert (row["path"] == "winograd") == (backend.dispatch.winograd_loops() is not None)

    original = kernels.linear_forward

    def slightly_wrong(x, weight, bias=None):
        y, cache = original(x, weight, bias)
        return y * np.float32(1 + 1e-4), cache  # 1e-4 relative: far above float32 rounding

    monkeypatch.setattr(kernels, "linear_forward", slightly_wrong)
    monkeypatch.setattr(backend, "linear_forward", slightly_wrong)
    report = cnnlab.verify.run_verify(["linear"], quick=True)
    assert report["ops"]["linear"]["passed"] and not report["passed"]
    assert not any(row["passed"] for row in report["engine"]["paths"]["linear 196->48, batch 64"].values())
    assert "FAIL: linear 196->48, batch 64 (numpy)" in cnnlab.verify.format_report(report)
