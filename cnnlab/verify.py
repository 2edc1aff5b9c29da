"""The op sweep behind ``cnnlab verify``: every op against PyTorch and finite differences.

For a seeded grid of configurations per op, each check measures the worst relative
error ``max |ours - reference| / max |reference|`` over all configurations:

- ``forward vs PyTorch``: the op's output against ``torch.nn.functional`` (float64);
- ``grads vs PyTorch``: every gradient against PyTorch autograd of ``sum(y * dy)``;
- ``grads vs finite diff.``: gradients against float64 central differences at sampled
  coordinates (skipped for inputs with ties, where the max has no derivative);
- ``fast vs naive``, ``fast grads vs naive``: the vectorised convolution and its
  gradients against the lecture's loops (``conv2d_naive``, ``conv2d_naive_backward``);
- ``float32 vs float64``: the float32 run (which must stay float32) against float64.

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
        from cnnlab.config import suggest

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
               use_torch: bool = True) -> dict:
    """Sweep the ops; returns the report as plain data (what ``--json`` writes).

    ``{"seed", "quick", "torch": version or None, "passed", "seconds",
    "ops": {name: {"configs", "passed", "error", "checks": {check: {"worst_error",
    "tolerance", "passed", "worst_config"}}}}}``
    """
    torch = _import_torch() if use_torch else None
    start = time.perf_counter()
    results = {name: verify_op(name, seed, quick, torch) for name in (ops or list(OPS))}
    return {
        "seed": seed, "quick": quick, "torch": torch.__version__ if torch is not None else None,
        "passed": all(result["passed"] for result in results.values()),
        "seconds": round(time.perf_counter() - start, 3), "ops": results,
    }


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
    lines.append("")
    lines.append(f"FAIL: {', '.join(failed)}" if failed else
                 f"PASS: all {len(report['ops'])} ops ({report['seconds']:.1f} s)")
    return "\n".join(lines)
