"""The window view shared by the convolution and pooling ops (argument checks: cnnlab.utils.validation)."""

from __future__ import annotations

import numpy as np


def window(padded: np.ndarray, row: int, col: int, stride: tuple[int, int],
           out_hw: tuple[int, int]) -> np.ndarray:
    """The (N, C, H_out, W_out) view of the input pixels that kernel offset (row, col) sees.

    ``row``/``col`` are the offset in input pixels (m * dilation); output (i, j) reads
    ``padded[..., s_h * i + row, s_w * j + col]``.
    """
    return padded[:, :, row:row + stride[0] * (out_hw[0] - 1) + 1:stride[0],
                  col:col + stride[1] * (out_hw[1] - 1) + 1:stride[1]]
