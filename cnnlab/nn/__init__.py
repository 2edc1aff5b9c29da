"""Layers with PyTorch's class names, arguments, shapes and state_dict keys (docs/architecture.md).

    from cnnlab.nn import Conv2d, Sequential, init
"""

from cnnlab.nn import init
from cnnlab.nn.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Tanh,
)
from cnnlab.nn.module import Module, Parameter, Sequential

__all__ = [
    "init", "Module", "Parameter", "Sequential",
    "Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
    "Flatten", "Dropout", "BatchNorm1d", "BatchNorm2d",
]
