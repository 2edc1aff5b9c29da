"""`cnnlab train --backend torch`: the same models, data order, run folder and checkpoints as the
NumPy engine; parity of the two on the CPU; devices; runs without torch installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.errors import ConfigError
from test_train import assert_same_checkpoint, read_metrics, without_timings
from test_train_resume import interrupt_at_random_step

REPO = Path(__file__).resolve().parent.parent
SPECS = ["mlp", "cnn", "cnn-bn", "c4k5s2p2-lrelu0.1-ap2-bn-c6k3psame-tanh-flatten-fc12-sigmoid",
         "784-40-10"]


def run_train(*options) -> int:
    return main(["train", "--no-progress", "--no-report", *map(str, options)])


def steps_of(run: Path) -> list[dict]:
    return [record for record in read_metrics(run) if record["kind"] == "step"]


def epoch_of(run: Path) -> dict:
    return [record for record in read_metrics(run) if record["kind"] == "epoch"][-1]


# --------------------------------------------------------------------------- the modules


@pytest.mark.parametrize("spec", SPECS)
def test_torch_module_has_cnnlab_keys_shapes_and_outputs(spec):
    from cnnlab.models import build_model
    from cnnlab.torch_backend.modules import NumpyView, build_torch_model, numpy_state

    numpy_model = build_model(spec, np.random.default_rng(3))
    module = build_torch_model(spec, (1, 28, 28), 10, numpy_model.state_dict())
    ours, theirs = numpy_model.state_dict(), numpy_state(module)
    assert list(ours) == list(theirs)
    for key in ours:
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype, key
        assert np.array_equal(ours[key], theirs[key]), key
    x = np.random.default_rng(4).standard_normal((5, 1, 28, 28)).astype(np.float32)
    numpy_model.eval()
    view = NumpyView(module, torch.device("cpu")).eval()
    np.testing.assert_allclose(view(x), numpy_model(x), rtol=1e-4, atol=1e-5)


def test_optimizer_state_moves_between_backends():
    """torch.optim state saved in cnnlab's layout loads into cnnlab's optimizer and back."""
    from cnnlab.models import build_model
    from cnnlab.optim import Adam
    from cnnlab.torch_backend.modules import build_torch_model
    from cnnlab.torch_backend.optim import load_numpy_optimizer_state, optimizer_state_to_numpy

    numpy_model = build_model("mlp", np.random.default_rng(0))
    module = build_torch_model("mlp", (1, 28, 28), 10, numpy_model.state_dict())
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01, weight_decay=0.1)
    module(torch.ones(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    state = optimizer_state_to_numpy(optimizer)
    assert set(state["param_groups"][0]) == {"lr", "betas", "eps", "weight_decay", "params"}
    cnnlab_adam = Adam(numpy_model.parameters())
    cnnlab_adam.load_state_dict(state)
    assert cnnlab_adam.lr == 0.01 and cnnlab_adam.state[0]["step"] == 1
    again = torch.optim.Adam(module.parameters())
    load_numpy_optimizer_state(again, cnnlab_adam.state_dict())
    for ours, theirs in zip(optimizer.state_dict()["state"].values(),
                            again.state_dict()["state"].values()):
        assert torch.equal(ours["exp_avg_sq"], theirs["exp_avg_sq"])
        assert float(ours["step"]) == float(theirs["step"])
    assert again.param_groups[0]["weight_decay"] == 0.1


# --------------------------------------------------------------------------- parity


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "c8k3p1-bn-p2-fc32"])
def test_one_epoch_on_each_backend_agrees(model, tiny_fashion, tmp_path):
    """Same spec, seed and initial weights: per-step losses to float32 tolerance for the first
    20 steps, test accuracy within 0.5 points after one epoch (2,048 images, 1,000 test)."""
    runs = {}
    for backend in ("numpy", "torch"):
        runs[backend] = tmp_path / backend
        assert run_train("--model", model, "--dataset", tiny_fashion, "--epochs", "1",
                         "--batch-size", "64", "--log-every", "1", "--backend", backend,
                         "--run-dir", runs[backend]) == 0
    numpy_steps, torch_steps = steps_of(runs["numpy"]), steps_of(runs["torch"])
    assert len(numpy_steps) == len(torch_steps) == 32
    for ours, theirs in zip(numpy_steps[:20], torch_steps[:20]):
        assert theirs["loss"] == pytest.approx(ours["loss"], rel=2e-4, abs=1e-5), ours["step"]
        assert theirs["lr"] == pytest.approx(ours["lr"], rel=1e-6)
    numpy_epoch, torch_epoch = epoch_of(runs["numpy"]), epoch_of(runs["torch"])
    assert abs(numpy_epoch["test_accuracy"] - torch_epoch["test_accuracy"]) <= 0.005
    assert numpy_epoch["test_accuracy"] > 0.6   # it learned something: the comparison means something
    config = json.loads((runs["torch"] / "config.json").read_text())
    assert config["backend"] == "torch" and config["world_size"] == 1


@pytest.mark.slow
def test_torch_checkpoint_works_with_every_command(data_root, tmp_path, capsys):
    from conftest import make_tiny_dataset

    data = make_tiny_dataset(data_root, tmp_path / "data", train=256, test=200)
    run = tmp_path / "run"
    assert main(["train", "--backend", "torch", "--device", "cpu", "--model", "cnn-bn",
                 "--dataset", str(data), "--epochs", "1", "--no-progress", "--val-fraction", "0.25",
                 "--run-dir", str(run)]) == 0
    assert "training on cpu (--device cpu)" in capsys.readouterr().out
    for name in ("config.json", "metrics.jsonl", "checkpoint.npz", "summary.json", "report.html"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backend"] == "torch" and summary["val_accuracy"] is not None

    assert main(["evaluate", str(run), "--json", str(tmp_path / "evaluation.json")]) == 0
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    capsys.readouterr()

    from cnnlab.data import read_idx, write_idx
    images = tmp_path / "three-idx3-ubyte"
    write_idx(images, read_idx(data / "t10k-images-idx3-ubyte")[:3])
    assert main(["predict", str(run), str(images), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["plot", "filters", str(run), "--out", str(tmp_path / "filters.png")]) == 0
    assert (tmp_path / "filters.png").stat().st_size > 1000
    assert main(["report", str(run)]) == 0


def test_numpy_checkpoint_loads_into_the_torch_backend(tiny_fashion, tmp_path):
    """The other direction: a NumPy run's checkpoint gives the torch module its weights."""
    from cnnlab.checkpoint import load_checkpoint, model_from_checkpoint
    from cnnlab.torch_backend.modules import NumpyView, build_torch_model

    run = tmp_path / "numpy"
    assert run_train("--model", "cnn-bn", "--dataset", tiny_fashion, "--limit-train", "128",
                     "--limit-test", "64", "--epochs", "1", "--run-dir", run) == 0
    checkpoint = load_checkpoint(run / "checkpoint.npz")
    module = build_torch_model("cnn-bn", checkpoint.meta["input_shape"],
                               checkpoint.meta["num_classes"], checkpoint.model_state)
    numpy_model = model_from_checkpoint(checkpoint)
    numpy_model.eval()
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(NumpyView(module, torch.device("cpu")).eval()(x), numpy_model(x),
                               rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_torch_run_interrupted_then_resumed_equals_an_uninterrupted_run(tiny_fashion, tmp_path):
    options = ["train", "--backend", "torch", "--model", "c6k3p1-bn-p2-flatten-drop0.3-fc32",
               "--dataset", str(tiny_fashion), "--epochs", "2", "--batch-size", "16",
               "--limit-train", "512", "--limit-test", "100", "--log-every", "1", "--no-report",
               "--no-progress", "--val-fraction", "0.0625", "--optimizer", "sgd",
               "--schedule", "cosine", "--threads", "1"]   # torch's sums depend on its threads
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(options + ["--run-dir", str(reference)]) == 0
    code, output, _ = interrupt_at_random_step(options, interrupted, signal.SIGINT, 5)
    assert code == 130, output
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    assert without_timings(read_metrics(interrupted)) == without_timings(read_metrics(reference))
    assert_same_checkpoint(reference, interrupted)


# --------------------------------------------------------------------------- devices


def fake_torch(cuda: int = 0, mps: bool = False):
    """A stand-in for the torch module: ``cuda`` GPUs and maybe Apple's MPS."""
    return types.SimpleNamespace(
        __version__="2.13.0",
        version=types.SimpleNamespace(cuda="12.8" if cuda else None),
        cuda=types.SimpleNamespace(is_available=lambda: cuda > 0, device_count=lambda: cuda,
                                   get_device_name=lambda index: f"Fake GPU {index}"),
        backends=types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps)),
        device=lambda kind, index=None: f"{kind}:{index}" if index is not None else kind,
    )


@pytest.mark.parametrize("requested, cuda, mps, local_rank, expected, why", [
    ("auto", 2, True, 0, "cuda:0", "2 CUDA GPUs found"),
    ("auto", 2, False, 1, "cuda:1", "2 CUDA GPUs found"),     # torchrun: one GPU per rank
    ("auto", 0, True, 0, "mps", "Apple MPS found"),
    ("auto", 0, False, 0, "cpu", "no CUDA or MPS device found"),
    ("cuda", 1, False, 0, "cuda:0", "--device cuda"),
    ("cuda:1", 2, False, 0, "cuda:1", "--device cuda:1"),
    ("cpu", 4, True, 0, "cpu", "--device cpu"),
    ("mps", 0, True, 0, "mps", "--device mps"),
])
def test_device_selection(requested, cuda, mps, local_rank, expected, why):
    from cnnlab.torch_backend import select_device

    device, line = select_device(requested, local_rank, fake_torch(cuda, mps))
    assert device == expected
    assert line.startswith(f"training on {expected}") and why in line


@pytest.mark.parametrize("requested, cuda, mps, words", [
    ("cuda", 0, False, "no CUDA GPU is visible"),
    ("cuda:2", 2, False, "only 2 CUDA GPUs"),
    ("mps", 1, False, "MPS is not available"),
])
def test_missing_device_is_one_line(requested, cuda, mps, words):
    from cnnlab.torch_backend import select_device

    with pytest.raises(ConfigError, match=words) as error:
        select_device(requested, 0, fake_torch(cuda, mps))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("options, words", [
    (["--device", "cuda"], "--device cuda needs --backend torch"),
    (["--backend", "torch", "--device", "tpu"], "unknown device 'tpu'"),
    (["--backend", "jax"], "unknown backend 'jax'"),
    (["--backend", "torch", "--device", "mps"], "MPS is not available"),   # no folder either
])
def test_bad_backend_or_device_options(options, words, tiny_fashion, tmp_path, capsys):
    assert run_train("--dataset", tiny_fashion, "--run-dir", tmp_path / "run", *options) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- without torch


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_numpy_engine_never_imports_torch(tiny_fashion, tmp_path):
    result = run_python(
        "import sys\n"
        "import cnnlab, cnnlab.train, cnnlab.distributed, cnnlab.torch_backend\n"
        "from cnnlab.cli import main\n"
        f"code = main(['train', '--dataset', {str(tiny_fashion)!r}, '--limit-train', '64',"
        f" '--limit-test', '32', '--epochs', '1', '--no-progress', '--no-report',"
        f" '--run-dir', {str(tmp_path / 'run')!r}])\n"
        "assert code == 0, code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n")
    assert result.returncode == 0, result.stderr


def test_backend_torch_without_torch_is_one_line_naming_the_extra(tiny_fashion, tmp_path):
    result = run_python(
        "import sys\n"
        "sys.modules['torch'] = None   # as if torch were not installed\n"
        "from cnnlab.cli import main\n"
        f"sys.exit(main(['train', '--backend', 'torch', '--dataset', {str(tiny_fashion)!r},"
        f" '--run-dir', {str(tmp_path / 'run')!r}]))\n")
    assert result.returncode == 2
    assert result.stderr == ("cnnlab: error: --backend torch needs PyTorch, which is not "
                             "installed: pip install 'cnnlab[torch]'\n")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- bench


@pytest.mark.slow
def test_bench_torch_backend_times_both_loops(data_root):
    from cnnlab.torch_backend.bench import bench_torch_backend, format_torch_backend

    results = bench_torch_backend(device="cpu", images=256, repeats=1, data_dir=str(data_root),
                                  log=lambda line: None)
    assert results["images"] == 256 and results["device"] == "cpu"
    for name in ("plain", "cnnlab"):
        assert results[name]["seconds_min"] <= results[name]["seconds_median"] \
            <= results[name]["seconds_max"]
    assert results["overhead"] == pytest.approx(
        results["cnnlab"]["seconds_median"] / results["plain"]["seconds_median"] - 1)
    assert "cnnlab's overhead" in format_torch_backend(results)
