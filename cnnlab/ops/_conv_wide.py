"""The "wide" im2col for stride-1 convolutions: long contiguous copies instead of short rows.

With stride 1, kernel tap (m, n) sees, in each padded image flattened to H' * W' pixels,
one contiguous run starting at ``d_h m W' + d_w n``. Computing the output on the padded
width W' (H_out rows of W' pixels; the last W' - W_out of each row are junk that is
dropped) turns every im2col and col2im step into a copy or add of runs ~H_out * W' long,
where the plain layout moves rows only W_out long (numpy's per-row overhead dominates
at W_out = 14). The junk columns cost (W' / W_out - 1) extra GEMM work (14% at 14x14)
and are kept finite in cols and exactly zero in dY, so they never reach dW or dX.

Layout: cols (K + 1, N * H_out * W'), rows (c_in, m, n) plus the ones row of the bias.
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops import _gemm, _workspace


def _geometry(setup):
    padded_h, padded_w = setup.padded_hw
    out_h, out_w = setup.out_hw
    # Run length: the last output row needs only W_out pixels, which keeps every run
    # inside its own image (the last tap's run ends exactly at pixel H' * W').
    run = (out_h - 1) * padded_w + out_w
    starts = [setup.offset(m, n)[0] * padded_w + setup.offset(m, n)[1]
              for m in range(setup.kernel[0]) for n in range(setup.kernel[1])]
    return padded_h * padded_w, out_h * padded_w, run, starts


def usable(setup) -> bool:
    return setup.groups == 1 and setup.stride == (1, 1)


def _init_cols(cols: np.ndarray) -> None:
    cols.fill(0)
    cols[-1] = 1


def im2col(x: np.ndarray, setup, padded_input) -> np.ndarray:
    image, wide, run, starts = _geometry(setup)
    rows = setup.in_channels * setup.kernel[0] * setup.kernel[1]
    cols = _workspace.take("conv-cols-wide", (rows + 1, setup.batch * wide), x.dtype, init=_init_cols)
    padded, pooled = padded_input(x, setup)
    flat = np.ascontiguousarray(padded).reshape(setup.batch, setup.in_channels, image)
    taps = cols[:-1].reshape(setup.in_channels, len(starts), setup.batch, wide)
    for tap, start in enumerate(starts):
        np.copyto(taps[:, tap, :, :run], flat[:, :, start:start + run].transpose(1, 0, 2))
    if pooled:
        _workspace.give(padded, "conv-padded", variant=setup.pads)
    return cols


def release(cols: np.ndarray) -> None:
    _workspace.give(cols, "conv-cols-wide")


def forward(weight_matrix: np.ndarray, cols: np.ndarray, setup, y: np.ndarray) -> None:
    out_h, out_w = setup.out_hw
    product = _workspace.take("conv-product", (weight_matrix.shape[0], cols.shape[1]), y.dtype)
    _gemm.matmul(weight_matrix, cols if weight_matrix.shape[1] == cols.shape[0] else cols[:-1], out=product)
    wide_rows = product.reshape(setup.out_channels, setup.batch, out_h, -1)
    np.copyto(y, wide_rows[..., :out_w].transpose(1, 0, 2, 3))
    _workspace.give(product, "conv-product")


def backward(dy: np.ndarray, cols: np.ndarray, weight: np.ndarray, setup, input_grad: bool):
    """Returns (dweight_ext (C_out, K + 1), dx_padded or None)."""
    image, wide, run, starts = _geometry(setup)
    out_h, out_w = setup.out_hw
    dy_matrix = _workspace.take("conv-dy-wide", (setup.out_channels, cols.shape[1]), dy.dtype,
                                init=lambda buffer: buffer.fill(0))
    # Only the real columns are written; the junk ones keep their zeros.
    np.copyto(dy_matrix.reshape(setup.out_channels, setup.batch, out_h, -1)[..., :out_w],
              dy.transpose(1, 0, 2, 3))
    dweight_ext = _gemm.matmul(dy_matrix, cols.T)
    dx_padded = None
    if input_grad:
        dcols = _workspace.take("conv-dcols", (cols.shape[0] - 1, cols.shape[1]), dy.dtype)
        _gemm.matmul(weight.reshape(weight.shape[0], -1).T, dy_matrix, out=dcols)
        dx_padded = _col2im(dcols, setup, image, wide, run, starts)
        _workspace.give(dcols, "conv-dcols")
    _workspace.give(dy_matrix, "conv-dy-wide")
    return dweight_ext, dx_padded


def _col2im(dcols, setup, image, wide, run, starts) -> np.ndarray:
    """dX_padded (N, C, H', W'); a pooled buffer when the conv pads, else a fresh array."""
    shape = (setup.batch, setup.in_channels) + setup.padded_hw
    if any(setup.pads):
        dx_padded = _workspace.take("conv-dx-padded", shape, dcols.dtype)
        dx_padded.fill(0)
    else:
        dx_padded = np.zeros(shape, dtype=dcols.dtype)
    flat = dx_padded.reshape(setup.batch, setup.in_channels, image)
    taps = dcols.reshape(setup.in_channels, len(starts), setup.batch, wide)
    for tap, start in enumerate(starts):
        target = flat[:, :, start:start + run]
        np.add(target, taps[:, tap, :, :run].transpose(1, 0, 2), out=target)
    return dx_padded
