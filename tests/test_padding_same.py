"""padding="same": one rule (cnnlab.ops.conv.conv2d_padding), PyTorch's, for the op, nn.Conv2d
and the model spec's ``psame``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab import nn
from cnnlab.errors import ConfigError, ShapeError
from cnnlab.models import build_model
from cnnlab.ops.conv import conv2d_forward, conv2d_output_size, conv2d_padding

# (kernel_size, dilation): odd, even, mixed, and dilations that make an odd total even
CASES = [(3, 1), (5, 1), (4, 1), (2, 1), ((2, 5), 1), ((3, 4), 1), (3, 2), (4, 2), ((2, 3), (3, 1)),
         (4, 3)]


def _torch_pads(kernel_size, dilation) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) as torch.nn.Conv2d(padding='same') pads its input."""
    conv = torch.nn.Conv2d(1, 1, kernel_size, padding="same", dilation=dilation)
    left, right, top, bottom = conv._reversed_padding_repeated_twice  # W first, as F.pad takes it
    return (top, bottom, left, right)


@pytest.mark.parametrize("kernel_size, dilation", CASES)
def test_the_rule_is_pytorchs(kernel_size, dilation):
    assert conv2d_padding("same", kernel_size, 1, dilation) == _torch_pads(kernel_size, dilation)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel_size, dilation", CASES)
def test_op_layer_and_spec_compute_what_torch_computes(kernel_size, dilation, rng):
    k_h, k_w = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    x = rng.standard_normal((2, 2, 9, 8))
    weight = rng.standard_normal((3, 2, k_h, k_w))
    expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), padding="same",
                                          dilation=dilation).numpy()
    y, _ = conv2d_forward(x, weight, padding="same", dilation=dilation)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    assert conv2d_output_size((9, 8), kernel_size, padding="same", dilation=dilation) == (9, 8)

    layer = nn.Conv2d(2, 3, kernel_size, padding="same", dilation=dilation, bias=False,
                      dtype=np.float64)
    layer.weight.data[...] = weight
    np.testing.assert_allclose(layer(x), expected, rtol=1e-10, atol=1e-12)
    assert layer.output_shape(x.shape) == expected.shape


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel, dilation", [(3, 1), (4, 1), (2, 3), (4, 2)])
def test_spec_psame_is_the_same_conv(kernel, dilation, rng):
    model = build_model(f"c3k{kernel}d{dilation}psame", rng, input_shape=(2, 9, 8), num_classes=4)
    conv = model[0]
    x = rng.standard_normal((2, 2, 9, 8)).astype(np.float32)
    expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(conv.weight.data),
                                          torch.tensor(conv.bias.data), padding="same",
                                          dilation=dilation).numpy()
    np.testing.assert_allclose(conv(x), expected, rtol=1e-4, atol=1e-5)
    assert model(x).shape == (2, 4)


def test_same_with_a_stride_is_refused_everywhere_as_in_torch(rng):
    with pytest.raises(ValueError, match="not supported for strided"):
        torch.nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ShapeError, match="stride=1"):
        conv2d_forward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), stride=2, padding="same")
    with pytest.raises(ConfigError, match="Conv2d: padding=.same. needs stride 1"):
        nn.Conv2d(1, 1, 4, stride=(1, 2), padding="same")
    with pytest.raises(ConfigError, match="layer 1 'c8k4s2psame'.*stride=1"):
        build_model("c8k4s2psame", rng)
