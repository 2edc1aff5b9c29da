"""The "wide" im2col for stride-1 convolutions: long contiguous copies, a few images at a time.

With stride 1, kernel tap (m, n) sees, in each padded image flattened to H' * W' pixels,
one contiguous run starting at ``d_h m W' + d_w n``. Computing the output on the padded
width W' (H_out rows of W' pixels; the last W' - W_out of each row are junk that is
dropped) turns every im2col and col2im step into a copy or add of runs ~H_out * W' long,
where the plain layout moves rows only W_out long (numpy's per-row overhead dominates
at W_out = 14). The junk columns cost (W' / W_out - 1) extra GEMM work (14% at 14x14)
and are kept finite in cols and exactly zero in dY, so they never reach dW or dX.

Layout: cols (K + 1, n * H_out * W') for a chunk of n images, rows (c_in, m, n) plus the
ones row of the bias.

Chunks: for the lecture's conv2, cols are 16 MB per 64 images, and dcols as much again.
Built for the whole batch, each would be written to DRAM and read back. A chunk's cols
are ~1 MB (:data:`CHUNK_BYTES`), so im2col, the GEMM, and col2im pass each chunk while it
is still in cache. The forward keeps only x for the backward, which redoes the cheap
im2col chunk by chunk and adds each chunk's share of dW into one accumulator.

With cnnlab's C loops at the chosen level (cnnlab/backend/dispatch.py), im2col, col2im and the two layout
copies run as single loops over one image plane at a time (a zero-padded plane sits in L1),
with the same bits as the NumPy code here.
"""

from __future__ import annotations

import numpy as np

from cnnlab.backend import dispatch, gemm, workspace

CHUNK_BYTES = 1 << 20  # one chunk's cols: about the L2 cache of one core


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


def _loops(module, *arrays):
    """``module`` (cnnlab._loops or None) when it takes these arrays, else None (the NumPy code)."""
    return module if module is not None and dispatch.contiguous_float(*arrays) else None


def _loop_geometry(setup) -> tuple[int, ...]:
    """The integers the C loops take: pad_top, pad_left, H', W', kH, kW, d_h, d_w."""
    return (setup.pads[0], setup.pads[2]) + setup.padded_hw + setup.kernel + setup.dilation


def _cols_rows(setup) -> int:
    return setup.in_channels * setup.kernel[0] * setup.kernel[1] + 1


def chunks(setup) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of images: as many as keep one chunk's cols near CHUNK_BYTES."""
    _, wide, _, _ = _geometry(setup)
    per_image = _cols_rows(setup) * wide * np.dtype(setup.dtype).itemsize
    step = max(1, min(setup.batch, CHUNK_BYTES // per_image))
    return [(start, min(start + step, setup.batch)) for start in range(0, setup.batch, step)]


def _init_cols(cols: np.ndarray) -> None:
    cols.fill(0)
    cols[-1] = 1


def _im2col(module, x: np.ndarray, setup, geometry, padded_input, cols: np.ndarray) -> None:
    """Fill cols (junk columns and the ones row stay as they are) from the images x."""
    module = _loops(module, x)
    image, wide, run, starts = geometry
    if module is not None and len(starts) <= 64:
        module.wide_im2col(x, cols, *_loop_geometry(setup))
        return
    padded, pooled = padded_input(x, setup)
    flat = np.ascontiguousarray(padded).reshape(x.shape[0], setup.in_channels, image)
    taps = cols[:-1].reshape(setup.in_channels, len(starts), x.shape[0], wide)
    for tap, start in enumerate(starts):
        np.copyto(taps[:, tap, :, :run], flat[:, :, start:start + run].transpose(1, 0, 2))
    if pooled:
        workspace.give(padded, "conv-padded", variant=setup.pads)


def _chunk_buffers(borrowed: workspace.Borrowed, setup, images: int, tags: tuple[str, ...]):
    """The scratch arrays named by ``tags`` for a chunk of ``images`` images."""
    columns = images * _geometry(setup)[1]
    shapes = {"conv-cols-wide": (_cols_rows(setup), columns),
              "conv-product": (setup.out_channels, columns),
              "conv-dy-wide": (setup.out_channels, columns),
              "conv-dcols": (_cols_rows(setup) - 1, columns)}
    inits = {"conv-cols-wide": _init_cols, "conv-dy-wide": lambda buffer: buffer.fill(0)}
    return [borrowed.get(tag, shapes[tag], setup.dtype, init=inits.get(tag)) for tag in tags]


def forward(x: np.ndarray, weight_matrix: np.ndarray, setup, padded_input, y: np.ndarray) -> None:
    """y = W cols + b, chunk by chunk; ``weight_matrix`` is (C_out, K), or (C_out, K + 1) with the bias."""
    with_bias = weight_matrix.shape[1] == _cols_rows(setup)
    geometry, module = _geometry(setup), dispatch.loops()
    with workspace.Borrowed() as borrowed:
        for start, stop in chunks(setup):
            cols, product = _chunk_buffers(borrowed, setup, stop - start,
                                           ("conv-cols-wide", "conv-product"))
            _im2col(module, x[start:stop], setup, geometry, padded_input, cols)
            gemm.matmul(weight_matrix, cols if with_bias else cols[:-1], out=product)  # Y = W cols
            _to_nchw(module, product, y[start:stop], setup)


def backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, setup, padded_input,
             input_grad: bool):
    """Returns (dweight_ext (C_out, K + 1), dx or None); column K of dweight_ext is dbias."""
    dweight_ext = np.empty((setup.out_channels, _cols_rows(setup)), dtype=setup.dtype)
    dx = np.empty(x.shape, dtype=setup.dtype) if input_grad else None
    weight_t = weight.reshape(weight.shape[0], -1).T
    geometry, module = _geometry(setup), dispatch.loops()
    with workspace.Borrowed() as borrowed:
        for start, stop in chunks(setup):
            cols, dy_matrix, dcols = _chunk_buffers(borrowed, setup, stop - start,
                                                    ("conv-cols-wide", "conv-dy-wide", "conv-dcols"))
            _im2col(module, x[start:stop], setup, geometry, padded_input, cols)
            _to_wide(module, dy[start:stop], dy_matrix, setup)
            # dW = sum over chunks of dY_chunk cols_chunk^T
            gemm.matmul(dy_matrix, cols.T, out=dweight_ext, accumulate=start > 0)
            if input_grad:
                gemm.matmul(weight_t, dy_matrix, out=dcols)  # dcols = W^T dY
                _col2im(module, dcols, setup, geometry, dx[start:stop])
    return dweight_ext, dx


def _to_nchw(module, product: np.ndarray, y: np.ndarray, setup) -> None:
    """(C_out, n H_out W') GEMM output -> y (n, C_out, H_out, W_out), junk columns dropped."""
    module = _loops(module, product, y)
    if module is not None:
        module.wide_to_nchw(product, y)
        return
    out_h, out_w = setup.out_hw
    wide_rows = product.reshape(setup.out_channels, y.shape[0], out_h, -1)
    np.copyto(y, wide_rows[..., :out_w].transpose(1, 0, 2, 3))


def _to_wide(module, dy: np.ndarray, dy_matrix: np.ndarray, setup) -> None:
    """dY (n, C_out, H_out, W_out) -> its real columns of dy_matrix; the junk ones keep their zeros."""
    dy = np.ascontiguousarray(dy)
    module = _loops(module, dy, dy_matrix)
    if module is not None:
        module.nchw_to_wide(dy, dy_matrix)
        return
    out_h, out_w = setup.out_hw
    np.copyto(dy_matrix.reshape(setup.out_channels, dy.shape[0], out_h, -1)[..., :out_w],
              dy.transpose(1, 0, 2, 3))


def _col2im(module, dcols: np.ndarray, setup, geometry, dx: np.ndarray) -> None:
    """dx (n, C_in, H, W) = the runs of dcols added back onto the padded planes, cropped."""
    image, wide, run, starts = geometry
    module = _loops(module, dcols, dx)
    if module is not None and len(starts) <= 64:
        module.wide_col2im(dcols, dx, *_loop_geometry(setup))
        return
    dx_padded = workspace.take("conv-dx-padded", dx.shape[:2] + setup.padded_hw, dcols.dtype)
    dx_padded.fill(0)
    flat = dx_padded.reshape(dx.shape[0], setup.in_channels, image)
    taps = dcols.reshape(setup.in_channels, len(starts), dx.shape[0], wide)
    for tap, start in enumerate(starts):
        target = flat[:, :, start:start + run]
        np.add(target, taps[:, tap, :, :run].transpose(1, 0, 2), out=target)
    top, _, left, _ = setup.pads
    np.copyto(dx, dx_padded[:, :, top:top + setup.input_hw[0], left:left + setup.input_hw[1]])
    workspace.give(dx_padded, "conv-dx-padded")
