"""Lecture 004, section 3: how big is a convolution's output?

PyTorch's formula (the same one cnnlab uses), per spatial dimension:

    H_out = floor((H_in + 2p - d(k - 1) - 1) / s + 1)

Run:  python examples/01_output_size.py
"""

from __future__ import annotations

import argparse
import math

from cnnlab.errors import CnnlabError
from cnnlab.ops.conv import conv2d_output_size


def lecture_conv2d_out(h_in, w_in, k=3, s=1, p=0, d=1):
    """The notes' own helper, copied as written, to compare with cnnlab's."""
    h_out = math.floor((h_in + 2 * p - d * (k - 1) - 1) / s + 1)
    w_out = math.floor((w_in + 2 * p - d * (k - 1) - 1) / s + 1)
    return h_out, w_out


def show(label: str, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> None:
    ours = conv2d_output_size((28, 28), kernel, stride=stride, padding=padding, dilation=dilation)
    notes = lecture_conv2d_out(28, 28, k=kernel, s=stride, p=padding, d=dilation)
    assert tuple(ours) == notes, (ours, notes)
    print(f"  {label:<22} -> {ours[0]} x {ours[1]}")


def show_same_padding_rule() -> None:
    """padding='same' keeps H and W, which only works when the kernel moves 1 pixel at a time."""
    same = conv2d_output_size((28, 28), 3, stride=1, padding="same")
    print(f"  padding='same', s=1    -> {same[0]} x {same[1]}")
    try:
        conv2d_output_size((28, 28), 3, stride=2, padding="same")
    except CnnlabError as error:
        print(f"  padding='same', s=2    -> error: {error}")
    else:
        raise SystemExit("expected padding='same' with stride 2 to be refused")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print("MNIST 28x28, k=3 (the lecture's three examples)")
    show("p=0, s=1", 3)                          # 28 - 3 + 1 = 26: 'valid' shrinks by k-1
    show("p=1, s=1", 3, padding=1)               # padding (k-1)/2 keeps the size
    show("p=1, s=2", 3, stride=2, padding=1)     # stride 2 halves it
    print("dilation spreads the kernel: a 3x3 kernel with d=2 covers 5x5")
    show("p=0, s=1, d=2", 3, dilation=2)         # 28 - 2*(3-1) = 24
    show("p=2, s=1, d=2", 3, padding=2, dilation=2)
    print("the lecture CNN: conv k3 p1 keeps 28, pool 2 halves: 28 -> 14 -> 7; 64*7*7 =",
          64 * 7 * 7)
    print("padding='same' needs stride 1")
    show_same_padding_rule()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
