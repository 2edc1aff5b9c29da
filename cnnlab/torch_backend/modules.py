"""cnnlab model specs as ``torch.nn.Sequential`` modules, and a NumPy view of one.

``cnnlab.models.plan_model`` works out every layer once; this module only turns each
``LayerPlan`` into the ``torch.nn`` class of the same name with the same arguments, which are
PyTorch's by design (cnnlab/nn/layers.py). So the state_dict keys ("0.weight", "3.bias",
"1.running_mean", ...) and shapes are the NumPy model's, and weights move between the two
with ``load_state_dict``.
"""

from __future__ import annotations

import numpy as np

# cnnlab layer class -> the torch.nn class of the same name and arguments
_TORCH_LAYERS = ("Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d",
                 "Dropout", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Flatten")


def build_torch_model(spec: str, input_shape, num_classes: int, state_dict: dict | None = None):
    """``spec`` as a ``torch.nn.Sequential`` (float32, on the CPU).

    Args:
        spec: a named model or a spec string (docs/models.md).
        input_shape: (C, H, W) of one image, or (F,).
        num_classes: width of the last Linear layer.
        state_dict: NumPy arrays by cnnlab state_dict key (``model.state_dict()`` of the NumPy
            model, or a checkpoint's ``model_state``) loaded into the module; None keeps
            torch's own random initialisation.

    The module gets ``spec``, ``input_shape`` and ``num_classes`` attributes, as cnnlab's does.
    """
    import torch

    from cnnlab.models import plan_model

    layers = []
    for plan in plan_model(spec, input_shape, num_classes):
        if plan.kind not in _TORCH_LAYERS:  # a layer kind added to cnnlab but not here
            raise NotImplementedError(f"the torch backend has no {plan.kind} layer")
        layers.append(getattr(torch.nn, plan.kind)(*plan.args, **plan.kwargs))
    module = torch.nn.Sequential(*layers)
    if state_dict is not None:
        load_numpy_state(module, state_dict)
    module.spec = spec.strip()
    module.input_shape = tuple(int(size) for size in input_shape)
    module.num_classes = int(num_classes)
    return module


def load_numpy_state(module, state_dict: dict) -> None:
    """Copy NumPy arrays (by state_dict key) into ``module``'s parameters and buffers."""
    import torch

    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state_dict.items()}
    module.load_state_dict(tensors, strict=True)


def numpy_state(module) -> dict[str, np.ndarray]:
    """``module.state_dict()`` as NumPy arrays on the CPU (copies), cnnlab's keys."""
    return {key: value.detach().cpu().numpy().copy() for key, value in module.state_dict().items()}


class _Gradient:
    """What ``cnnlab.training.checkpoint.save_checkpoint`` reads of a parameter: its ``.grad``."""

    def __init__(self, grad):
        self.grad = grad


class NumpyView:
    """A torch module seen as a cnnlab model: NumPy in, NumPy out.

    ``cnnlab.training.evaluation.evaluate`` and ``cnnlab.training.checkpoint.save_checkpoint`` take it as they
    take a cnnlab ``Sequential``, so the evaluation and the checkpoint format exist once.
    """

    def __init__(self, module, device):
        self.module = module
        self.device = device
        self.spec = module.spec
        self.input_shape = module.input_shape
        self.num_classes = module.num_classes

    @property
    def training(self) -> bool:
        return self.module.training

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def modules(self):
        return iter(())  # no cnnlab layers draw random numbers here

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def state_dict(self) -> dict[str, np.ndarray]:
        return numpy_state(self.module)

    def named_parameters(self) -> list[tuple[str, _Gradient]]:
        return [(name, _Gradient(parameter.grad.detach().cpu().numpy()))
                for name, parameter in self.module.named_parameters() if parameter.grad is not None]
