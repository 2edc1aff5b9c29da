# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Convolution by hand, and what a conv layer really computes
#
# Lecture 001 defines convolution with the kernel flipped as it slides,
# $C(i, j) = \sum_m \sum_n X(m, n)\, K(i - m, j - n)$. Lecture 002's layer formula,
# $Y(i, j) = \sum_m \sum_n W(m, n)\, X(s i + m - p, s j + n - p)$, has no flip: it is a
# cross-correlation. Both with plain loops on a 5x5 image:

# %% [markdown]
# **Setup.** The next cell installs cnnlab into this notebook's kernel when it is missing: from
# this repository when the notebook sits in a clone of it (`pip install -e '..[plot]'`),
# otherwise `pip install 'cnnlab[plot]'`. In a hosted notebook service, run it first; everything
# else runs on the CPU (a GPU is used where the cell says so and there is one).

# %%
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("cnnlab") is None:
    clone = next((folder for folder in (Path.cwd(), *Path.cwd().parents)
                  if (folder / "pyproject.toml").is_file() and (folder / "cnnlab").is_dir()), None)
    target = ["-e", f"{clone}[plot]"] if clone else ["cnnlab[plot]"]
    print("cnnlab is not installed in this kernel; installing it: pip install", *target)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *target])
    importlib.invalidate_caches()
print("cnnlab", importlib.import_module("cnnlab").__version__)

# %%
import numpy as np

from cnnlab.ops.conv import conv2d_forward


def convolution_full(image, kernel):
    """Lecture 001: C(i, j) = sum X(m, n) K(i-m, j-n), wherever they overlap."""
    (image_h, image_w), (kernel_h, kernel_w) = image.shape, kernel.shape
    out = np.zeros((image_h + kernel_h - 1, image_w + kernel_w - 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for m in range(image_h):
                for n in range(image_w):
                    if 0 <= i - m < kernel_h and 0 <= j - n < kernel_w:
                        out[i, j] += image[m, n] * kernel[i - m, j - n]
    return out


def cross_correlation(image, kernel, stride=1, padding=0):
    """Lecture 002: Y(i, j) = sum W(m, n) X(s*i + m - p, s*j + n - p), zero outside X."""
    (image_h, image_w), (kernel_h, kernel_w) = image.shape, kernel.shape
    out = np.zeros(((image_h + 2 * padding - kernel_h) // stride + 1,
                    (image_w + 2 * padding - kernel_w) // stride + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for m in range(kernel_h):
                for n in range(kernel_w):
                    row, column = stride * i + m - padding, stride * j + n - padding
                    if 0 <= row < image_h and 0 <= column < image_w:
                        out[i, j] += kernel[m, n] * image[row, column]
    return out


image = np.random.default_rng(0).integers(0, 10, (5, 5)).astype(np.float64)
kernel = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])  # Sobel: flipped it is -K
true_convolution = convolution_full(image, kernel)[2:-2, 2:-2]   # the 'valid' 3x3 part
correlation = cross_correlation(image, kernel)
print("true convolution (kernel flipped):\n", true_convolution)
print("cross-correlation (what conv layers compute):\n", correlation)
print("they differ:", not np.allclose(true_convolution, correlation))
print("cross-correlation with the flipped kernel == convolution:",
      np.allclose(cross_correlation(image, kernel[::-1, ::-1]), true_convolution))

# %% [markdown]
# cnnlab's layer op works on batches, `(N, C, H, W)` inputs and `(C_out, C_in, kH, kW)`
# weights, and computes the cross-correlation, as PyTorch's `Conv2d` does:

# %%
ours, _ = conv2d_forward(image[None, None], kernel[None, None])
strided, _ = conv2d_forward(image[None, None], kernel[None, None], stride=2, padding=1)
print("conv2d_forward == cross-correlation loops:", np.allclose(ours[0, 0], correlation))
print("stride 2, padding 1:", strided.shape[2:], np.allclose(strided[0, 0],
      cross_correlation(image, kernel, stride=2, padding=1)))

# %% [markdown]
# The same Sobel kernel on a real image finds vertical edges. `cnnlab.lecture.plot` is the
# notes' `plot`: in a notebook it shows the image right away.

# %%
from cnnlab.lecture import load_lecture_data, montage, plot

name, (X, Y, X_test, Y_test) = load_lecture_data(train_limit=16, test_limit=16)
edges, _ = conv2d_forward(X[:16], kernel[None, None].astype(np.float32), padding=1)
print(f"{name}: 16 images and their vertical edges")
plot(np.hstack([montage(X[:16]), montage(np.abs(edges))]), size_inches=8)
