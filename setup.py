"""The optional compiled part of cnnlab; everything else is in pyproject.toml.

Two C extensions, both optional: without a C compiler or Python headers the build
skips them and the NumPy code does the work (same results).

- cnnlab.backend._sgemm (cnnlab/backend/native/sgemm.c): a single-threaded float32 GEMM with an
  AVX-512 micro-kernel, used by conv and linear layers while training splits each
  batch over threads (cnnlab/ops/_gemm.py). Plain -O3: the AVX-512 functions carry
  their own target attributes and are chosen at run time, so the module loads on
  any x86-64 CPU.
- cnnlab.backend._loops (cnnlab/backend/native/loops.c, winograd.c): one-pass loops for the
  memory-bound steps (2x2 max pool, ReLU, the Adam update, im2col; cnnlab/ops/_kernels.py),
  the fused first conv block and the Winograd transforms. -ffp-contract=off
  keeps every multiply and add rounded on its own, as in NumPy, so the results
  match the NumPy code bit for bit; -fno-math-errno lets sqrt vectorise.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("cnnlab.backend._sgemm", sources=["cnnlab/backend/native/sgemm.c"],
              extra_compile_args=["-O3"], optional=True),
    Extension("cnnlab.backend._loops", sources=["cnnlab/backend/native/loops.c", "cnnlab/backend/native/winograd.c"],
              depends=["cnnlab/backend/native/buffers.h"],
              extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno",
                                  "-fno-trapping-math"], optional=True),
])
