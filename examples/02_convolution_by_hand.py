"""Lectures 000-002: the convolution formula with loops, and what CNN layers really compute.

Lecture 001 defines convolution as

    C(i, j) = sum_m sum_n X(m, n) K(i - m, j - n)

(the kernel is flipped as it slides). Lecture 002's layer formula is different:

    Y(i, j) = sum_m sum_n W(m, n) X(s*i + m - p, s*j + n - p)

which is cross-correlation (no flip). This script computes both with plain loops
on a 5x5 image, shows that they differ unless the kernel is flipped, and that
cnnlab's conv2d_forward computes the second one.

Run:  python examples/02_convolution_by_hand.py
"""

from __future__ import annotations

import argparse

import numpy as np

from cnnlab.ops.conv import conv2d_forward


def convolution_full(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Lecture 001's C(i, j) = sum X(m, n) K(i-m, j-n), over every (i, j) where they overlap."""
    image_h, image_w = image.shape
    kernel_h, kernel_w = kernel.shape
    out = np.zeros((image_h + kernel_h - 1, image_w + kernel_w - 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for m in range(image_h):
                for n in range(image_w):
                    if 0 <= i - m < kernel_h and 0 <= j - n < kernel_w:
                        out[i, j] += image[m, n] * kernel[i - m, j - n]
    return out


def cross_correlation(image: np.ndarray, kernel: np.ndarray, stride: int = 1,
                      padding: int = 0) -> np.ndarray:
    """Lecture 002's Y(i, j) = sum W(m, n) X(s*i + m - p, s*j + n - p) (zero outside X)."""
    image_h, image_w = image.shape
    kernel_h, kernel_w = kernel.shape
    out_h = (image_h + 2 * padding - kernel_h) // stride + 1
    out_w = (image_w + 2 * padding - kernel_w) // stride + 1
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            for m in range(kernel_h):
                for n in range(kernel_w):
                    row, column = stride * i + m - padding, stride * j + n - padding
                    if 0 <= row < image_h and 0 <= column < image_w:
                        out[i, j] += kernel[m, n] * image[row, column]
    return out


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    image = np.random.default_rng(0).integers(0, 10, (5, 5)).astype(np.float64)
    kernel = np.array([[1.0, 0.0, -1.0],
                       [2.0, 0.0, -2.0],
                       [1.0, 0.0, -1.0]])  # Sobel edge filter: flipped 180 degrees it is -K
    np.set_printoptions(precision=1, suppress=True)
    print("image X (5x5):\n", image)
    print("kernel K (3x3):\n", kernel)

    full = convolution_full(image, kernel)
    # The 'valid' part: positions where the kernel lies entirely inside the image.
    true_convolution = full[2:-2, 2:-2]
    correlation = cross_correlation(image, kernel)
    flipped = kernel[::-1, ::-1]
    print("\ntrue convolution (lecture 001, kernel flipped), valid part 3x3:\n", true_convolution)
    print("cross-correlation (lecture 002, what conv layers compute) 3x3:\n", correlation)
    print("they differ (sign flips for this kernel):",
          not np.allclose(true_convolution, correlation))
    same_after_flip = np.allclose(cross_correlation(image, flipped), true_convolution)
    print("cross-correlation with the flipped kernel == true convolution:", same_after_flip)

    # cnnlab's layer op works on (N, C, H, W) inputs and (C_out, C_in, kH, kW) weights.
    ours, _ = conv2d_forward(image[None, None], kernel[None, None])
    print("\ncnnlab conv2d_forward == cross-correlation loops:",
          np.allclose(ours[0, 0], correlation))
    ours_flipped, _ = conv2d_forward(image[None, None], flipped[None, None].copy())
    print("cnnlab conv2d_forward(flipped kernel) == true convolution:",
          np.allclose(ours_flipped[0, 0], true_convolution))

    strided = cross_correlation(image, kernel, stride=2, padding=1)
    ours_strided, _ = conv2d_forward(image[None, None], kernel[None, None], stride=2, padding=1)
    print(f"stride 2, padding 1: output {strided.shape[0]}x{strided.shape[1]}, cnnlab matches:",
          np.allclose(ours_strided[0, 0], strided))
    checks = [not np.allclose(true_convolution, correlation), same_after_flip,
              np.allclose(ours[0, 0], correlation), np.allclose(ours_strided[0, 0], strided)]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
