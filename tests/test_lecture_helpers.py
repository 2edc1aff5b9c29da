"""cnnlab.lecture: the notes' helpers, checked against PyTorch and against the notes' bugs."""

from __future__ import annotations

import subprocess
import sys
import warnings

import matplotlib.figure
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import lecture
from cnnlab.errors import CnnlabError, ConfigError, ShapeError
from cnnlab.lecture import (
    GPU,
    GPU_data,
    Batches,
    DoubleSoftmaxWarning,
    acc,
    cross_entropy,
    get_batch,
    gradient_step,
    montage,
    montage_plot,
    plot,
    randn_trunc,
    softmax,
)


def _logits(rng, n=16, c=10, scale=3.0):
    return torch.tensor(rng.normal(0, scale, (n, c)), dtype=torch.float64, requires_grad=True)


def test_softmax_matches_torch_and_is_stable(rng):
    logits = _logits(rng)
    assert torch.allclose(softmax(logits), torch.softmax(logits, dim=1), atol=1e-12)
    huge = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    result = softmax(huge)
    assert torch.isfinite(result).all()
    assert torch.allclose(result, torch.softmax(huge, dim=1))


def test_cross_entropy_matches_torch_value_and_gradient(rng):
    logits = _logits(rng)
    labels = torch.tensor(rng.integers(0, 10, 16))
    ours = cross_entropy(logits, labels)
    (our_grad,) = torch.autograd.grad(ours, logits)
    reference = F.cross_entropy(logits, labels)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(ours, reference, atol=1e-12)
    assert torch.allclose(our_grad, reference_grad, atol=1e-12)


def test_cross_entropy_accepts_float_labels_and_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    labels = GPU_data(np.array([2, 1]))  # float labels, as the notes make them
    loss = cross_entropy(logits, labels)
    assert torch.isfinite(loss)
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([2, 1])))


def test_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ShapeError):
        cross_entropy(torch.zeros(4, 10), torch.zeros(5))


def test_double_softmax_warns_but_keeps_the_result(rng):
    logits = _logits(rng)
    labels = torch.tensor(rng.integers(0, 10, 16))
    probabilities = softmax(logits)
    with pytest.warns(DoubleSoftmaxWarning, match="pass the logits"):
        loss = cross_entropy(probabilities, labels)
    assert torch.allclose(loss, F.cross_entropy(probabilities, labels))


def test_logits_do_not_warn(rng):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cross_entropy(_logits(rng), torch.tensor(rng.integers(0, 10, 16)))
        # non-negative rows that do not sum to 1 (e.g. ReLU outputs) are not probabilities
        cross_entropy(torch.rand(8, 10), torch.zeros(8, dtype=torch.long))


def test_randn_trunc_bounds_std_and_reproducibility():
    values = randn_trunc((400, 500), rng=np.random.default_rng(1))
    assert isinstance(values, np.ndarray) and values.shape == (400, 500)
    assert np.abs(values).max() <= 0.2
    assert abs(values.mean()) < 1e-3
    # a normal cut at +-2 sigma has std 0.8796 sigma
    assert values.std() == pytest.approx(0.08796, rel=0.01)
    again = randn_trunc((400, 500), rng=np.random.default_rng(1))
    assert np.array_equal(values, again)
    assert randn_trunc(7, rng=3).shape == (7,)


def test_acc_counts_argmax_hits():
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert acc(out, torch.tensor([1, 0, 0, 0])) == 0.75
    assert acc(out, torch.tensor([1.0, 0.0, 1.0, 0.0])) == 1.0  # float labels from GPU_data
    assert acc(out.numpy(), np.array([0, 0, 0, 0])) == 0.5


def test_batches_cover_every_sample_once_per_epoch():
    X = torch.arange(103, dtype=torch.float32)[:, None]
    Y = torch.arange(103)
    batches = Batches(X, Y, batch_size=10, seed=5)
    assert len(batches) == 11
    for _ in range(2):
        seen = [int(v) for x, y in batches for v in y]
        assert sorted(seen) == list(range(103))
    first_epoch = [int(v) for v in Batches(X, Y, 10, seed=5).next()[1]]
    assert first_epoch != list(range(10))  # shuffled, not a contiguous window
    again = Batches(X, Y, 10, seed=5)
    assert [int(v) for v in again.next()[1]] == first_epoch


def test_batches_next_rolls_into_a_new_shuffled_epoch():
    X, Y = np.arange(20)[:, None], np.arange(20)
    batches = Batches(X, Y, batch_size=8, seed=0)
    drawn = [batches.next()[1] for _ in range(3)]
    assert sorted(np.concatenate(drawn)) == list(range(20))
    assert batches.epoch == 0
    batches.next()
    assert batches.epoch == 1
    with pytest.raises(ShapeError):
        Batches(X, Y[:5], 4)
    with pytest.raises(ConfigError):
        Batches(X, Y, 0)


def test_get_batch_keeps_the_notes_call_and_covers_every_sample():
    namespace = {
        "X": torch.arange(50, dtype=torch.float32)[:, None], "Y": torch.arange(50),
        "X_test": torch.zeros(10, 1), "Y_test": torch.arange(10),
        "batch_size": 7, "get_batch": get_batch,
    }
    exec("batches = [get_batch('train') for _ in range(8)]", namespace)  # noqa: S102
    labels = torch.cat([y for _, y in namespace["batches"]]).tolist()
    assert sorted(labels) == list(range(50))
    exec("x, y = get_batch('test')", namespace)  # noqa: S102
    assert namespace["x"].shape == (7, 1)
    with pytest.raises(ConfigError, match="X, Y"):
        exec("get_batch('train')", {"get_batch": get_batch, "batch_size": 3})  # noqa: S102


def test_gpu_helpers_give_cpu_float_tensors_here():
    assert not torch.cuda.is_available()
    weight = GPU(np.ones((3, 2)))
    data = GPU_data(np.arange(4))
    assert weight.device.type == "cpu" and data.device.type == "cpu"
    assert weight.dtype == torch.float32 and data.dtype == torch.float32
    assert weight.requires_grad and weight.is_leaf and not data.requires_grad
    assert lecture.device == torch.device("cpu")
    # a tensor in: copied, not shared, no torch.tensor(tensor) warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy = GPU_data(data)
    copy[0] = 99
    assert data[0] == 0


def test_gradient_step_moves_against_the_gradient_and_zeroes_it():
    w = [GPU(np.array([1.0, 2.0]))]
    (w[0] ** 2).sum().backward()
    gradient_step(w, 0.25)
    assert torch.allclose(w[0].detach(), torch.tensor([0.5, 1.0]))
    assert torch.count_nonzero(w[0].grad) == 0
    assert w[0].requires_grad
    with pytest.raises(ConfigError, match="step size"):
        gradient_step(w)


def test_montage_and_plots_return_figures(tmp_path):
    images = np.stack([np.full((4, 4), value, dtype=np.float32) for value in range(5)])
    grid = montage(images)
    assert grid.shape == (12, 12)
    assert grid[4:8, 4:8].max() == 4 and grid[8:, 4:].max() == 0
    figure = montage_plot(torch.tensor(images))
    assert isinstance(figure, matplotlib.figure.Figure)
    # 1-pixel border: 5 images of 6x6 on a 3x3 grid
    assert figure.axes[0].images[0].get_array().shape == (18, 18)
    single = plot(torch.ones(1, 28, 28, requires_grad=True), path=tmp_path / "one.png")
    assert isinstance(single, matplotlib.figure.Figure)
    assert (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ShapeError):
        plot(np.zeros((2, 3, 4)))


def test_imports_stay_light():
    code = (
        "import sys, cnnlab, cnnlab.lecture\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'wandb', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from cnnlab.lecture import *\n"
        "assert 'torch' in sys.modules and device.type == 'cpu'\n"
        "assert torch.nn is nn and np.ndarray\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_torch_is_a_clear_error():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # makes `import torch` raise ImportError
        "from cnnlab import lecture\n"
        "from cnnlab.errors import CnnlabError\n"
        "try:\n"
        "    lecture.GPU([1.0])\n"
        "except CnnlabError as error:\n"
        "    assert 'pip install torch==2.13.0' in str(error), error\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "assert lecture.randn_trunc(3, rng=0).shape == (3,)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert issubclass(ShapeError, CnnlabError)


def test_load_mnist_gives_the_notes_shapes_and_falls_back(data_root):
    X, Y, X_test, Y_test = lecture.load_mnist(data_root, name="fashion-mnist", download=False,
                                              train_limit=100, test_limit=50)
    assert X.shape == (100, 1, 28, 28) and X_test.shape == (50, 1, 28, 28)
    assert X.dtype == np.float32 and 0.0 <= X.min() and X.max() <= 1.0 and X.max() > 0.9
    assert Y.dtype == np.int64 and Y.shape == (100,) and set(Y_test) <= set(range(10))
    # MNIST's training files are not in data_root: the examples fall back to Fashion-MNIST
    name, arrays = lecture.load_lecture_data(data_root, download=False, train_limit=10,
                                             test_limit=10)
    assert name in ("mnist", "fashion-mnist") and arrays[0].shape == (10, 1, 28, 28)
