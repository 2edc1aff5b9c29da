"""cnnlab: the math of convolutional networks in NumPy, verified against PyTorch.

    import numpy as np
    import cnnlab
    from cnnlab import nn, ops, optim

    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, rng=rng), nn.ReLU(), ...)

Subpackages: ``ops`` (pure forward/backward functions), ``nn`` (layers with
PyTorch's names and state_dict keys), ``optim`` (SGD, Adam, AdamW), ``data``
(IDX files, named datasets, batches). Importing cnnlab imports NumPy only.
"""

__version__ = "0.1.0"

from cnnlab import errors, ops, nn, optim  # noqa: E402  (re-exports)
from cnnlab.errors import CnnlabError  # noqa: E402

__all__ = ["errors", "ops", "nn", "optim", "CnnlabError", "__version__"]
