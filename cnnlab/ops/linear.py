"""The fully connected (dense) layer: a weighted sum of every input feature.

Lecture 003 ("Weighted Sum"): the input of neuron j is

    z_j = sum_i w_ij * a_i + b_j

which for a batch is one matrix product, ``y = x @ W^T + b``. The weight is stored as
PyTorch stores it, (out_features, in_features), so ``W[j, i]`` is the lecture's ``w_ij``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ShapeError
from cnnlab.utils.validation import check_input, float_array, optional_float_array


def check_linear_shapes(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> None:
    if x.ndim != 2:
        raise ShapeError(f"linear expects input of shape (N, in_features), got {x.shape}; "
                         "flatten the input first")
    if weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ShapeError(f"linear weight {weight.shape} does not fit input {x.shape}: "
                         f"expected (out_features, {x.shape[1]})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"linear bias has shape {bias.shape}, expected ({weight.shape[0]},)")


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None):
    """Apply ``y = x W^T + b`` (lecture 003: z_j = sum_i w_ij a_i + b_j).

    Args:
        x: input activations.
        weight: the weights, ``weight[j, i]`` connecting input i to output j.
        bias: one bias per output feature, or None.

    Shape:
        - x: (N, in_features)
        - weight: (out_features, in_features)
        - bias: (out_features,)
        - y: (N, out_features)

    Returns:
        ``(y, cache)``; pass the cache to :func:`linear_backward`. The cache refers to ``x``
        and ``weight`` themselves: they must not change before the backward.

    The same input rules as every op (cnnlab/utils/validation.py): float32 or float64, one dtype,
    ``weight`` and ``bias`` may be ``nn`` Parameters; a batch of 0 gives a (0, out) output.
    """
    check_input(x, "linear")
    weight = float_array(weight, "linear", "weight", like=x)
    bias = optional_float_array(bias, "linear", "bias", like=x)
    check_linear_shapes(x, weight, bias)
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, (x, weight, bias is not None)


def linear_backward(dy: np.ndarray, cache, input_grad: bool = True):
    """Gradients of the weighted sum.

    dL/dx = dy W,   dL/dW = dy^T x,   dL/db = sum over the batch of dy.

    ``input_grad=False`` skips dL/dx (returned as None): the first layer of a
    network never needs it.

    Shape:
        - dy: (N, out_features)
        - dx: (N, in_features); dweight: (out_features, in_features);
          dbias: (out_features,) or None when the forward had no bias.
    """
    x, weight, has_bias = cache
    dx = dy @ weight if input_grad else None
    dweight = dy.T @ x
    dbias = dy.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
