"""The compiled kernels (numba) compute exactly what the NumPy fallback computes, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.ops import _kernels
from cnnlab.ops.pool import max_pool2d_backward, max_pool2d_forward


def _pool_both_ways(x, dy, monkeypatch):
    results = []
    for setting in ("", "numpy"):
        monkeypatch.setenv("CNNLAB_KERNELS", setting)
        y, cache = max_pool2d_forward(x, 2)
        results.append((y, cache[1], max_pool2d_backward(dy, cache)))
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 28, 28), (2, 5, 7, 9), (1, 1, 2, 2), (3, 2, 14, 15)])
def test_max_pool_2x2_kernel_equals_numpy_bit_for_bit(shape, dtype, rng, monkeypatch):
    assert _kernels.enabled(), "numba is missing: pip install -e '.[test]' installs it"
    # Few distinct values: many ties; plus NaN, infinities and signed zeros.
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    flat = x.reshape(-1)
    for value in (np.nan, np.inf, -np.inf, -0.0):
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 40))] = value
    dy = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(dtype)
    dy.reshape(-1)[::7] = np.nan
    (y_fast, index_fast, dx_fast), (y_numpy, index_numpy, dx_numpy) = _pool_both_ways(x, dy, monkeypatch)
    np.testing.assert_array_equal(index_fast, index_numpy)
    np.testing.assert_array_equal(y_fast, y_numpy)
    np.testing.assert_array_equal(dx_fast, dx_numpy)
    assert dx_fast.dtype == dtype and dx_fast.shape == shape


def test_max_pool_kernel_reads_strided_input(rng, monkeypatch):
    x = rng.standard_normal((2, 6, 10, 12))[:, ::2, :, 1:-1]  # not contiguous
    dy = rng.standard_normal((2, 3, 5, 5))
    (y_fast, _, dx_fast), (y_numpy, _, dx_numpy) = _pool_both_ways(x, dy, monkeypatch)
    np.testing.assert_array_equal(y_fast, y_numpy)
    np.testing.assert_array_equal(dx_fast, dx_numpy)


def test_environment_variable_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("CNNLAB_KERNELS", "numpy")
    assert not _kernels.enabled()
    assert _kernels.describe().startswith("numpy")
    monkeypatch.delenv("CNNLAB_KERNELS")
    assert _kernels.enabled()
    assert _kernels.describe().startswith("numba ")


def test_without_numba_the_numpy_code_runs(monkeypatch, rng):
    import builtins

    real_import = builtins.__import__

    def no_numba(name, *args, **kwargs):
        if name == "numba":
            raise ImportError("No module named 'numba'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_numba)
    _kernels.reset()
    try:
        assert _kernels.get() is None
        assert "not installed" in _kernels.describe()
        y, _ = max_pool2d_forward(rng.standard_normal((1, 1, 4, 4)), 2)
        assert y.shape == (1, 1, 2, 2)
    finally:
        monkeypatch.undo()
        _kernels.reset()
    assert _kernels.enabled()
