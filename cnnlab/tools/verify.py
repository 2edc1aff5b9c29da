"""The op sweep behind ``cnnlab verify``: every op against PyTorch and finite differences,
then every float32 path the engine really takes, at every kernel level this CPU runs.

For a seeded grid of configurations per op, each check measures the worst relative
error ``max |ours - reference| / max |reference|`` over all configurations:

- ``forward vs PyTorch``: the op's output against ``torch.nn.functional`` (float64);
- ``grads vs PyTorch``: every gradient against PyTorch autograd of ``sum(y * dy)``;
- ``grads vs finite diff.``: gradients against float64 central differences at sampled
  coordinates (skipped for inputs with ties, where the max has no derivative);
- ``fast vs naive``, ``fast grads vs naive``: the vectorised convolution and its
  gradients against the lecture's loops (``conv2d_naive``, ``conv2d_naive_backward``);
- ``float32 vs float64``: the float32 run (which must stay float32) against float64.

The engine part (below the op grids) runs the backend's float32 paths (the fast conv layouts,
Winograd, the fused blocks, cnnlab's GEMM, the compiled loops, Adam) at each level of
``cnnlab.backend.runnable_levels()`` against the float64 reference and PyTorch, with each
element's tolerance derived from float32 rounding (see the comment there).

PyTorch is optional: it is imported only when present; without it only the finite
difference, naive and float32 checks run. Ops are looked up from their modules at
call time, so a patched op is what gets verified.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Callable

import numpy as np

from cnnlab.errors import ConfigError

TOLERANCES = {
    "forward vs PyTorch": 1e-10,
    "grads vs PyTorch": 1e-10,
    "grads vs finite diff.": 1e-6,
    "fast vs naive": 1e-10,
    "fast grads vs naive": 1e-10,
    "float32 vs float64": 1e-4,
}
FINITE_DIFFERENCE_STEP = 1e-5
FINITE_DIFFERENCE_SAMPLES = 24  # coordinates per gradient (all of them for small arrays)


@dataclasses.dataclass
class Case:
    """One configuration of one op.

    ``forward(inputs) -> (y, cache)``; ``backward(dy, cache) -> {input name: gradient}``;
    ``torch_forward(F, tensors) -> tensor`` with ``F = torch.nn.functional``.
    """

    label: str
    inputs: dict[str, np.ndarray]
    forward: Callable
    backward: Callable | None
    torch_forward: Callable
    grad_names: tuple[str, ...] = ("x",)
    finite_differences: bool = True
    naive: Callable | None = None
    naive_backward: Callable | None = None  # (dy, inputs) -> {input name: gradient}
    float32: bool = True  # False where float32 draws other random numbers (a dropout mask)


def _module(name: str):
    return importlib.import_module(f"cnnlab.ops.{name}")


def _normal(rng, *shape):
    return rng.standard_normal(shape)


def _away_from_zero(rng, *shape):
    """Normal values with |x| >= 0.05, so finite differences never straddle a kink at 0."""
    values = rng.standard_normal(shape)
    return np.sign(values) * (0.05 + np.abs(values))


def _distinct(rng, *shape):
    """Values 0.01 apart in random order: no ties, no finite-difference step crosses a max."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.5


# ---------------------------------------------------------------- op grids

def conv2d_cases(rng, quick):
    grid = [  # (label, x shape, weight shape, keyword arguments, bias)
        ("odd 7x5, k3", (2, 3, 7, 5), (4, 3, 3, 3), {}, True),
        ("batch 1, 1x1 kernel", (1, 2, 4, 4), (3, 2, 1, 1), {}, True),
        ("stride 2, padding 1", (2, 2, 9, 9), (3, 2, 3, 3), {"stride": 2, "padding": 1}, True),
        ("dilation 2, padding 2", (2, 2, 8, 7), (2, 2, 3, 3), {"dilation": 2, "padding": 2}, False),
        ("groups 2", (2, 4, 6, 6), (6, 2, 3, 3), {"groups": 2, "padding": 1}, True),
        ("depthwise groups 3, stride 2", (1, 3, 7, 7), (3, 1, 3, 3),
         {"groups": 3, "stride": 2}, True),
        ("non-square k(2,3) s(2,1) p(1,0)", (2, 2, 7, 6), (2, 2, 2, 3),
         {"stride": (2, 1), "padding": (1, 0)}, True),
        ("padding 'same', k3", (2, 2, 5, 6), (3, 2, 3, 3), {"padding": "same"}, True),
        ("padding 'same', k(2,4) dilation 2", (1, 2, 6, 7), (2, 2, 2, 4),
         {"padding": "same", "dilation": 2}, False),
        ("lecture conv1 1->32 k3 p1", (2, 1, 8, 8), (32, 1, 3, 3), {"padding": 1}, True),
        ("stride 3 > kernel 2", (1, 2, 8, 8), (2, 2, 2, 2), {"stride": 3}, True),
    ]
    if quick:
        grid = [grid[index] for index in (0, 2, 3, 4, 7)]
    cases = []
    for label, x_shape, weight_shape, options, with_bias in grid:
        inputs = {"x": _normal(rng, *x_shape), "weight": _normal(rng, *weight_shape)}
        if with_bias:
            inputs["bias"] = _normal(rng, weight_shape[0])
        cases.append(Case(
            label=label, inputs=inputs,
            forward=lambda a, o=options: _module("conv").conv2d_forward(
                a["x"], a["weight"], a.get("bias"), **o),
            backward=lambda dy, cache, b=with_bias: _named(
                _module("conv").conv2d_backward(dy, cache), ("x", "weight", "bias") if b
                else ("x", "weight")),
            torch_forward=lambda F, t, o=options: F.conv2d(
                t["x"], t["weight"], t.get("bias"), **o),
            grad_names=tuple(inputs),
            naive=lambda a, o=options: _module("conv").conv2d_naive(
                a["x"], a["weight"], a.get("bias"), **o),
            naive_backward=lambda dy, a, o=options: _named(
                _module("conv").conv2d_naive_backward(dy, a["x"], a["weight"], a.get("bias"), **o),
                ("x", "weight", "bias")),
        ))
    return cases


def _named(gradients, names):
    return dict(zip(names, gradients))


def _pool_cases(rng, quick, kind):
    grid = [  # (label, x shape, kernel_size, stride, padding, ties)
        ("k2 s2 (lecture)", (2, 3, 6, 6), 2, None, 0, False),
        ("odd input 7x5, k2", (1, 2, 7, 5), 2, None, 0, False),
        ("k3 s2 p1", (2, 2, 7, 7), 3, 2, 1, False),
        ("overlapping k3 s1", (1, 2, 5, 6), 3, 1, 0, False),
        ("non-square k(2,3) s(1,2)", (2, 1, 6, 7), (2, 3), (1, 2), 0, False),
        ("ties: integer input, k2", (2, 2, 6, 6), 2, None, 0, True),
        ("ties: constant input, k3 s1 p1", (1, 2, 5, 5), 3, 1, 1, True),
    ]
    if quick:
        grid = [grid[index] for index in (0, 2, 5)]
    cases = []
    for label, shape, kernel, stride, padding, ties in grid:
        if ties:
            x = rng.integers(0, 3, shape).astype(np.float64)
            if "constant" in label:
                x[:] = 1.0
        else:
            x = _distinct(rng, *shape)
        forward_name, backward_name = f"{kind}_pool2d_forward", f"{kind}_pool2d_backward"
        cases.append(Case(
            label=label, inputs={"x": x},
            forward=lambda a, k=kernel, s=stride, p=padding, n=forward_name: getattr(
                _module("pool"), n)(a["x"], k, s, p),
            backward=lambda dy, cache, n=backward_name: {"x": getattr(_module("pool"), n)(dy, cache)},
            torch_forward=lambda F, t, k=kernel, s=stride, p=padding: getattr(
                F, f"{kind}_pool2d")(t["x"], k, s, p),
            # Where the max is tied it has no derivative: finite differences measure an average.
            finite_differences=not (ties and kind == "max"),
        ))
    return cases


def max_pool2d_cases(rng, quick):
    return _pool_cases(rng, quick, "max")


def avg_pool2d_cases(rng, quick):
    return _pool_cases(rng, quick, "avg")


def linear_cases(rng, quick):
    grid = [("batch 1, 5->3", 1, 5, 3, True), ("batch 4, 6->10", 4, 6, 10, True),
            ("no bias, 7->2", 3, 7, 2, False), ("1 input feature", 5, 1, 4, True)]
    if quick:
        grid = grid[:3]
    cases = []
    for label, batch, in_features, out_features, with_bias in grid:
        inputs = {"x": _normal(rng, batch, in_features),
                  "weight": _normal(rng, out_features, in_features)}
        if with_bias:
            inputs["bias"] = _normal(rng, out_features)
        cases.append(Case(
            label=label, inputs=inputs,
            forward=lambda a: _module("linear").linear_forward(a["x"], a["weight"], a.get("bias")),
            backward=lambda dy, cache, b=with_bias: _named(
                _module("linear").linear_backward(dy, cache),
                ("x", "weight", "bias") if b else ("x", "weight")),
            torch_forward=lambda F, t: F.linear(t["x"], t["weight"], t.get("bias")),
            grad_names=tuple(inputs),
        ))
    return cases


def _activation_cases(rng, quick, name, torch_name, options=None):
    options = options or {}
    shapes = [(1, 7), (3, 4, 5, 5)] if quick else [(1, 7), (4, 9), (3, 4, 5, 5)]
    cases = []
    for shape in shapes:
        x = _away_from_zero(rng, *shape) * 3
        cases.append(Case(
            label=f"shape {shape}" + "".join(f", {k}={v}" for k, v in options.items()),
            inputs={"x": x},
            forward=lambda a: getattr(_module("activation"), f"{name}_forward")(a["x"], **options),
            backward=lambda dy, cache: {
                "x": getattr(_module("activation"), f"{name}_backward")(dy, cache)},
            torch_forward=lambda F, t: _torch_function(F, torch_name)(t["x"], **options),
        ))
    return cases


def _torch_function(F, name):
    return getattr(F, name) if hasattr(F, name) else getattr(importlib.import_module("torch"), name)


def relu_cases(rng, quick):
    return _activation_cases(rng, quick, "relu", "relu")


def leaky_relu_cases(rng, quick):
    return (_activation_cases(rng, quick, "leaky_relu", "leaky_relu")
            + _activation_cases(rng, quick, "leaky_relu", "leaky_relu", {"negative_slope": 0.2}))


def sigmoid_cases(rng, quick):
    return _activation_cases(rng, quick, "sigmoid", "sigmoid")


def tanh_cases(rng, quick):
    return _activation_cases(rng, quick, "tanh", "tanh")


def _softmax_cases(rng, quick, name):
    grid = [("batch 1, 10 classes", (1, 10), 1), ("logits of +-1e4", (4, 10), 1),
            ("axis 0", (5, 3), 0), ("3-d, axis -1", (2, 3, 4), -1)]
    if quick:
        grid = grid[:3]
    cases = []
    for label, shape, axis in grid:
        x = _normal(rng, *shape) * (1e4 if "1e4" in label else 3)
        cases.append(Case(
            label=label, inputs={"x": x},
            forward=lambda a, ax=axis: (getattr(_module("activation"), name)(a["x"], axis=ax), None),
            backward=None,
            torch_forward=lambda F, t, ax=axis: getattr(F, name)(t["x"], dim=ax),
        ))
    return cases


def softmax_cases(rng, quick):
    return _softmax_cases(rng, quick, "softmax")


def log_softmax_cases(rng, quick):
    return _softmax_cases(rng, quick, "log_softmax")


def _loss_case(label, inputs, loss_name, torch_forward):
    def forward(a):
        function = getattr(_module("loss"), loss_name)
        loss, gradient = function(a["x"], a["target"])
        return np.asarray(loss, dtype=a["x"].dtype), gradient

    return Case(label=label, inputs=inputs, forward=forward,
                backward=lambda dy, gradient: {"x": gradient * dy},
                torch_forward=torch_forward)


def cross_entropy_cases(rng, quick):
    grid = [("batch 1, 10 classes", 1, 10, 3.0), ("batch 8, 10 classes", 8, 10, 3.0),
            ("2 classes", 5, 2, 3.0), ("logits of +-1e4", 4, 10, 1e4)]
    if quick:
        grid = grid[:3]
    return [_loss_case(label, {"x": _normal(rng, batch, classes) * scale,
                               "target": rng.integers(0, classes, batch)},
                       "cross_entropy", lambda F, t: F.cross_entropy(t["x"], t["target"]))
            for label, batch, classes, scale in grid]


def mse_loss_cases(rng, quick):
    shapes = [(1, 1), (4, 10), (2, 3, 4, 4)][: 2 if quick else 3]
    return [_loss_case(f"shape {shape}", {"x": _normal(rng, *shape), "target": _normal(rng, *shape)},
                       "mse_loss", lambda F, t: F.mse_loss(t["x"], t["target"]))
            for shape in shapes]


def batch_norm_cases(rng, quick):
    grid = [("(N, C) training", (8, 5), True, True), ("(N, C, H, W) training", (4, 3, 4, 5), True, True),
            ("(N, C, H, W) eval", (2, 3, 4, 4), False, True),
            ("affine=False training", (3, 2, 3, 3), True, False), ("(N, C) eval", (6, 4), False, True)]
    if quick:
        grid = grid[:4]
    cases = []
    for label, shape, training, affine in grid:
        channels = shape[1]
        inputs = {"x": _normal(rng, *shape) * 2 + 1,
                  "running_mean": _normal(rng, channels), "running_var": 0.5 + rng.random(channels)}
        if affine:
            inputs["weight"], inputs["bias"] = 1 + _normal(rng, channels), _normal(rng, channels)

        def forward(a, tr=training):
            # The op updates the running statistics in place: give it copies every call.
            return _module("batchnorm").batch_norm_forward(
                a["x"], a.get("weight"), a.get("bias"), a["running_mean"].copy(),
                a["running_var"].copy(), tr)

        cases.append(Case(
            label=label, inputs=inputs, forward=forward,
            backward=lambda dy, cache, af=affine: _named(
                _module("batchnorm").batch_norm_backward(dy, cache),
                ("x", "weight", "bias") if af else ("x",)),
            torch_forward=lambda F, t, tr=training: F.batch_norm(
                t["x"], t["running_mean"].clone(), t["running_var"].clone(), t.get("weight"),
                t.get("bias"), tr),
            grad_names=("x", "weight", "bias") if affine else ("x",),
        ))
    return cases


def dropout_cases(rng, quick):
    """Inverted dropout against PyTorch's formula y = x * keep / (1 - p), with the mask the op
    drew (PyTorch draws its own); p = 0, p = 1 and evaluation mode against F.dropout itself.
    The same seed for every call gives the same mask, so finite differences see one function."""
    grid = [((4, 9), 0.5, True), ((2, 3, 4, 4), 0.3, True), ((3, 5), 0.0, True),
            ((3, 5), 1.0, True), ((2, 3, 4, 4), 0.5, False)]
    if quick:
        grid = grid[:4]
    cases = []
    for shape, p, training in grid:
        seed = int(rng.integers(2**31))

        def forward(a, p=p, training=training, seed=seed):
            return _module("dropout").dropout_forward(a["x"], p, training,
                                                      np.random.default_rng(seed))

        random_mask = training and 0 < p < 1
        if random_mask:
            scaled = forward({"x": np.ones(shape)})[0]
            keep = scaled != 0

            def torch_forward(F, t, keep=keep, p=p):
                import torch

                return t["x"] * torch.from_numpy(keep) / (1 - p)
        else:
            def torch_forward(F, t, p=p, training=training):
                return F.dropout(t["x"], p, training)
        cases.append(Case(
            label=f"shape {shape}, p={p}" + ("" if training else ", eval"),
            inputs={"x": _normal(rng, *shape)}, forward=forward,
            backward=lambda dy, cache: {"x": _module("dropout").dropout_backward(dy, cache)},
            torch_forward=torch_forward, float32=not random_mask,
        ))
    return cases


def flatten_cases(rng, quick):
    grid = [((2, 3, 4, 5), 1), ((1, 2, 3, 3), 1), ((2, 3, 4, 5), 2)][: 2 if quick else 3]
    return [Case(
        label=f"shape {shape}, start_dim {start}", inputs={"x": _normal(rng, *shape)},
        forward=lambda a, s=start: _module("shape").flatten_forward(a["x"], s),
        backward=lambda dy, cache: {"x": _module("shape").flatten_backward(dy, cache)},
        torch_forward=lambda F, t, s=start: t["x"].flatten(s),
    ) for shape, start in grid]


OPS = {
    "conv2d": conv2d_cases, "max_pool2d": max_pool2d_cases, "avg_pool2d": avg_pool2d_cases,
    "linear": linear_cases, "relu": relu_cases, "leaky_relu": leaky_relu_cases,
    "sigmoid": sigmoid_cases, "tanh": tanh_cases, "softmax": softmax_cases,
    "log_softmax": log_softmax_cases, "cross_entropy": cross_entropy_cases,
    "mse_loss": mse_loss_cases, "batch_norm": batch_norm_cases, "dropout": dropout_cases,
    "flatten": flatten_cases,
}


# ---------------------------------------------------------------- checking

def relative_error(actual, expected, scale: float = 0.0) -> float:
    """max |actual - expected| / max |expected| (or ``scale`` if larger); inf if unusable."""
    if actual is None or expected is None:
        return float("inf")
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.size == 0:
        return 0.0
    difference = np.abs(actual - expected)
    if not np.all(np.isfinite(difference)):
        return float("inf")
    scale = max(float(np.abs(expected).max()), scale, float(np.finfo(np.float64).tiny))
    return float(difference.max()) / scale


def _finite_difference_error(case: Case, name: str, analytic, dy, rng) -> float:
    """Compare ``analytic`` with central differences of sum(y * dy) at sampled coordinates."""
    if analytic is None:
        return float("inf")
    array = case.inputs[name].copy()
    inputs = dict(case.inputs, **{name: array})
    flat = array.reshape(-1)
    samples = rng.choice(flat.size, min(flat.size, FINITE_DIFFERENCE_SAMPLES), replace=False)
    numeric = np.empty(samples.size)
    for position, index in enumerate(samples):
        saved = flat[index]
        # A step relative to the value keeps rounding small next to it for huge inputs.
        step = FINITE_DIFFERENCE_STEP * max(1.0, abs(float(saved)))
        flat[index] = saved + step
        plus = float(np.sum(case.forward(inputs)[0] * dy))
        flat[index] = saved - step
        minus = float(np.sum(case.forward(inputs)[0] * dy))
        flat[index] = saved
        numeric[position] = (plus - minus) / (2 * step)
    analytic = np.asarray(analytic)
    return relative_error(analytic.reshape(-1)[samples], numeric,
                          scale=float(np.abs(analytic).max(initial=0.0)))


def _float32_error(case: Case, y, gradients, dy) -> float:
    """Run the op in float32: outputs must stay float32 and agree with float64."""
    inputs = {key: value.astype(np.float32) if value.dtype.kind == "f" else value
              for key, value in case.inputs.items()}
    y32, cache32 = case.forward(inputs)
    if np.asarray(y32).dtype != np.float32:
        return float("inf")
    error = relative_error(y32, y)
    if case.backward is not None:
        gradients32 = case.backward(np.asarray(dy, dtype=np.float32), cache32)
        for name in case.grad_names:
            gradient32 = gradients32.get(name)
            if gradient32 is None or gradient32.dtype != np.float32:
                return float("inf")
            error = max(error, relative_error(gradient32, gradients[name]))
    return error


def _torch_errors(case: Case, torch, y, gradients, dy) -> dict[str, float]:
    functional = torch.nn.functional
    wants_grad = case.backward is not None
    tensors = {key: torch.tensor(value, requires_grad=wants_grad and key in case.grad_names)
               for key, value in case.inputs.items()}
    torch_y = case.torch_forward(functional, tensors)
    errors = {"forward vs PyTorch": relative_error(y, torch_y.detach().numpy())}
    if wants_grad:
        (torch_y * torch.tensor(dy)).sum().backward()
        errors["grads vs PyTorch"] = max(
            relative_error(gradients.get(name), tensors[name].grad.numpy())
            for name in case.grad_names)
    return errors


def check_case(case: Case, torch, rng) -> dict[str, float]:
    """Every applicable check of one configuration -> {check name: relative error}."""
    y, cache = case.forward(case.inputs)
    dy = rng.standard_normal(np.shape(y))
    gradients = case.backward(dy, cache) if case.backward is not None else {}
    errors = {}
    if torch is not None:
        errors.update(_torch_errors(case, torch, y, gradients, dy))
    if case.backward is not None and case.finite_differences:
        errors["grads vs finite diff."] = max(
            _finite_difference_error(case, name, gradients.get(name), dy, rng)
            for name in case.grad_names)
    if case.naive is not None:
        errors["fast vs naive"] = relative_error(y, case.naive(case.inputs))
    if case.naive_backward is not None:
        reference = case.naive_backward(dy, case.inputs)
        errors["fast grads vs naive"] = max(relative_error(gradients.get(name), reference[name])
                                            for name in case.grad_names)
    if case.float32:
        errors["float32 vs float64"] = _float32_error(case, y, gradients, dy)
    return errors


def verify_op(name: str, seed: int, quick: bool, torch) -> dict:
    """All configurations of one op -> its result record (see :func:`run_verify`)."""
    rng = np.random.default_rng([seed, list(OPS).index(name)])
    record = {"configs": 0, "passed": False, "checks": {}, "error": None}
    try:
        cases = OPS[name](rng, quick)
    except Exception as error:  # an op module missing or broken: report it, keep sweeping
        record["error"] = f"{type(error).__name__}: {error}"
        return record
    checks = record["checks"]
    for case in cases:
        record["configs"] += 1
        try:
            errors = check_case(case, torch, rng)
        except Exception as error:  # an op that raises fails its op, not the whole sweep
            record["error"] = record["error"] or f"{case.label}: {type(error).__name__}: {error}"
            continue
        for check, error in errors.items():
            tolerance = TOLERANCES.get(check, 0.0)
            entry = checks.setdefault(check, {"worst_error": 0.0, "tolerance": tolerance,
                                              "passed": True, "worst_config": case.label})
            if not error <= entry["worst_error"]:
                entry["worst_error"], entry["worst_config"] = error, case.label
            entry["passed"] = entry["passed"] and error <= tolerance
    record["passed"] = record["error"] is None and all(c["passed"] for c in checks.values())
    for entry in checks.values():  # JSON has no infinity: an unusable result becomes null
        if not np.isfinite(entry["worst_error"]):
            entry["worst_error"] = None
    return record


def select_ops(names: str | None) -> list[str]:
    """``"conv2d,max_pool2d"`` -> those op names, in sweep order; None -> all ops."""
    if not names:
        return list(OPS)
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in OPS]
    if unknown or not wanted:
        from cnnlab.training.config import suggest

        hint = suggest(unknown[0], OPS) if unknown else ""
        raise ConfigError(f"unknown op {', '.join(unknown) or repr(names)} for --ops{hint}; "
                          f"choose from {', '.join(OPS)}")
    return [name for name in OPS if name in wanted]


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def run_verify(ops: list[str] | None = None, seed: int = 0, quick: bool = False,
               use_torch: bool = True, engine_checks: bool = True) -> dict:
    """Sweep the ops, then the engine's float32 paths at every kernel level this CPU runs;
    returns the report as plain data (what ``--json`` writes).

    ``{"seed", "quick", "torch": version or None, "passed", "seconds",
    "ops": {name: {"configs", "passed", "error", "checks": {check: {"worst_error",
    "tolerance", "passed", "worst_config"}}}}, "engine": {"levels", "cpu", "passed",
    "paths": {name: {level: {"path", "worst_ratio", "passed", "error"}}}}}``
    """
    torch = _import_torch() if use_torch else None
    start = time.perf_counter()
    results = {name: verify_op(name, seed, quick, torch) for name in (ops or list(OPS))}
    engine = verify_engine(ops, seed, quick, torch) if engine_checks else None
    return {
        "seed": seed, "quick": quick, "torch": torch.__version__ if torch is not None else None,
        "passed": all(result["passed"] for result in results.values())
                  and (engine is None or engine["passed"]),
        "seconds": round(time.perf_counter() - start, 3), "ops": results, "engine": engine,
    }


def _format_engine(engine: dict) -> list[str]:
    levels = engine["levels"]
    lines = ["", f"engine paths in float32 on {engine['cpu']}, at every level it runs "
                 f"({', '.join(levels)}):",
             "  worst error / its float32 rounding bound (<= 1 passes; bound in cnnlab/tools/verify.py), "
             "against the float64 reference and PyTorch",
             f"  {'path':<40}" + "".join(f"{level:>22}" for level in levels)]
    for name, rows in engine["paths"].items():
        cells = []
        for level in levels:
            row = rows[level]
            ratio = "inf" if row["worst_ratio"] is None else f"{row['worst_ratio']:.2g}"
            cells.append(f"{('' if row['passed'] else 'FAIL ') + ratio + ' ' + (row['path'] or '?'):>22}")
        lines.append(f"  {name:<40}" + "".join(cells))
    return lines


def format_report(report: dict) -> str:
    """The readable table: one block per op, one row per check."""
    lines = []
    if report["torch"] is None:
        lines.append("PyTorch not installed: finite differences only")
    else:
        lines.append(f"references: PyTorch {report['torch']} autograd and float64 finite differences")
    lines.append(f"seed {report['seed']}{', quick' if report['quick'] else ''}")
    for name, result in report["ops"].items():
        lines.append("")
        lines.append(f"{name}: {result['configs']} configurations"
                     f"{'':<4}{'PASS' if result['passed'] else 'FAIL'}")
        if result["checks"]:
            lines.append(f"  {'check':<24}{'worst error':>12}{'tolerance':>11}  result")
        for check, entry in result["checks"].items():
            verdict = "PASS" if entry["passed"] else f"FAIL  (worst: {entry['worst_config']})"
            worst = entry["worst_error"]
            worst_text = f"{worst:.1e}" if worst is not None else "inf/NaN"
            lines.append(f"  {check:<24}{worst_text:>12}"
                         f"{entry['tolerance']:>11.0e}  {verdict}")
        if result["error"]:
            lines.append(f"  error: {result['error']}")
    failed = [name for name, result in report["ops"].items() if not result["passed"]]
    engine = report.get("engine")
    if engine is not None and engine["paths"]:
        lines += _format_engine(engine)
        failed += [f"{name} ({level})" for name, rows in engine["paths"].items()
                   for level, row in rows.items() if not row["passed"]]
    lines.append("")
    lines.append(f"FAIL: {', '.join(failed)}" if failed else
                 f"PASS: all {len(report['ops'])} ops ({report['seconds']:.1f} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------- the engine's paths
#
# The sweep above runs the reference ops in float64, where no fast path engages. Training and
# inference run float32 through the backend: cnnlab's GEMM, the fast conv layouts, Winograd,
# the fused blocks and the compiled loops, at the kernel level chosen for this CPU. Each case
# below runs one of those paths in float32 at every level this CPU runs, and compares it with
# the float64 reference op (cnnlab.ops) and PyTorch (float64) on the same, float32-exact inputs.
#
# Tolerance, from float32 rounding. With unit roundoff u = 2^-24, a float32 sum of n products
# computed in any order satisfies |fl(s) - s| <= gamma_n * sum |a_i b_i|, gamma_n = n u / (1 - n u)
# (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5). So each output
# element passes when |ours - reference| <= f * gamma_n * S, where S is the same sum over the
# absolute values (the reference op run in float64 on |x|, |w|, |dy|: every term >= 0), n the
# number of terms in the element's sum plus a few for the bias and the output rounding, and
# f = 1 for direct sums (im2col, the wide layout, the direct fused conv, linear). Winograd
# F(2x2, 3x3) computes the same sum through its transforms; propagating absolute values
# through them bounds the growth by f = (||A^T||_inf ||G||_inf ||B^T||_inf)^2 = (2 * 1.5 * 2)^2
# = 36 (Lavin & Gray's matrices), with n = C_in + 16 terms per element. Max pool and ReLU are
# exact on rounded values (their S is the pooled S of the conv below them), and the Adam
# update is a dozen elementwise roundings: n = 12, S = |w| + |step|. The reported figure is
# the worst ratio error / bound over all elements: <= 1 passes.

UNIT_ROUNDOFF = 2.0 ** -24
WINOGRAD_GROWTH = 36.0


def gamma(terms: float) -> float:
    """gamma_n = n u / (1 - n u): the float32 rounding bound of an n-term sum (relative to S)."""
    return terms * UNIT_ROUNDOFF / (1 - terms * UNIT_ROUNDOFF)


def bound_ratio(ours, reference, absolute_sum, terms: float, growth: float = 1.0) -> float:
    """max |ours - reference| / (growth * gamma_n * S) over the elements (<= 1: within rounding)."""
    if ours is None or reference is None or np.shape(ours) != np.shape(reference):
        return float("inf")
    difference = np.abs(np.asarray(ours, dtype=np.float64) - reference)
    if not np.all(np.isfinite(difference)):
        return float("inf")
    allowed = growth * gamma(terms) * np.asarray(absolute_sum, dtype=np.float64) + 1e-30
    return float((difference / allowed).max(initial=0.0))


@dataclasses.dataclass
class EnginePath:
    """One path of the engine: ``run(inputs32) -> (outputs, path taken)``, ``reference(inputs64)
    -> outputs``, ``bounds(inputs64) -> {output: (S, n terms, growth)}``, optional ``torch``."""

    name: str
    op: str
    inputs: dict
    run: Callable
    reference: Callable
    bounds: Callable
    torch: Callable | None = None


def _float32_exact(rng, *shape, scale=1.0):
    """float64 values that float32 holds exactly (the inputs are rounded once, before both sides)."""
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(np.float64)


def _conv_path(name, rng, x_shape, w_shape, options, dy_rng):
    from cnnlab import backend, ops

    inputs = {"x": _float32_exact(rng, *x_shape), "weight": _float32_exact(rng, *w_shape, scale=0.3),
              "bias": _float32_exact(rng, w_shape[0])}
    y_shape = ops.conv2d_forward(inputs["x"], inputs["weight"], inputs["bias"], **options)[0].shape
    inputs["dy"] = _float32_exact(dy_rng, *y_shape)

    def run(a):
        y, cache = backend.conv2d_forward(a["x"], a["weight"], a["bias"], **options)
        dx, dweight, dbias = backend.conv2d_backward(a["dy"], cache)
        return {"y": y, "dx": dx, "dweight": dweight, "dbias": dbias}, cache.layout

    def reference(a):
        y, cache = ops.conv2d_forward(a["x"], a["weight"], a["bias"], **options)
        dx, dweight, dbias = ops.conv2d_backward(a["dy"], cache)
        return {"y": y, "dx": dx, "dweight": dweight, "dbias": dbias}

    def bounds(a):
        absolute = reference({key: np.abs(value) for key, value in a.items()})
        c_in, k_h, k_w = w_shape[1:]
        terms = {"y": c_in * k_h * k_w + 2, "dx": w_shape[0] * k_h * k_w + 1,
                 "dweight": y_shape[0] * y_shape[2] * y_shape[3] + 1,
                 "dbias": y_shape[0] * y_shape[2] * y_shape[3] + 1}
        winograd = (k_h, k_w) == (3, 3) and options.get("stride", 1) == 1 and c_in >= 8
        growth = WINOGRAD_GROWTH if winograd else 1.0
        if winograd:
            terms.update(y=c_in + 16, dx=w_shape[0] + 16)
        return {key: (absolute[key], terms[key], growth) for key in absolute}

    def torch_reference(torch, a):
        t = {key: torch.tensor(value, requires_grad=key != "dy") for key, value in a.items()}
        y = torch.nn.functional.conv2d(t["x"], t["weight"], t["bias"], **options)
        y.backward(t["dy"])
        return {"y": y.detach().numpy(), "dx": t["x"].grad.numpy(), "dweight": t["weight"].grad.numpy(),
                "dbias": t["bias"].grad.numpy()}

    return EnginePath(name, "conv2d", inputs, run, reference, bounds, torch_reference)


def _fused_path(name, rng, x_shape, w_shape, padding, input_grad, dy_rng):
    from cnnlab import backend, ops
    from cnnlab.ops import fused

    inputs = {"x": _float32_exact(rng, *x_shape), "weight": _float32_exact(rng, *w_shape, scale=0.3),
              "bias": _float32_exact(rng, w_shape[0], scale=0.1)}
    y_shape = fused.conv2d_relu_maxpool2d_forward(inputs["x"], inputs["weight"], inputs["bias"],
                                                  padding)[0].shape
    inputs["dy"] = _float32_exact(dy_rng, *y_shape)

    def outputs(forward, backward, a):
        y, cache = forward(a["x"], a["weight"], a["bias"], padding=padding, input_grad=input_grad)
        dx, dweight, dbias = backward(a["dy"], cache)
        result = {"y": y, "dweight": dweight, "dbias": dbias}
        if input_grad:
            result["dx"] = dx
        return result, cache

    def run(a):
        result, cache = outputs(backend.conv2d_relu_maxpool2d_forward,
                                backend.conv2d_relu_maxpool2d_backward, a)
        return result, cache.path

    def reference(a):
        return outputs(fused.conv2d_relu_maxpool2d_forward, fused.conv2d_relu_maxpool2d_backward, a)[0]

    def bounds(a):
        # S of the conv below the pool, pooled: the ReLU and the max are exact on rounded values.
        conv_abs, _ = ops.conv2d_forward(np.abs(a["x"]), np.abs(a["weight"]), np.abs(a["bias"]),
                                         padding=padding)
        y_abs = ops.max_pool2d_forward(conv_abs, 2)[0]
        c_out, c_in, k_h, k_w = w_shape
        winograd = (k_h, k_w) == (3, 3) and c_in >= 8
        growth = WINOGRAD_GROWTH if winograd else 1.0
        # dW and db sum over every conv output pixel the pooled gradient reaches: bound them by
        # the float64 backward of |dy| through the reference (terms: N H_conv W_conv).
        absolute = reference({key: np.abs(value) for key, value in a.items()})
        pixels = x_shape[0] * conv_abs.shape[2] * conv_abs.shape[3]
        result = {"y": (y_abs, (c_in + 16) if winograd else c_in * k_h * k_w + 2, growth),
                  "dweight": (absolute["dweight"], pixels + 1, growth),
                  "dbias": (absolute["dbias"], pixels + 1, 1.0)}
        if input_grad:
            result["dx"] = (absolute["dx"], (c_out + 16) if winograd else c_out * k_h * k_w + 1, growth)
        return result

    def torch_reference(torch, a):
        t = {key: torch.tensor(value, requires_grad=key != "dy") for key, value in a.items()}
        F = torch.nn.functional
        y = F.max_pool2d(torch.relu(F.conv2d(t["x"], t["weight"], t["bias"], padding=padding)), 2)
        y.backward(t["dy"])
        result = {"y": y.detach().numpy(), "dweight": t["weight"].grad.numpy(),
                  "dbias": t["bias"].grad.numpy()}
        if input_grad:
            result["dx"] = t["x"].grad.numpy()
        return result

    return EnginePath(name, "conv2d_relu_maxpool2d", inputs, run, reference, bounds, torch_reference)


def _linear_path(rng, dy_rng):
    from cnnlab import backend, ops

    inputs = {"x": _float32_exact(rng, 64, 196), "weight": _float32_exact(rng, 48, 196, scale=0.1),
              "bias": _float32_exact(rng, 48), "dy": _float32_exact(dy_rng, 64, 48)}

    def outputs(forward, backward, a):
        y, cache = forward(a["x"], a["weight"], a["bias"])
        dx, dweight, dbias = backward(a["dy"], cache)
        return {"y": y, "dx": dx, "dweight": dweight, "dbias": dbias}

    def bounds(a):
        absolute = outputs(ops.linear_forward, ops.linear_backward,
                           {key: np.abs(value) for key, value in a.items()})
        terms = {"y": 196 + 2, "dx": 48 + 1, "dweight": 64 + 1, "dbias": 64 + 1}
        return {key: (absolute[key], terms[key], 1.0) for key in absolute}

    def torch_reference(torch, a):
        t = {key: torch.tensor(value, requires_grad=key != "dy") for key, value in a.items()}
        y = torch.nn.functional.linear(t["x"], t["weight"], t["bias"])
        y.backward(t["dy"])
        return {"y": y.detach().numpy(), "dx": t["x"].grad.numpy(), "dweight": t["weight"].grad.numpy(),
                "dbias": t["bias"].grad.numpy()}

    def run(a):
        from cnnlab.backend import dispatch

        taken = "cnnlab GEMM" if dispatch.sgemm() is not None else "NumPy BLAS"
        return outputs(backend.linear_forward, backend.linear_backward, a), taken

    return EnginePath("linear 196->48, batch 64", "linear", inputs, run,
                      lambda a: outputs(ops.linear_forward, ops.linear_backward, a), bounds, torch_reference)


def _pool_relu_path(rng, dy_rng):
    from cnnlab import backend, ops

    inputs = {"x": _float32_exact(rng, 4, 8, 14, 14), "dy": _float32_exact(dy_rng, 4, 8, 7, 7)}

    def outputs(pool_forward, pool_backward, relu_forward, relu_backward, a):
        pooled, pool_cache = pool_forward(a["x"], 2)
        y, mask = relu_forward(pooled)
        return {"y": y, "dx": pool_backward(relu_backward(a["dy"], mask), pool_cache)}

    def bounds(a):
        # exact ops: any difference at all fails (n = 0 leaves only the 1e-30 floor)
        return {"y": (np.zeros(a["dy"].shape), 0, 1.0), "dx": (np.zeros(a["x"].shape), 0, 1.0)}

    def torch_reference(torch, a):
        x = torch.tensor(a["x"], requires_grad=True)
        y = torch.relu(torch.nn.functional.max_pool2d(x, 2))
        y.backward(torch.tensor(a["dy"]))
        return {"y": y.detach().numpy(), "dx": x.grad.numpy()}

    def run(a):
        from cnnlab.backend import dispatch

        return (outputs(backend.max_pool2d_forward, backend.max_pool2d_backward, backend.relu_forward,
                        backend.relu_backward, a), "loops" if dispatch.loops() else "numpy")

    return EnginePath("max pool 2x2 + ReLU", "max_pool2d", inputs, run,
                      lambda a: outputs(ops.max_pool2d_forward, ops.max_pool2d_backward,
                                        ops.relu_forward, ops.relu_backward, a),
                      bounds, torch_reference)


def _adam_path(rng, dy_rng):
    from cnnlab.nn.module import Parameter
    from cnnlab.optim import Adam

    inputs = {"w": _float32_exact(rng, 300), "grad": _float32_exact(dy_rng, 300)}

    def steps(a, dtype):
        parameter = Parameter(a["w"].astype(dtype))
        adam = Adam([parameter], lr=1e-2, weight_decay=0.01)
        for step in range(3):
            parameter.grad = (a["grad"] * (step + 1)).astype(dtype)
            adam.step()
        return {"w": parameter.data}

    def run(a):
        from cnnlab.backend import dispatch

        return steps(a, np.float32), "loops" if dispatch.loops() else "numpy"

    def bounds(a):
        return {"w": (np.abs(a["w"]) + 3e-2, 3 * 12, 1.0)}  # |w| + 3 steps of at most lr each

    return EnginePath("Adam update, 3 steps", "adam", inputs, run,
                      lambda a: {"w": steps(a, np.float64)["w"]}, bounds)


def engine_paths(seed: int, quick: bool) -> list[EnginePath]:
    """The float32 paths training and inference take (see the section's comment)."""
    rng, dy_rng = np.random.default_rng([seed, 99]), np.random.default_rng([seed, 98])
    paths = [
        _conv_path("conv im2col (1->8, k3 p1, 12x12)", rng, (4, 1, 12, 12), (8, 1, 3, 3),
                   {"padding": 1}, dy_rng),
        _conv_path("conv wide (4->6, k3 p1, 5x5)", rng, (3, 4, 5, 5), (6, 4, 3, 3), {"padding": 1}, dy_rng),
        _conv_path("conv channel (16->8, k3 s2 p1)", rng, (3, 16, 7, 7), (8, 16, 3, 3),
                   {"stride": 2, "padding": 1}, dy_rng),
        _conv_path("conv Winograd (16->12, k3 p1, 10x10)", rng, (4, 16, 10, 10), (12, 16, 3, 3),
                   {"padding": 1}, dy_rng),
        _fused_path("fused block, direct (1->8, 28x28)", rng, (3, 1, 28, 28), (8, 1, 3, 3), 1, False, dy_rng),
        _fused_path("fused block, Winograd (32->16, 14x14)", rng, (3, 32, 14, 14), (16, 32, 3, 3), 1,
                    True, dy_rng),
        _linear_path(rng, dy_rng),
        _pool_relu_path(rng, dy_rng),
        _adam_path(rng, dy_rng),
    ]
    return [paths[index] for index in (0, 3, 4, 5, 6, 7, 8)] if quick else paths


def verify_engine(ops: list[str] | None, seed: int, quick: bool, torch) -> dict:
    """Every engine path at every kernel level this CPU runs -> the report's "engine" part."""
    from cnnlab import backend

    everything = not ops or set(ops) >= set(OPS)  # then the fused blocks and Adam too
    paths = [path for path in engine_paths(seed, quick) if everything or path.op in ops]
    levels = list(backend.runnable_levels())
    record = {"levels": levels, "cpu": backend.info()["cpu"], "paths": {}, "passed": True, "error": None}
    for path in paths:
        rows = record["paths"].setdefault(path.name, {})
        inputs32 = {key: value.astype(np.float32) for key, value in path.inputs.items()}
        reference = path.reference(path.inputs)
        bounds = path.bounds(path.inputs)
        torch_reference = path.torch(torch, path.inputs) if torch is not None and path.torch else None
        for level in levels:
            try:
                with backend.use(level):
                    ours, taken = path.run(inputs32)
            except Exception as error:  # a path that raises fails, the sweep goes on
                rows[level] = {"path": None, "worst_ratio": None, "passed": False,
                               "error": f"{type(error).__name__}: {error}"}
                record["passed"] = False
                continue
            dtype_ok = all(np.asarray(value).dtype == np.float32 for value in ours.values())
            ratios = [bound_ratio(ours.get(key), expected, *bounds[key])
                      for key, expected in reference.items()]
            if torch_reference is not None:
                ratios += [bound_ratio(ours.get(key), expected, *bounds[key])
                           for key, expected in torch_reference.items()]
            worst = max(ratios) if dtype_ok else float("inf")
            passed = worst <= 1.0
            rows[level] = {"path": taken, "worst_ratio": worst if np.isfinite(worst) else None,
                           "passed": passed, "error": None if dtype_ok else "output is not float32"}
            record["passed"] = record["passed"] and passed
    return record
