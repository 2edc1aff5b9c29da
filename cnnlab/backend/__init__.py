"""cnnlab's speed machinery, behind one interface the layers call.

The lecture math lives in :mod:`cnnlab.ops` as readable reference code. This package
holds what makes it fast: the compiled kernels (``native/``, built as
``cnnlab.backend._sgemm`` and ``cnnlab.backend._loops``), CPU detection and dispatch,
the matrix products, workspaces, the fast convolution layouts, Winograd, the fused
blocks and the data-parallel step.
"""
