"""cnnlab.backend._sgemm (cnnlab/backend/native/sgemm.c) against a float64 NumPy reference,
and cnnlab/backend/gemm.py, which routes the convolution's products to it; at every compiled
level this CPU runs (the ``compiled_level`` fixture).

``pip install`` builds the module (CI has a C compiler), so a missing module fails here.
"""
import contextlib
import itertools
import threading

import numpy as np
import pytest

from cnnlab import backend
from cnnlab.backend import _sgemm, dispatch
from cnnlab.backend import gemm as _gemm
from cnnlab.backend import threads as thread_policy

pytestmark = pytest.mark.usefixtures("compiled_level")

# Shapes around the micro-tiles (MR x NR: 12 x 32 avx512, 6 x 16 avx2, 8 x 12 neon, 4 x 8
# portable) and block (KC=320, MC=144, NC=256) boundaries, degenerate sizes, and the CNN
# layer shapes (scaled).
SHAPES = [
    (1, 1, 1), (1, 1, 7), (1, 33, 1), (13, 1, 5), (2, 3, 4),
    (11, 31, 17), (12, 32, 16), (13, 33, 17), (25, 65, 100),
    (24, 16, 3), (12, 17, 9), (5, 48, 20),
    (64, 289, 700), (64, 300, 289), (145, 257, 321), (150, 300, 650),
    (288, 520, 64), (7, 1000, 3), (300, 40, 1000),
    (30, 10, 700), (40, 41, 33),  # last panels of fewer vectors (a classifier's n = 10)
    (9, 10, 37), (6, 16, 64), (3, 7, 16), (5, 17, 33),  # x W^T as dot products: n <= 16, then 17
]


def make(ta, tb, m, n, k, pad, rng):
    """Random operands; `pad` extra columns make leading dims > row length."""
    ar, ac = (k, m) if ta else (m, k)
    br, bc = (n, k) if tb else (k, n)
    A = rng.standard_normal((ar, ac + pad), dtype=np.float32)
    B = rng.standard_normal((br, bc + pad), dtype=np.float32)
    C = rng.standard_normal((m, n + pad), dtype=np.float32)
    opA = (A[:, :ac].T if ta else A[:, :ac]).astype(np.float64)
    opB = (B[:, :bc].T if tb else B[:, :bc]).astype(np.float64)
    return A, B, C, opA @ opB


def check(got, ref, k):
    scale = np.sqrt(max(k, 1)) * 4.0  # |sum of k products| of unit normals
    err = np.abs(got - ref).max() / scale
    assert err < 5e-6, err


@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("acc", [False, True])
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_against_numpy(ta, tb, acc, pad, m, n, k):
    rng = np.random.default_rng([int(ta), int(tb), int(acc), pad, m, n, k])
    A, B, C, ref = make(ta, tb, m, n, k, pad, rng)
    C0 = C.copy()
    if acc:
        ref = ref + C0[:, :n]
    _sgemm.gemm(ta, tb, m, n, k, A, A.shape[1], B, B.shape[1], C, C.shape[1], acc)
    check(C[:, :n], ref, k)
    # Padding columns of C must be untouched.
    np.testing.assert_array_equal(C[:, n:], C0[:, n:])


def test_relative_error_layer_shape():
    rng = np.random.default_rng(1)
    m, n, k = 64, 2000, 289
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((k, n), dtype=np.float32)
    C = np.empty((m, n), np.float32)
    _sgemm.gemm(False, False, m, n, k, A, k, B, n, C, n, False)
    ref = A.astype(np.float64) @ B.astype(np.float64)
    rel = np.linalg.norm(C - ref) / np.linalg.norm(ref)
    assert rel < 2e-6, rel


def test_k_zero():
    A = np.zeros((4, 0), np.float32)
    B = np.zeros((0, 5), np.float32)
    C = np.ones((4, 5), np.float32)
    _sgemm.gemm(False, False, 4, 5, 0, A, 1, B, 5, C, 5, True)
    assert (C == 1).all()
    _sgemm.gemm(False, False, 4, 5, 0, A, 1, B, 5, C, 5, False)
    assert (C == 0).all()


def test_m_or_n_zero():
    A = np.ones((3, 3), np.float32)
    C = np.ones((3, 3), np.float32)
    _sgemm.gemm(False, False, 0, 3, 3, A, 3, A, 3, C, 3, False)
    _sgemm.gemm(False, False, 3, 0, 3, A, 3, A, 3, C, 3, False)
    assert (C == 1).all()


def test_views_as_buffers():
    # Any C-contiguous float32 buffer works, e.g. memoryview / array module.
    import array
    a = array.array("f", [1.0, 2.0, 3.0, 4.0])  # 2x2
    c = array.array("f", [0.0] * 4)
    _sgemm.gemm(False, True, 2, 2, 2, a, 2, memoryview(a), 2, c, 2, False)
    assert list(c) == [5.0, 11.0, 11.0, 25.0]


def _call(ta=False, tb=False, m=4, n=5, k=6, A=None, lda=None, B=None, ldb=None,
          C=None, ldc=None, acc=False):
    A = np.zeros((m, k), np.float32) if A is None else A
    B = np.zeros((k, n), np.float32) if B is None else B
    C = np.zeros((m, n), np.float32) if C is None else C
    _sgemm.gemm(ta, tb, m, n, k, A, k if lda is None else lda, B,
                n if ldb is None else ldb, C, n if ldc is None else ldc, acc)


@pytest.mark.parametrize("kwargs", [
    dict(A=np.zeros((4, 5), np.float32)),            # A too small
    dict(B=np.zeros((5, 5), np.float32)),            # B too small
    dict(C=np.zeros((4, 4), np.float32)),            # C too small
    dict(lda=5),                                     # lda < k
    dict(ldc=4),                                     # ldc < n
    dict(lda=7),                                     # lda ok but buffer too small
    dict(ta=True),                                   # A^T stored k x m needs 5*6+4 = 34 > 24 floats
    dict(tb=True, ldb=5),                            # B^T stored n x k needs ldb >= k
    dict(m=-1),
    dict(A=np.zeros((4, 6), np.float64)),            # wrong dtype
    dict(A=np.zeros((6, 4), np.float32).T),          # not C-contiguous
])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises((ValueError, BufferError)):
        _call(**kwargs)


def test_readonly_output_rejected():
    C = np.zeros((4, 5), np.float32)
    C.setflags(write=False)
    with pytest.raises((ValueError, BufferError, TypeError)):
        _call(C=C)


def test_overlap_rejected():
    X = np.zeros(64, np.float32)
    with pytest.raises(ValueError):
        _sgemm.gemm(False, False, 4, 4, 4, X, 4, X[16:32], 4, X[8:24], 4, False)


def test_two_threads():
    rng = np.random.default_rng(2)
    m, n, k = 64, 3000, 289
    jobs = []
    for _ in range(2):
        A = rng.standard_normal((m, k), dtype=np.float32)
        B = rng.standard_normal((k, n), dtype=np.float32)
        jobs.append((A, B, np.empty((m, n), np.float32)))

    def work(A, B, C):
        for _ in range(5):
            _sgemm.gemm(False, False, m, n, k, A, k, B, n, C, n, False)

    ts = [threading.Thread(target=work, args=j) for j in jobs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for A, B, C in jobs:
        check(C, A.astype(np.float64) @ B.astype(np.float64), k)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("m,n,k", [(128, 500, 784), (500, 37, 61), (7, 1000, 3), (300, 40, 1000)])
def test_threads_give_the_same_bits_as_one(ta, tb, m, n, k):
    """Split by rows or by columns of C, each entry sums the same terms in the same order."""
    rng = np.random.default_rng([m, n, k])
    A, B, C, ref = make(ta, tb, m, n, k, 0, rng)
    one, two, three = C.copy(), C.copy(), C.copy()
    for out, threads in ((one, 1), (two, 2), (three, 3)):
        _sgemm.gemm(ta, tb, m, n, k, A, A.shape[1], B, B.shape[1], out, n, True, 1, 0, 0, 0, threads)
    assert one.tobytes() == two.tobytes() == three.tobytes()
    check(one, ref + C, k)


def test_a_stack_of_products_on_threads():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((16, 24, 32), dtype=np.float32)
    b = rng.standard_normal((16, 32, 50), dtype=np.float32)
    outs = [np.empty((16, 24, 50), np.float32) for _ in range(2)]
    for out, threads in zip(outs, (1, 2)):
        _sgemm.gemm(False, False, 24, 50, 32, a, 32, b, 50, out, 50, False, 16, 24 * 32, 32 * 50,
                    24 * 50, threads)
    assert outs[0].tobytes() == outs[1].tobytes()
    check(outs[0], a.astype(np.float64) @ b.astype(np.float64), 32)
    with pytest.raises(ValueError, match="needs"):  # a 17th product past the buffers' end
        _sgemm.gemm(False, False, 24, 50, 32, a, 32, b, 50, outs[0], 50, False, 17, 24 * 32,
                    32 * 50, 24 * 50, 2)


def test_split_products_from_several_python_threads_at_once():
    """One split product uses the worker pool at a time; the others run on their own thread."""
    rng = np.random.default_rng(8)
    m, n, k = 96, 400, 300
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((k, n), dtype=np.float32)
    expected = np.empty((m, n), np.float32)
    _sgemm.gemm(False, False, m, n, k, A, k, B, n, expected, n, False)
    outs = [np.empty((m, n), np.float32) for _ in range(4)]

    def work(out):
        for _ in range(20):
            _sgemm.gemm(False, False, m, n, k, A, k, B, n, out, n, False, 1, 0, 0, 0, 2)

    threads = [threading.Thread(target=work, args=(out,)) for out in outs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out in outs:
        assert out.tobytes() == expected.tobytes()


@pytest.fixture
def native_routes(monkeypatch):
    """Every product class on cnnlab's GEMM at every level (tests of that path)."""
    monkeypatch.setattr(_gemm, "ROUTES", {level: dict.fromkeys(routes, "cnnlab")
                                          for level, routes in _gemm.ROUTES.items()})


@pytest.mark.parametrize("layout_a, layout_b", list(itertools.product(["C", "F"], repeat=2)))
def test_matmul_runs_float32_products_on_the_native_gemm(layout_a, layout_b, monkeypatch,
                                                         native_routes):
    """One thread inside data-parallel shards; outside, big products split over the cores."""
    rng = np.random.default_rng(3)
    a = np.asarray(rng.standard_normal((40, 700), dtype=np.float32), order=layout_a)
    b = np.asarray(rng.standard_normal((700, 500), dtype=np.float32), order=layout_b)
    calls = []
    monkeypatch.setattr(dispatch, "sgemm", lambda: _CountingNative(calls))
    monkeypatch.setattr(thread_policy, "product_threads", lambda: 2)
    outside = _gemm.matmul(a, b)  # 28 MFLOP: split
    with _gemm.one_thread_blas():
        out = np.empty((40, 500), dtype=np.float32)
        assert _gemm.matmul(a, b, out=out) is out
    small_a = np.asarray(a[:4, :10], order=layout_a)
    small_b = np.asarray(b[:10, :6], order=layout_b)
    small = _gemm.matmul(small_a, small_b)
    flags = (layout_a == "F", layout_b == "F")
    assert [call[:2] for call in calls] == [flags, flags, flags]
    assert [call[2] for call in calls] == [2, 1, 1]  # threads
    assert outside.tobytes() == out.tobytes()
    check(out, a.astype(np.float64) @ b.astype(np.float64), 700)
    check(small, small_a.astype(np.float64) @ small_b.astype(np.float64), 10)


def test_matmul_falls_back_to_numpy_for_what_the_kernel_does_not_take(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "sgemm", lambda: _CountingNative(calls))
    rng = np.random.default_rng(4)
    a64 = rng.standard_normal((8, 9))
    strided = rng.standard_normal((8, 18), dtype=np.float32)[:, ::2]
    b = rng.standard_normal((9, 5), dtype=np.float32)
    with _gemm.one_thread_blas():
        np.testing.assert_allclose(_gemm.matmul(a64, b), a64 @ b)
        np.testing.assert_array_equal(_gemm.matmul(strided, b), strided @ b)
    monkeypatch.undo()
    with backend.use("numpy"):
        np.testing.assert_array_equal(_gemm.matmul(b.T.copy(), b), b.T @ b)
        assert "level numpy" in _gemm.describe()
    assert calls == []


@pytest.mark.parametrize("stride, layout", [(1, "wide"), (2, "channel"), (1, "winograd")])
def test_convolution_in_a_one_thread_region_matches_numpy(stride, layout, monkeypatch, native_routes):
    """The shards' products run one thread each and agree with NumPy's BLAS."""
    from cnnlab.backend import conv, winograd
    from cnnlab.backend.conv import conv2d_backward, conv2d_forward

    if layout == "winograd" and dispatch.winograd_loops() is None:
        pytest.skip(f"no compiled Winograd transforms at level {dispatch.level()}")
    monkeypatch.setattr(winograd, "ENABLED", layout == "winograd")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 32, 7, 7), dtype=np.float32)   # K = 288 > 49 pixels
    weight = rng.standard_normal((16, 32, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(16, dtype=np.float32)
    with backend.use("numpy"):  # NumPy's BLAS (and NumPy loops) for reference
        y, cache = conv2d_forward(x, weight, bias, stride=stride, padding=1)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        expected = (y,) + conv2d_backward(dy, cache)
    calls = []
    monkeypatch.setattr(dispatch, "sgemm", lambda: _CountingNative(calls))
    with _gemm.one_thread_blas():
        y, cache = conv2d_forward(x, weight, bias, stride=stride, padding=1)
        assert cache.layout == layout
        native = (y,) + conv2d_backward(dy, cache)
    # Y = W cols, dW = dY cols^T, dcols = W^T dY; for Winograd, each a batch of 16 products
    assert len(calls) == 3 and all(threads == 1 for _, _, threads in calls)
    assert conv.choose_layout(cache.setup) == layout
    for ours, reference in zip(native, expected):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)


def _traced_paths(products) -> list[tuple[str, str, int]]:
    return [(product.kind, product.path, product.threads) for product in products]


def test_each_product_class_takes_the_route_of_the_level_in_use(compiled_level, monkeypatch):
    """The class is the product's own (a stack, a large or a small product), wherever it
    runs; each goes where ROUTES says for the level in use, cnnlab's GEMM split over the
    free cores outside shards and on one thread inside, OpenBLAS always on one thread."""
    monkeypatch.setattr(thread_policy, "product_threads", lambda: 2)
    rng = np.random.default_rng(6)
    big_a = rng.standard_normal((40, 700), dtype=np.float32)      # 28 MFLOP with big_b
    big_b = rng.standard_normal((700, 500), dtype=np.float32)
    small_a, small_b = big_a[:, :30].copy(), big_b[:30, :20].copy()
    classifier = rng.standard_normal((10, 700), dtype=np.float32)   # x W^T, 10 classes
    stack_a = rng.standard_normal((16, 64, 32), dtype=np.float32)
    stack_b = rng.standard_normal((16, 32, 294), dtype=np.float32)  # 19 MFLOP in all
    stack_out = np.empty((16, 64, 294), np.float32)
    stack_bt = rng.standard_normal((16, 32, 294), dtype=np.float32).transpose(0, 2, 1)  # dM V^T
    stack_bt_out = np.empty((16, 64, 32), np.float32)
    stack_bt_a = rng.standard_normal((16, 64, 294), dtype=np.float32)
    routes = _gemm.ROUTES[compiled_level]
    with _gemm.trace() as products:
        large = _gemm.matmul(big_a, big_b)
        small = _gemm.matmul(small_a, small_b)
        narrow = _gemm.matmul(big_a, classifier.T)
        _gemm.matmul_batched(stack_a, stack_b, out=stack_out)
        _gemm.matmul_batched(stack_bt_a, stack_bt, out=stack_bt_out)
        with _gemm.one_thread_blas():
            in_shard = _gemm.matmul(big_a, big_b)
            _gemm.matmul_batched(stack_a, stack_b, out=stack_out)
    large_threads = 2 if routes["large"] == "cnnlab" else 1
    stack_bt_threads = 2 if routes["stack-bt"] == "cnnlab" else 1   # 19 MFLOP: split outside shards
    assert _traced_paths(products) == [
        ("large", routes["large"], large_threads), ("small", routes["small"], 1),
        ("narrow-bt", routes["narrow-bt"], 1), ("stack", routes["stack"], 1),
        ("stack-bt", routes["stack-bt"], stack_bt_threads),
        ("large", routes["large"], 1), ("stack", routes["stack"], 1)]
    check(stack_bt_out, stack_bt_a.astype(np.float64) @ stack_bt.astype(np.float64), 294)
    assert large.tobytes() == in_shard.tobytes()   # the same path and bits in a shard
    check(large, big_a.astype(np.float64) @ big_b.astype(np.float64), 700)
    check(small, small_a.astype(np.float64) @ small_b.astype(np.float64), 30)
    check(narrow, big_a.astype(np.float64) @ classifier.T.astype(np.float64), 700)
    check(stack_out, stack_a.astype(np.float64) @ stack_b.astype(np.float64), 32)


def test_a_large_product_has_the_same_bits_whatever_the_free_cores(compiled_level, monkeypatch):
    """The load changes the threads a large product gets, never its result."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((128, 784), dtype=np.float32)
    b = rng.standard_normal((500, 784), dtype=np.float32).T   # the mlp's hidden layer
    results = []
    for free in (1, 2):
        monkeypatch.setattr(thread_policy, "product_threads", lambda free=free: free)
        results.append(_gemm.matmul(a, b).tobytes())
    assert results[0] == results[1]


def test_product_classes():
    assert _gemm.product_class(128, 500, 784) == "large"        # 100 MFLOP
    assert _gemm.product_class(64, 10, 3136) == "small"         # 4 MFLOP
    assert _gemm.product_class(64, 294, 32, batch=16) == "stack"
    assert _gemm.product_class(2, 2, 2, batch=2) == "stack"
    assert _gemm.product_class(64, 32, 294, batch=16, trans_b=True) == "stack-bt"
    assert _gemm.product_class(64, 10, 3136, trans_b=True) == "narrow-bt"  # x W^T, 10 classes
    assert _gemm.product_class(64, 16, 3136, trans_b=True) == "narrow-bt"
    assert _gemm.product_class(64, 17, 3136, trans_b=True) == "small"
    assert _gemm.product_class(64, 10, 3136, trans_b=True, trans_a=True) == "small"
    assert _gemm.product_class(10, 3136, 64, trans_a=True) == "small"    # its dW: one product, its size


def test_the_narrow_class_is_the_c_kernels_dot_product_path():
    """gemm.NARROW_N restates native/kernels.h's GEMM_DOT_N, which the module exports."""
    assert _sgemm.DOT_N == _gemm.NARROW_N


CLASSES = ("stack", "stack-bt", "narrow-bt", "large", "small")


@pytest.mark.parametrize("level", ["portable", "avx2", "avx512", "neon"])
def test_the_routing_table_is_the_measured_one(level):
    """docs/architecture.md "Which GEMM runs a product": OpenBLAS for plain stacks and small
    products at every level, and for everything at portable (so neon, unmeasured); cnnlab's
    GEMM for B-transposed stacks, narrow x W^T products and large products at avx2 and
    avx512. A change here needs new figures there."""
    ours = "cnnlab" if level in ("avx2", "avx512") else "blas"
    assert _gemm.ROUTES[level] == {"stack": "blas", "stack-bt": ours, "narrow-bt": ours,
                                   "large": ours, "small": "blas"}
    assert [_gemm.path_for(kind, level) for kind in CLASSES] == ["blas", ours, ours, ours, "blas"]


def test_numpy_level_and_missing_native_code_route_everything_to_blas(monkeypatch):
    assert {_gemm.path_for(kind, "numpy") for kind in CLASSES} == {"blas"}
    monkeypatch.setattr(dispatch, "sgemm", lambda: None)
    assert _gemm.path_for("large", "avx2") == "blas"


def test_blas_products_run_on_one_thread(monkeypatch):
    """A product routed to BLAS outside shards holds BLAS at one thread for the call (its bits
    would otherwise follow its thread count, so the load); shards are already held there."""
    from cnnlab.backend import blas

    seen = []

    @contextlib.contextmanager
    def recording(threads):
        seen.append(threads)
        yield

    monkeypatch.setattr(blas, "limit", recording)
    monkeypatch.setattr(_gemm, "ROUTES", {level: dict.fromkeys(routes, "blas")
                                          for level, routes in _gemm.ROUTES.items()})
    monkeypatch.setattr(thread_policy, "product_threads", lambda: 2)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((40, 700), dtype=np.float32)
    b = rng.standard_normal((700, 500), dtype=np.float32)
    _gemm.matmul(a, b)
    _gemm.matmul(a[:, :30].copy(), b[:30, :20].copy())
    with _gemm.one_thread_blas():
        _gemm.matmul(a, b)
    assert seen == [1, 1, 1]


def test_blas_limit_sets_and_restores_blas_threads():
    pytest.importorskip("threadpoolctl")
    from cnnlab.backend import blas

    libraries = blas._libraries()
    if not libraries:
        pytest.skip("threadpoolctl finds no BLAS library in NumPy")
    before = [library.get_num_threads() for library in libraries]
    with blas.limit(1):
        assert [library.get_num_threads() for library in libraries] == [1] * len(libraries)
    assert [library.get_num_threads() for library in libraries] == before


class _CountingNative:
    """The real kernel, recording the transposition flags and thread count of each call."""

    def __init__(self, calls):
        self.calls = calls

    def gemm(self, trans_a, trans_b, *args):
        threads = args[14] if len(args) > 14 else 1
        self.calls.append((trans_a, trans_b, threads))
        return _sgemm.gemm(trans_a, trans_b, *args)
