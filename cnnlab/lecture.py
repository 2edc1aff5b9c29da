"""The lecture notes' helper functions, correct and device-safe.

The notes start with ``from mpcr import *`` (a helper library that imports
Colab-only modules and installs packages when imported). Change that one line to

    from cnnlab.lecture import *

and the notes' code runs on a laptop, a CUDA machine or an Apple-silicon Mac:

    X, Y, X_test, Y_test = load_mnist()                # (N, 1, 28, 28) in [0, 1]
    X, Y = GPU_data(X.reshape(-1, 784)), GPU_data(Y)   # on `device`: CUDA, MPS or CPU
    w = [GPU(randn_trunc((784, 500))), GPU(randn_trunc((500, 10)))]
    batches = Batches(X, Y, batch_size=100, seed=0)    # shuffled, every sample once an epoch
    for step in range(1000):
        x, y = batches.next()
        loss = cross_entropy(torch.relu(x @ w[0]) @ w[1], y)   # logits in, no softmax first
        loss.backward()
        gradient_step(w, h=0.01)

What is fixed compared with the notes (see docs/pitfalls.md for the numbers):

- ``cross_entropy`` takes LOGITS and applies a stable log-softmax itself, so
  ``cross_entropy(softmax(out), y)`` applies softmax twice; it warns when it is
  handed probabilities.
- ``get_batch`` / :class:`Batches` shuffle and cover every sample once per epoch,
  instead of drawing a random contiguous window.
- ``GPU`` / ``GPU_data`` use CUDA, or Apple's MPS, when there is one, and the
  CPU otherwise, instead of failing without CUDA.
- ``gradient_step(w, h)`` takes the step size instead of reading a global ``c``.
- Nothing is installed or downloaded when this module is imported.

PyTorch is needed for the tensor helpers (the notes' framework) but not to import
this module: torch and matplotlib are imported when first used. ``from
cnnlab.lecture import *`` also gives ``np``, ``torch``, ``nn`` and ``plt`` as the
notes expect, and therefore needs PyTorch.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import warnings
from typing import Any, Iterator

import numpy as np

from cnnlab.errors import CnnlabError, ConfigError, DataError, ShapeError
from cnnlab.utils.validation import positive_int

__all__ = [
    "np", "torch", "nn", "plt", "device",
    "softmax", "cross_entropy", "DoubleSoftmaxWarning", "randn_trunc", "acc",
    "plot", "montage", "montage_plot", "save_figure", "Batches", "get_batch", "gradient_step",
    "GPU", "GPU_data", "get_device", "load_mnist", "load_lecture_data",
]

TORCH_INSTALL_HINT = "pip install torch==2.13.0"

# The notes' truncated normal: sigma 0.1, cut at +-2 sigma (randn_trunc).
TRUNC_SIGMA = 0.1
TRUNC_CUT = 2.0


class DoubleSoftmaxWarning(UserWarning):
    """``cross_entropy`` was given rows that look like probabilities, not logits."""


# --------------------------------------------------------------------------- imports


def _torch():
    """Import PyTorch, or say in one line how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError as error:
        raise CnnlabError(
            f"cnnlab.lecture's tensor helpers need PyTorch, which is not installed: "
            f"{TORCH_INSTALL_HINT}"
        ) from error


def _figure_class():
    """matplotlib's Figure with the Agg canvas: works without a display."""
    try:
        figure_module = importlib.import_module("matplotlib.figure")
    except ImportError as error:
        raise CnnlabError("plotting needs matplotlib: pip install matplotlib") from error
    return figure_module.Figure


def get_device():
    """The best device here: CUDA, else Apple's MPS, else the CPU (a ``torch.device``)."""
    torch = _torch()
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def __getattr__(name: str) -> Any:
    # PEP 562: the heavy names the notes use are resolved on first access (and by
    # `from cnnlab.lecture import *`), so `import cnnlab.lecture` stays NumPy-only.
    if name == "torch":
        value = _torch()
    elif name == "nn":
        value = _torch().nn
    elif name == "device":
        value = get_device()
    elif name == "plt":
        try:
            value = importlib.import_module("matplotlib.pyplot")
        except ImportError as error:
            raise CnnlabError("plotting needs matplotlib: pip install matplotlib") from error
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _as_tensor(values):
    torch = _torch()
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def _to_numpy(values) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a NumPy array."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


# --------------------------------------------------------------------------- loss


def softmax(x, dim: int = 1):
    """Numerically stable softmax along ``dim`` (the notes' ``softmax``).

    .. math::
        \\text{softmax}(x)_{ij} = \\frac{\\exp(x_{ij} - m_i)}{\\sum_k \\exp(x_{ik} - m_i)},
        \\qquad m_i = \\max_k x_{ik}

    Subtracting the row maximum changes nothing mathematically and keeps ``exp``
    from overflowing for large logits.

    Args:
        x: logits, a tensor (or array-like).
        dim: the class dimension.

    Shape:
        - Input: :math:`(N, C)`
        - Output: :math:`(N, C)`, each row non-negative and summing to 1.
    """
    x = _as_tensor(x)
    shifted = x - x.max(dim=dim, keepdim=True).values
    exponentials = shifted.exp()
    return exponentials / exponentials.sum(dim=dim, keepdim=True)


def _looks_like_probabilities(outputs) -> bool:
    """True when every row lies in [0, 1] and sums to 1: softmax was already applied."""
    torch = _torch()
    if outputs.ndim != 2 or outputs.shape[1] < 2 or outputs.numel() == 0:
        return False
    with torch.no_grad():
        in_unit_interval = bool(((outputs >= 0) & (outputs <= 1)).all())
        if not in_unit_interval:
            return False
        row_sums = outputs.sum(dim=1)
        return bool(torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-4))


def cross_entropy(outputs, labels):
    """Mean cross-entropy loss from LOGITS; applies a stable log-softmax itself.

    .. math::
        \\ell = -\\frac{1}{N} \\sum_{n} \\log \\text{softmax}(x_n)_{y_n},
        \\qquad \\log \\text{softmax}(x)_c = x_c - m - \\log \\sum_k \\exp(x_k - m),
        \\qquad m = \\max_k x_k

    Equal to ``torch.nn.functional.cross_entropy(outputs, labels)``. Because the
    softmax is inside, pass the network's raw outputs: ``cross_entropy(softmax(out), y)``
    (as the notes write it) applies softmax twice, squeezing the probabilities toward
    uniform and shrinking the gradient. When every row of ``outputs`` is in [0, 1] and
    sums to 1 this warns (a :class:`DoubleSoftmaxWarning`, shown once per calling
    line) and still returns the loss of what it was given.

    Args:
        outputs: logits (any real numbers), a tensor.
        labels: class indices; float labels (as ``GPU_data(Y)`` makes them) are rounded
            to integers.

    Shape:
        - outputs: :math:`(N, C)`
        - labels: :math:`(N)` with values in :math:`[0, C)`
        - Output: scalar tensor (differentiable with respect to ``outputs``).
    """
    torch = _torch()
    outputs = _as_tensor(outputs)
    labels = _as_tensor(labels).to(outputs.device)
    if outputs.ndim != 2 or labels.ndim != 1 or labels.shape[0] != outputs.shape[0]:
        raise ShapeError(
            f"cross_entropy needs outputs (N, C) and labels (N,), got {tuple(outputs.shape)} "
            f"and {tuple(labels.shape)}; flatten the outputs or the labels first"
        )
    if _looks_like_probabilities(outputs):
        warnings.warn(
            "cross_entropy got rows in [0, 1] that sum to 1: it applies softmax itself, "
            "so pass the logits (cross_entropy(out, y), not cross_entropy(softmax(out), y))",
            DoubleSoftmaxWarning,
            stacklevel=2,
        )
    if labels.is_floating_point():
        labels = labels.round()
    labels = labels.long()
    log_probabilities = outputs - torch.logsumexp(outputs, dim=1, keepdim=True)
    picked = log_probabilities.gather(1, labels[:, None])
    return -picked.mean()


def acc(out, y) -> float:
    """Accuracy: the fraction of rows whose largest output is at the label.

    Args:
        out: outputs (logits or probabilities), tensor or array.
        y: labels, tensor or array (integer, or float as ``GPU_data`` makes them).

    Shape:
        - out: :math:`(N, C)`; y: :math:`(N)`. Returns a Python float in [0, 1].
    """
    predictions = _to_numpy(out).argmax(axis=1)
    labels = np.rint(_to_numpy(y)).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ShapeError(f"acc needs out (N, C) and y (N,), got {np.shape(_to_numpy(out))} and "
                         f"{labels.shape}")
    return float(np.mean(predictions == labels)) if labels.size else 0.0


# --------------------------------------------------------------------------- init


def randn_trunc(shape, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """The notes' truncated normal: mean 0, sigma 0.1, cut at +-2 sigma (pure NumPy).

    Values outside [-0.2, 0.2] are drawn again (rejection sampling), which is what
    ``scipy.stats.truncnorm`` samples. The standard deviation of the result is
    about 0.088 (a normal cut at 2 sigma has std 0.880 sigma).

    Args:
        shape: an int or tuple, e.g. ``(784, 500)``.
        rng: a ``np.random.Generator`` or a seed; None draws fresh entropy.

    Returns:
        a float64 NumPy array, ready for ``GPU(...)`` as in the notes.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    shape = (shape,) if np.isscalar(shape) else tuple(int(size) for size in shape)
    limit = TRUNC_CUT * TRUNC_SIGMA
    values = rng.normal(0.0, TRUNC_SIGMA, size=shape)
    outside = np.abs(values) > limit
    while outside.any():
        values[outside] = rng.normal(0.0, TRUNC_SIGMA, size=int(outside.sum()))
        outside = np.abs(values) > limit
    return values


# --------------------------------------------------------------------------- devices


def _on_device(data, requires_grad: bool):
    torch = _torch()
    # `device` is resolved once (module __getattr__) and may be reassigned by the user.
    target = globals()["device"] if "device" in globals() else __getattr__("device")
    if isinstance(data, torch.Tensor):
        # torch.tensor(tensor) warns; copy explicitly, as a fresh leaf.
        tensor = data.detach().to(device=target, dtype=torch.float32).clone()
    else:
        tensor = torch.tensor(np.asarray(data), dtype=torch.float32, device=target)
    return tensor.requires_grad_(requires_grad)


def GPU(data):  # noqa: N802 - the notes' name
    """``data`` as a float32 tensor on ``device`` that requires grad (a weight).

    ``device`` is CUDA when available, else Apple's MPS, else the CPU; the notes
    hard-code ``'cuda'`` and fail on a machine without an NVIDIA GPU.

    Args:
        data: a NumPy array, nested list or tensor (copied, never shared).
    """
    return _on_device(data, requires_grad=True)


def GPU_data(data):  # noqa: N802 - the notes' name
    """``data`` as a float32 tensor on ``device`` without grad (inputs, labels)."""
    return _on_device(data, requires_grad=False)


def gradient_step(w, h: float | None = None) -> None:
    """The notes' SGD step: ``w <- w - h * grad``, then zero the gradients.

    .. math:: w_j \\leftarrow w_j - h \\, \\frac{\\partial L}{\\partial w_j}

    Args:
        w: a list of tensors that require grad (tensors with no gradient yet are skipped).
        h: the step size (learning rate). The notes read it from a global ``c.h``;
            here it is an argument: ``gradient_step(w, c.h)``.
    """
    torch = _torch()
    if h is None:
        raise ConfigError("gradient_step needs the step size: gradient_step(w, h) "
                          "(the notes' c.h, e.g. 0.001)")
    with torch.no_grad():
        for weight in w:
            if weight.grad is None:
                continue
            weight -= h * weight.grad
            weight.grad.zero_()


# --------------------------------------------------------------------------- batches


class Batches:
    """Shuffled mini-batches: each epoch is a new permutation covering every sample once.

    ``batches.next()`` returns the next ``(x, y)``, starting a new epoch (and a new
    shuffle) when the current one is used up; ``for x, y in batches`` runs exactly one
    epoch. The permutation of epoch ``e`` is ``np.random.default_rng([seed, e])``, so the
    same seed gives the same batches.

    Args:
        X: inputs, a tensor or array; samples along the first axis.
        Y: labels, same first-axis length.
        batch_size: samples per batch; the last batch of an epoch may be smaller
            unless ``drop_last``.
        seed: integer seed of the shuffles.
        drop_last: skip the last, smaller batch of each epoch.

    Shape:
        - X: :math:`(N, *)`, Y: :math:`(N, *)`
        - each batch: :math:`(B, *)` and :math:`(B, *)` with :math:`B \\le` ``batch_size``
    """

    def __init__(self, X, Y, batch_size: int, seed: int = 0, drop_last: bool = False):
        if len(X) != len(Y):
            raise ShapeError(f"Batches needs as many labels as samples, got {len(X)} samples "
                             f"and {len(Y)} labels")
        positive_int(batch_size, "batch_size")
        if len(X) == 0 or (drop_last and batch_size > len(X)):
            raise ConfigError(f"cannot make batches of {batch_size} from {len(X)} samples")
        self.X, self.Y = X, Y
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._order = self._permutation(0)
        self._position = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.X), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.X))

    def _take(self, values, indices: np.ndarray):
        if hasattr(values, "device") and hasattr(values, "index_select"):
            torch = _torch()
            return values[torch.as_tensor(indices, device=values.device)]
        return values[indices]

    def next(self):
        """The next batch ``(x, y)``; reshuffles when an epoch is complete."""
        remaining = len(self._order) - self._position
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.next_epoch()
        indices = self._order[self._position:self._position + self.batch_size]
        self._position += len(indices)
        return self._take(self.X, indices), self._take(self.Y, indices)

    __call__ = next

    def __iter__(self) -> Iterator:
        """One full epoch from where the current epoch stands (a fresh one if it is done)."""
        if self._position >= len(self._order) or (
                self.drop_last and len(self._order) - self._position < self.batch_size):
            self.next_epoch()
        start_epoch = self.epoch
        while self.epoch == start_epoch:
            remaining = len(self._order) - self._position
            if remaining == 0 or (self.drop_last and remaining < self.batch_size):
                return
            yield self.next()

    def next_epoch(self) -> None:
        """Drop the rest of the current epoch; the next batch starts a new shuffle."""
        self.epoch += 1
        self._order = self._permutation(self.epoch)
        self._position = 0


# get_batch(mode): one Batches per mode, rebuilt when the caller's arrays change.
_NOTES_BATCHES: dict[str, tuple[tuple, Batches]] = {}
_NOTES_DATA_NAMES = {"train": ("X", "Y"), "test": ("X_test", "Y_test")}


def get_batch(mode: str = "train", batch_size: int | None = None, seed: int = 0):
    """The notes' ``get_batch(mode)``, fixed: shuffled batches that cover every sample.

    Like the notes, it reads the caller's global ``X, Y`` (``mode="train"``) or
    ``X_test, Y_test`` (``mode="test"``) and ``batch_size``, so the notes' calls
    ``x, y = get_batch('train')`` work unchanged. Unlike the notes (a random contiguous
    window: no shuffling, some samples never drawn), it walks a fresh permutation each
    epoch. When the caller reassigns ``X`` (e.g. ``X = X.view(-1, 784)``) the batches
    start again from a new epoch 0.

    For code of your own prefer the explicit :class:`Batches`.

    Args:
        mode: ``"train"`` or ``"test"``.
        batch_size: overrides the caller's global ``batch_size``.
        seed: seed of the shuffles.
    """
    if mode not in _NOTES_DATA_NAMES:
        raise ConfigError(f"get_batch mode must be 'train' or 'test', got {mode!r}")
    caller_globals = inspect.currentframe().f_back.f_globals
    x_name, y_name = _NOTES_DATA_NAMES[mode]
    if batch_size is None:
        batch_size = caller_globals.get("batch_size")
    missing = [name for name in (x_name, y_name) if name not in caller_globals]
    if missing or batch_size is None:
        names = ", ".join(missing + ([] if batch_size is not None else ["batch_size"]))
        raise ConfigError(f"get_batch({mode!r}) reads {names} from your globals, and they are not "
                          f"defined; define them or use Batches(X, Y, batch_size)")
    X, Y = caller_globals[x_name], caller_globals[y_name]
    key = (id(X), id(Y), tuple(np.shape(X)), int(batch_size), int(seed))
    cached = _NOTES_BATCHES.get(mode)
    if cached is None or cached[0] != key:
        cached = (key, Batches(X, Y, int(batch_size), seed=seed))
        _NOTES_BATCHES[mode] = cached
    return cached[1].next()


# --------------------------------------------------------------------------- plots


def _image_2d(x) -> np.ndarray:
    image = _to_numpy(x).astype(np.float64)
    image = np.squeeze(image) if image.ndim > 2 else image
    if image.ndim != 2:
        raise ShapeError(f"plot shows one 2-D image, got shape {np.shape(_to_numpy(x))}; "
                         f"use montage_plot for a stack of images")
    return image


def plot(x, path: str | os.PathLike | None = None, size_inches: float = 10.0):
    """Show one grayscale image (the notes' ``plot``); returns the matplotlib Figure.

    Uses matplotlib's Agg canvas, so no display is needed. In a Jupyter notebook it
    shows the image in the cell's output right away, as the notes' ``plt.show()`` does,
    and returns None (so the image is not shown twice). Tensors are moved to the CPU and
    detached first.

    Args:
        x: the image, a tensor or array.
        path: when given, the figure is also saved there (PNG, written atomically).
        size_inches: the figure's width and height.

    Shape:
        - x: :math:`(H, W)`, or anything that squeezes to it such as :math:`(1, H, W)`.
    """
    from cnnlab.viz.notebook import show_now

    image = _image_2d(x)
    figure = _figure_class()(figsize=(size_inches, size_inches))
    axes = figure.add_subplot()
    axes.imshow(image, cmap="gray")
    axes.axis("off")
    if path is not None:
        save_figure(figure, path)
    # in a notebook the notes' plot() shows the image at once (plt.show()) and returns None
    return None if show_now(figure) else figure


def save_figure(figure, path: str | os.PathLike) -> None:
    """Write a figure as PNG (or the format of the suffix), atomically."""
    from cnnlab.utils.fileio import atomic_write

    suffix = os.path.splitext(str(path))[1].lstrip(".") or "png"
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format=suffix, bbox_inches="tight")


def _image_stack(images, what: str) -> np.ndarray:
    """(N, H, W) from (N, H, W) or (N, 1, H, W) images (tensors too), as float64."""
    stack = _to_numpy(images)
    if stack.ndim == 4 and stack.shape[1] == 1:
        stack = stack[:, 0]
    if stack.ndim != 3 or len(stack) == 0:
        raise ShapeError(f"{what} needs images (N, H, W) or (N, 1, H, W), got {stack.shape}")
    return stack.astype(np.float64)


def montage(images, fill: float = 0.0) -> np.ndarray:
    """Tile a stack of images into one square grid (like ``skimage.util.montage``).

    Args:
        images: a tensor or array of images.
        fill: the value of empty grid cells.

    Shape:
        - images: :math:`(N, H, W)` or :math:`(N, 1, H, W)`
        - Output: :math:`(R \\cdot H, R \\cdot W)` with :math:`R = \\lceil \\sqrt{N} \\rceil`
    """
    return _square_tiles(_image_stack(images, "montage"), pad=0, value=fill)


def montage_plot(x, path: str | os.PathLike | None = None):
    """The notes' ``montage_plot``: pad each image with a 1-pixel black border, tile, plot.

    Args:
        x: images, a tensor or array.
        path: when given, the figure is also saved there.

    Shape:
        - x: :math:`(N, H, W)` or :math:`(N, 1, H, W)`
    """
    return plot(_square_tiles(_image_stack(x, "montage_plot"), pad=1, value=0.0), path=path)


def _square_tiles(stack: np.ndarray, pad: int, value: float) -> np.ndarray:
    from cnnlab.viz.plots.tiling import tile

    side = math.ceil(math.sqrt(len(stack)))
    return tile(stack, columns=side, rows=side, pad=pad, value=value)


# --------------------------------------------------------------------------- data


def load_mnist(data_dir: str | os.PathLike | None = None, name: str = "mnist",
               download: bool = True, train_limit: int | None = None,
               test_limit: int | None = None):
    """The notes' data: ``X, Y, X_test, Y_test`` with images (N, 1, 28, 28) in [0, 1].

    Reads the dataset through :func:`cnnlab.data.load_dataset` (IDX files in
    ``data_dir``, downloaded and checksummed there if missing and ``download``).

    Args:
        data_dir: folder of the datasets (cnnlab's default when None).
        name: ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"`` or a folder of IDX files.
        download: fetch missing files.
        train_limit, test_limit: keep only the first this-many samples (quick runs).

    Returns:
        ``(X, Y, X_test, Y_test)``: float32 NumPy images :math:`(N, 1, 28, 28)` in
        [0, 1] (``x / 255`` as in the notes) and int64 labels :math:`(N)`.
    """
    from cnnlab.data import load_dataset, to_float

    dataset = load_dataset(name, data_dir=data_dir, download=download, progress=False)
    train_images = dataset.train_images[:train_limit]
    test_images = dataset.test_images[:test_limit]
    return (to_float(train_images), np.asarray(dataset.train_labels[:train_limit], np.int64),
            to_float(test_images), np.asarray(dataset.test_labels[:test_limit], np.int64))


def load_lecture_data(data_dir: str | os.PathLike | None = None,
                      names: tuple[str, ...] = ("mnist", "fashion-mnist"),
                      download: bool = True, train_limit: int | None = None,
                      test_limit: int | None = None):
    """The first dataset of ``names`` found in ``data_dir``; else download the first.

    The examples use this so they run on MNIST when it is there and on Fashion-MNIST
    (same format and sizes) otherwise.

    Returns:
        ``(name, (X, Y, X_test, Y_test))`` as :func:`load_mnist` returns them.
    """
    failures = []
    for name in names:
        try:
            return name, load_mnist(data_dir, name=name, download=False,
                                    train_limit=train_limit, test_limit=test_limit)
        except DataError as error:
            failures.append(f"{name}: {error}")
    if download:
        return names[0], load_mnist(data_dir, name=names[0], download=True,
                                    train_limit=train_limit, test_limit=test_limit)
    raise DataError("no dataset found (" + "; ".join(failures) + "); pass --data-dir or allow "
                    "the download")
