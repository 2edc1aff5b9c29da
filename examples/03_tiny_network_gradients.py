"""Lecture 002: the tiny network's forward and backward pass, by cnnlab and by PyTorch autograd.

    Conv(1->2, k3, p1) -> ReLU -> MaxPool 2 -> Flatten -> Linear(8->2)
    input (1, 1, 4, 4), MSE loss against the target [[1, 0]]

cnnlab runs the backward pass the lecture derives: each layer's backward takes
dL/d(output) and returns dL/d(input), adding its weight gradients on the way
(bias: sum of dY; weight: correlate X with dY; input: full convolution of dY with
the 180-degree-rotated kernel; ReLU: mask; max pool: route to the max). With
PyTorch installed, the same network with the same weights is differentiated by
autograd and the gradients are printed side by side.

Run:  python examples/03_tiny_network_gradients.py [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np

from cnnlab.nn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from cnnlab.ops.loss import mse_loss

TOLERANCE = 1e-10  # float64 on both sides: only rounding differs


def build_layers(rng: np.random.Generator) -> list:
    """The lecture's SimpleCNN as a plain list, so the backward loop below is explicit."""
    return [
        Conv2d(1, 2, kernel_size=3, stride=1, padding=1, rng=rng, dtype=np.float64),
        ReLU(),
        MaxPool2d(kernel_size=2, stride=2),
        Flatten(),
        Linear(2 * 2 * 2, 2, rng=rng, dtype=np.float64),  # 2 channels x 2 x 2 after pooling
    ]


def cnnlab_gradients(layers: list, image: np.ndarray, target: np.ndarray) -> dict:
    activation = image
    for layer in layers:                      # forward pass
        activation = layer(activation)
    loss, upstream = mse_loss(activation, target)
    for layer in reversed(layers):            # backward pass: the chain rule, last layer first
        upstream = layer.backward(upstream)
    conv, linear = layers[0], layers[-1]
    return {"output": activation, "loss": loss, "conv.weight": conv.weight.grad,
            "conv.bias": conv.bias.grad, "fc.weight": linear.weight.grad,
            "input": upstream}


def torch_gradients(layers: list, image: np.ndarray, target: np.ndarray) -> dict:
    """The lecture's PyTorch code, with cnnlab's weights copied in."""
    import torch
    from torch import nn

    class SimpleCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(in_channels=1, out_channels=2, kernel_size=3, stride=1, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
            self.fc = nn.Linear(2 * 2 * 2, 2)

        def forward(self, x):
            x = self.pool(self.relu(self.conv(x)))
            return self.fc(x.view(x.size(0), -1))

    model = SimpleCNN().double()
    with torch.no_grad():
        model.conv.weight.copy_(torch.from_numpy(layers[0].weight.data))
        model.conv.bias.copy_(torch.from_numpy(layers[0].bias.data))
        model.fc.weight.copy_(torch.from_numpy(layers[-1].weight.data))
        model.fc.bias.copy_(torch.from_numpy(layers[-1].bias.data))
    input_tensor = torch.from_numpy(image.copy()).requires_grad_(True)
    output = model(input_tensor)
    loss = nn.MSELoss()(output, torch.from_numpy(target))
    loss.backward()
    return {"output": output.detach().numpy(), "loss": loss.item(),
            "conv.weight": model.conv.weight.grad.numpy(),
            "conv.bias": model.conv.bias.grad.numpy(),
            "fc.weight": model.fc.weight.grad.numpy(), "input": input_tensor.grad.numpy()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the input and weights")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    layers = build_layers(rng)
    image = rng.standard_normal((1, 1, 4, 4))
    target = np.array([[1.0, 0.0]])
    ours = cnnlab_gradients(layers, image, target)
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    print("forward output:", ours["output"], " MSE loss:", round(ours["loss"], 6))
    print("conv weight gradient, first kernel (cnnlab):\n", ours["conv.weight"][0, 0])
    print("input gradient (cnnlab):\n", ours["input"][0, 0])

    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: skipping the comparison (pip install torch==2.13.0)")
        return 0
    reference = torch_gradients(layers, image, target)
    print("conv weight gradient, first kernel (PyTorch autograd):\n",
          reference["conv.weight"][0, 0])
    print("input gradient (PyTorch autograd):\n", reference["input"][0, 0])
    worst = 0.0
    for name in ("output", "conv.weight", "conv.bias", "fc.weight", "input"):
        difference = float(np.max(np.abs(ours[name] - reference[name])))
        worst = max(worst, difference)
        print(f"  max |cnnlab - torch| {name:<12} {difference:.2e}")
    matched = worst < TOLERANCE and abs(ours["loss"] - reference["loss"]) < TOLERANCE
    print(f"gradients match torch: {matched} (max difference {worst:.2e})")
    return 0 if matched else 1


if __name__ == "__main__":
    raise SystemExit(main())
