"""Winograd F(2x2, 3x3) (cnnlab/ops/_winograd.py): the same convolution as PyTorch, forward and backward."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.ops import _gemm, _kernels, _winograd
from cnnlab.ops.conv import conv2d_backward, conv2d_forward

BUILT = "cnnlab._loops is not built: pip install -e '.[test]' builds it (needs gcc and python3-dev)"
pytestmark = pytest.mark.usefixtures("kernel_level")  # every test at every level the CPU runs


def _usable() -> bool:
    module = _kernels.get()
    return module is not None and module.winograd_usable()


def _relative_error(got, expected) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


def _torch_conv(x, weight, bias, padding, dy):
    import torch

    x_t = torch.tensor(x, requires_grad=True)
    weight_t = torch.tensor(weight, requires_grad=True)
    bias_t = None if bias is None else torch.tensor(bias, requires_grad=True)
    y_t = torch.nn.functional.conv2d(x_t, weight_t, bias_t, padding=padding)
    y_t.backward(torch.tensor(dy))
    return (y_t.detach().numpy(), x_t.grad.numpy(), weight_t.grad.numpy(),
            None if bias is None else bias_t.grad.numpy())


@pytest.mark.parametrize("shape, out_channels, padding", [
    ((4, 32, 14, 14), 64, 1),   # the lecture CNN's conv2
    ((3, 9, 9, 11), 7, 1),      # odd output: the last tile row and column are half used
    ((2, 8, 7, 40), 4, 0),      # no padding; 19 tiles per row (two vector steps)
    ((2, 8, 5, 5), 3, 2),       # output larger than the input
    ((1, 17, 3, 3), 18, 1),     # channel counts that are not multiples of 16
])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("one_thread", [False, True])
def test_winograd_matches_torch(shape, out_channels, padding, bias, one_thread, rng):
    """y, dX, dW and db against PyTorch at im2col's float32 tolerance; with NumPy's batched
    matmul and with cnnlab's batched GEMM (the data-parallel step's)."""
    assert _usable(), BUILT
    x = rng.standard_normal(shape).astype(np.float32)
    weight = (rng.standard_normal((out_channels, shape[1], 3, 3)) * 0.3).astype(np.float32)
    bias_values = rng.standard_normal(out_channels).astype(np.float32) if bias else None
    with (_gemm.one_thread_blas() if one_thread else _nothing()):
        y, cache = conv2d_forward(x, weight, bias_values, padding=padding)
        assert cache.layout == "winograd"
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dweight, dbias = conv2d_backward(dy, cache)
    y_t, dx_t, dweight_t, dbias_t = _torch_conv(x, weight, bias_values, padding, dy)
    assert y.shape == y_t.shape and dx.shape == x.shape and dweight.shape == weight.shape
    for ours, theirs in ((y, y_t), (dx, dx_t), (dweight, dweight_t)):
        assert ours.dtype == np.float32
        assert _relative_error(ours, theirs) <= 1e-4
    if bias:
        assert dbias.dtype == np.float32 and _relative_error(dbias, dbias_t) <= 1e-4
    else:
        assert dbias is None


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_chunks_give_the_whole_batch_result(rng, monkeypatch):
    """A batch split into many chunks (each a few images) equals one chunk up to rounding."""
    x = rng.standard_normal((7, 8, 10, 10)).astype(np.float32)
    weight = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((7, 6, 10, 10)).astype(np.float32)

    def run():
        y, cache = conv2d_forward(x, weight, None, padding=1)
        return (y,) + conv2d_backward(dy, cache)[:2]

    monkeypatch.setattr(_winograd, "CHUNK_BYTES", 1 << 30)
    whole = run()
    monkeypatch.setattr(_winograd, "CHUNK_BYTES", 1)  # one image per chunk
    assert len(_winograd._chunks(conv2d_forward(x, weight, None, padding=1)[1].setup)) == 7
    for chunked, reference in zip(run(), whole):
        assert _relative_error(chunked, reference) <= 1e-5


def test_weight_gradient_is_the_adjoint_of_the_weight_transform(rng):
    """<U(w), dU> = <w, U^T(dU)>: the backward's dW map is exactly the transpose of U = G g G^T."""
    assert _usable(), BUILT
    weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    du = rng.standard_normal((16, 5, 3)).astype(np.float32)
    u = _winograd.weight_transform(weight)
    expected = np.einsum("ar,ocrs,bs->aboc", _winograd.G, weight.astype(np.float64), _winograd.G)
    np.testing.assert_allclose(u.reshape(4, 4, 5, 3), expected, rtol=1e-6, atol=1e-6)
    left = float(np.vdot(u.astype(np.float64), du.astype(np.float64)))
    right = float(np.vdot(weight.astype(np.float64),
                          _winograd.weight_gradient(du).astype(np.float64)))
    assert abs(left - right) <= 1e-5 * max(abs(left), 1.0)


@pytest.mark.parametrize("case", ["float64", "disabled", "stride 2", "5x5", "few channels"])
def test_other_convolutions_use_im2col(case, rng, monkeypatch):
    dtype = np.float64 if case == "float64" else np.float32
    kernel = 5 if case == "5x5" else 3
    stride = 2 if case == "stride 2" else 1
    if case == "disabled":
        monkeypatch.setattr(_winograd, "ENABLED", False)
    channels = 3 if case == "few channels" else 8
    x = rng.standard_normal((2, channels, 9, 9)).astype(dtype)
    weight = rng.standard_normal((3, channels, kernel, kernel)).astype(dtype)
    _, cache = conv2d_forward(x, weight, None, stride=stride, padding=1)
    assert cache.layout != "winograd"


def test_transforms_reject_arrays_that_do_not_fit():
    assert _usable(), BUILT
    loops = _kernels.get()
    x = np.zeros((2, 3, 6, 6), dtype=np.float32)
    loops.winograd_input(x, np.zeros((16, 3, 2 * 9), np.float32), 1, 1, 6, 6)  # 3x3 tiles per image
    with pytest.raises(ValueError, match="16, C, N th tw"):
        loops.winograd_input(x, np.zeros((16, 3, 17), np.float32), 1, 1, 6, 6)
    with pytest.raises(ValueError, match="float32"):
        loops.winograd_input(x.astype(np.float64), np.zeros((16, 3, 18)), 1, 1, 6, 6)
    with pytest.raises(ValueError, match="float64"):
        loops.winograd_grad_output(x, np.zeros((16, 3, 18), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="3, 3"):
        loops.winograd_weights(np.zeros((2, 3, 5, 5), np.float32), np.zeros((16, 2, 3), np.float32))
