r"""Winograd's minimal filtering F(2x2, 3x3) for 3x3, stride-1 convolutions in float32.

Each 2x2 block of outputs comes from a 4x4 tile d of the padded input (Lavin & Gray, 2016):

.. math::
    Y_{tile} = A^T \Big[ \sum_{c_{in}} (G\, g_{c_{out}, c_{in}}\, G^T) \odot (B^T d_{c_{in}} B) \Big] A

The sum over input channels, for each of the 16 positions xi of the 4x4 tile, is one
matrix product ``M[xi] = U[xi] V[xi]`` with ``U = G g G^T`` (C_out x C_in) and
``V = B^T d B`` (C_in x tiles): 16 multiplies per tile and channel pair where the direct
sum (im2col) takes 36, so 2.25x fewer FLOPs. The backward uses the adjoints of the same
linear maps, again as 16 products each:

- dW: ``dW = sum over tiles of G^T [(A dY A^T) (.) V] G``, i.e. ``dU[xi] = Yhat[xi] V[xi]^T``;
- dX: ``dV[xi] = U[xi]^T Yhat[xi]``, and each tile adds ``B dV B^T`` back onto the padded input.

The transforms (cnnlab/backend/native/winograd.c) work a few images at a time, like the wide
im2col (cnnlab/backend/conv_wide.py), so the transformed arrays stay in cache; the products
are cnnlab's GEMM in data-parallel steps, NumPy's elsewhere. The result equals the
direct convolution up to float32 rounding (the transforms add a few roundings of their
own; the tests compare against PyTorch at the same tolerance as im2col).

Used for float32 when the compiled transforms run at the chosen level; ``ENABLED = False``
(or ``CNNLAB_KERNELS=numpy``) sends these convolutions to im2col instead.
"""

from __future__ import annotations

import numpy as np

from cnnlab.backend import dispatch, gemm, workspace

#: Set to False to run 3x3 convolutions through im2col (tests compare the two).
ENABLED = True
#: Fewest input channels for Winograd: the products' inner dimension is C_in, and below
#: this im2col's one product (inner dimension 9 C_in) is faster (the lecture's conv1 has 1).
MIN_IN_CHANNELS = 8
#: Bytes of transformed input and output per chunk of images (about the L2 cache).
CHUNK_BYTES = 2 << 20

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def usable(setup) -> bool:
    """True for a float32 3x3, stride-1, undilated, ungrouped convolution that the C loops can run."""
    if not (ENABLED and setup.dtype == np.float32 and setup.kernel == (3, 3)
            and setup.in_channels >= MIN_IN_CHANNELS
            and setup.stride == (1, 1) and setup.dilation == (1, 1) and setup.groups == 1):
        return False
    return dispatch.winograd_loops() is not None


def describe() -> str:
    """For benchmarks and bug reports: whether 3x3 convolutions run as Winograd here."""
    if not ENABLED:
        return "off (cnnlab.backend.winograd.ENABLED = False)"
    if dispatch.winograd_loops() is None:
        return f"off (no compiled transforms at level {dispatch.level()})"
    return f"F(2x2, 3x3) for float32 3x3 stride-1 convolutions with >= {MIN_IN_CHANNELS} input channels"


def weight_transform(weight: np.ndarray) -> np.ndarray:
    """U[xi] = (G g G^T)[xi] for every filter g: (16, C_out, C_in), float32."""
    u = np.empty((16,) + weight.shape[:2], dtype=np.float32)
    dispatch.winograd_loops().winograd_weights(np.ascontiguousarray(weight), u)
    return u


def weight_gradient(du: np.ndarray) -> np.ndarray:
    """dW = G^T dU G for each filter, the adjoint of :func:`weight_transform`: (C_out, C_in, 3, 3)."""
    dweight = np.empty(du.shape[1:] + (3, 3), dtype=np.float32)
    dispatch.winograd_loops().winograd_weight_grad(du, dweight)
    return dweight


def _tiles(setup) -> int:
    out_h, out_w = setup.out_hw
    return ((out_h + 1) // 2) * ((out_w + 1) // 2)


def _chunks(setup) -> list[tuple[int, int]]:
    per_image = 16 * _tiles(setup) * (setup.in_channels + setup.out_channels) * 4
    step = max(1, min(setup.batch, CHUNK_BYTES // per_image))
    return [(start, min(start + step, setup.batch)) for start in range(0, setup.batch, step)]


def _geometry(setup) -> tuple[int, int, int, int]:
    """pad_top, pad_left, H_out, W_out: what the input transforms take."""
    return (setup.pads[0], setup.pads[2]) + setup.out_hw


def _chunk_buffers(borrowed: workspace.Borrowed, setup, images: int, tags: dict[str, int]):
    """(16, channels, tiles) float32 scratch arrays, one per tag, for a chunk of ``images`` images."""
    tiles = images * _tiles(setup)
    return [borrowed.get(tag, (16, channels, tiles), np.float32) for tag, channels in tags.items()]


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, setup, y: np.ndarray,
            code: np.ndarray | None = None) -> np.ndarray:
    """y = conv2d(x, weight, bias), chunk by chunk: V = B^T d B, M[xi] = U[xi] V[xi], y = A^T M A + b.

    Returns U (the transformed weights), for :func:`backward`.

    With ``code`` (uint8, y's shape), y is instead max_pool2d(relu(conv2d(...)), 2), each
    tile's 2x2 outputs being one pool window, and code records each window's maximum
    (its tap 0..3, or 255 where the ReLU gave 0): the conv output is never stored.
    """
    module = dispatch.winograd_loops()
    u = weight_transform(weight)
    bias = np.zeros(setup.out_channels, np.float32) if bias is None else np.ascontiguousarray(bias)
    tags = {"winograd-v": setup.in_channels, "winograd-m": setup.out_channels}
    with workspace.Borrowed() as borrowed:
        for start, stop in _chunks(setup):
            v, m = _chunk_buffers(borrowed, setup, stop - start, tags)
            module.winograd_input(np.ascontiguousarray(x[start:stop]), v, *_geometry(setup))
            gemm.matmul_batched(u, v, out=m)
            if code is None:
                module.winograd_output(m, bias, y[start:stop])
            else:
                module.winograd_output_relu_pool(m, bias, y[start:stop], code[start:stop],
                                                 *setup.out_hw)
    return u


def backward(dy: np.ndarray, x: np.ndarray, u: np.ndarray, setup, input_grad: bool,
             code: np.ndarray | None = None):
    """(dweight, dbias float64, dx or None) of :func:`forward`, given the U it returned; dy is
    C-contiguous float32. With ``code`` (from a pooled forward), dy is the pooled output's gradient.
    """
    module = dispatch.winograd_loops()
    du = np.empty((16, setup.out_channels, setup.in_channels), dtype=np.float32)
    dbias = np.zeros(setup.out_channels, dtype=np.float64)
    dx = np.empty(x.shape, dtype=np.float32) if input_grad else None
    tags = {"winograd-v": setup.in_channels, "winograd-m": setup.out_channels}
    if input_grad:
        tags["winograd-dv"] = setup.in_channels
    with workspace.Borrowed() as borrowed:
        for start, stop in _chunks(setup):
            v, y_hat, *dv = _chunk_buffers(borrowed, setup, stop - start, tags)
            module.winograd_input(np.ascontiguousarray(x[start:stop]), v, *_geometry(setup))
            if code is None:
                module.winograd_grad_output(dy[start:stop], y_hat, dbias)
            else:
                module.winograd_grad_output_pooled(dy[start:stop], code[start:stop], y_hat, dbias,
                                                   *setup.out_hw)
            # dU[xi] = sum over chunks of Yhat[xi] V[xi]^T
            gemm.matmul_batched(y_hat, v.transpose(0, 2, 1), out=du, accumulate=start > 0)
            if input_grad:
                gemm.matmul_batched(u.transpose(0, 2, 1), y_hat, out=dv[0])  # dV = U^T Yhat
                module.winograd_grad_input(dv[0], dx[start:stop], *_geometry(setup))
    return weight_gradient(du), dbias, dx
