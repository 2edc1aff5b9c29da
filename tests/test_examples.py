"""Every script in examples/ runs on a small slice and prints the numbers the lectures give."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *arguments: str, cwd: Path | None = None,
                env: dict | None = None) -> str:
    """Run ``python examples/NAME ARGS``; fail with its output unless it exits 0."""
    environment = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *arguments],
                            capture_output=True, text=True, timeout=240, cwd=cwd, env=environment)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{output}"
    return result.stdout


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*([0-9.]+(?:e[-+]?\d+)?)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1))


def test_every_example_is_tested():
    scripts = {path.name for path in EXAMPLES.glob("*.py") if not path.name.startswith("_")}
    tested = {"01_output_size.py", "02_convolution_by_hand.py", "03_tiny_network_gradients.py",
              "04_fully_connected_mnist.py", "05_lecture_cnn.py", "pitfalls.py"}
    assert scripts == tested


def test_output_size_examples():
    output = run_example("01_output_size.py")
    assert re.search(r"p=0, s=1\s+-> 26 x 26", output)
    assert re.search(r"p=1, s=1\s+-> 28 x 28", output)
    assert re.search(r"p=1, s=2\s+-> 14 x 14", output)
    assert re.search(r"p=0, s=1, d=2\s+-> 24 x 24", output)
    assert re.search(r"padding='same', s=1\s+-> 28 x 28", output)
    assert re.search(r"padding='same', s=2\s+-> error: .*stride", output)


def test_convolution_by_hand():
    output = run_example("02_convolution_by_hand.py")
    assert "they differ (sign flips for this kernel): True" in output
    assert "cross-correlation with the flipped kernel == true convolution: True" in output
    assert "cnnlab conv2d_forward == cross-correlation loops: True" in output
    assert "cnnlab conv2d_forward(flipped kernel) == true convolution: True" in output
    assert "stride 2, padding 1: output 3x3, cnnlab matches: True" in output


@pytest.mark.slow
def test_tiny_network_gradients_match_torch():
    output = run_example("03_tiny_network_gradients.py", "--seed", "3")
    assert "gradients match torch: True" in output
    assert number_after("max |cnnlab - torch| input", output) < 1e-10
    assert number_after("max |cnnlab - torch| conv.weight", output) < 1e-10


@pytest.mark.slow
def test_fully_connected_numpy_engine(data_root, tmp_path):
    output = run_example("04_fully_connected_mnist.py", "--quick", "--data-dir", str(data_root),
                         "--out-dir", str(tmp_path))
    assert "data: fashion-mnist, 2000 train / 1000 test images (1, 28, 28) in [0, 1]" in output
    assert output.count("SGD  step") == 5 and output.count("Adam step") == 5
    assert number_after("final accuracy: train", output) > 0.6
    assert number_after(", test", output) > 0.5  # 10 classes: chance is 0.1
    for name in ("w0.png", "w1.png", "w0_units.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_fully_connected_torch_version_with_offline_wandb(data_root, tmp_path):
    output = run_example("04_fully_connected_mnist.py", "--quick", "--torch", "--wandb",
                         "--steps", "20", "--data-dir", str(data_root),
                         "--out-dir", str(tmp_path),
                         env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert "torch on cpu" in output
    assert number_after(", test", output) > 0.3
    assert list(tmp_path.glob("wandb/offline-run-*")), "no offline W&B run written"


@pytest.mark.slow
def test_lecture_cnn(data_root):
    output = run_example("05_lecture_cnn.py", "--quick", "--data-dir", str(data_root))
    assert "dense 784 -> 512: 401,408 weights + 512 biases" in output
    assert "one 3x3 kernel:   9 weights + 1 bias" in output
    assert "the whole lecture CNN: 50,186 parameters" in output
    assert "same layers and state_dict keys as `cnnlab train --model cnn`: True" in output
    assert "3136" in output  # the flattened 64 x 7 x 7 in the summary table
    assert re.search(r"test accuracy after 10 steps .*: 0\.\d{3} on 500 test images", output)


@pytest.mark.slow
def test_pitfalls_script_measures_each_bug(data_root):
    output = run_example("pitfalls.py", "--quick", "--data-dir", str(data_root))
    for row in ("fixed (cnnlab.lecture)", "double softmax", "ReLU on the output logits",
                "contiguous windows", "all three (the notes' code)",
                "contiguous windows, sorted data"):
        assert re.search(re.escape(row) + r"\s+\d", output), row
    assert "Torch not compiled with CUDA enabled" in output
    assert "cnnlab.lecture.GPU(): tensor on cpu, requires_grad=True" in output
    coverage = number_after("windows touch", output)
    assert coverage < 80  # about 1 - 1/e of the samples; shuffling touches them all


def test_pitfalls_without_pytorch_says_so_and_exits_0(tmp_path):
    blocked = tmp_path / "no-torch" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    output = run_example("pitfalls.py", "--quick", env={"PYTHONPATH": str(blocked.parent)})
    assert output.strip() == ("PyTorch is not installed: these pitfalls are in the notes' "
                              "PyTorch code, so there is nothing to measure "
                              "(pip install torch==2.13.0)")


def test_examples_leave_nothing_for_git_and_need_no_course_folder():
    import subprocess

    repo = EXAMPLES.parent
    ignored = subprocess.run(["git", "check-ignore", "-q", "lecture-output/04/w0.png"],
                             cwd=repo, capture_output=True)
    assert ignored.returncode == 0, "examples/04's default --out-dir is not in .gitignore"
    for doc in (repo / "README.md", EXAMPLES / "README.md", repo / "docs" / "pitfalls.md"):
        assert "--data-dir ../shared" not in doc.read_text(), f"{doc.name}: users have no ../shared"
