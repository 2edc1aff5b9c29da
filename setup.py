"""The optional compiled part of cnnlab; everything else is in pyproject.toml.

cnnlab._sgemm is a single-threaded float32 GEMM with an AVX-512 micro-kernel
(cnnlab/_native/sgemm.c), used by the convolution while training splits each
batch over threads (see cnnlab/ops/_gemm.py). It is optional: without a C
compiler or Python headers the build skips it and NumPy's BLAS does the work.
Plain -O3: the AVX-512 functions carry their own target attributes and are
chosen at run time, so the module loads on any x86-64 CPU.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cnnlab._sgemm", sources=["cnnlab/_native/sgemm.c"],
                             extra_compile_args=["-O3"], optional=True)])
