"""Fuzzing load_checkpoint: random bytes and damaged checkpoints give CheckpointError only."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cnnlab.errors import CheckpointError
from cnnlab.models import build_model
from cnnlab.optim import Adam

FOLDER = Path(tempfile.mkdtemp(prefix="cnnlab-fuzz-"))


def small_checkpoint() -> bytes:
    model = build_model("c2k3-bn-fc3", np.random.default_rng(0), input_shape=(1, 4, 4),
                        num_classes=2)
    optimizer = Adam(model.parameters())
    optimizer.step()
    path = save_checkpoint(FOLDER / "valid.npz", model, optimizer, meta={"epoch": 1},
                           extra={"x": np.arange(3)})
    return path.read_bytes()


VALID = small_checkpoint()


@st.composite
def damaged(draw):
    data = bytearray(VALID)
    kind = draw(st.sampled_from(["truncate", "flip", "both", "splice"]))
    if kind in ("truncate", "both"):
        data = data[:draw(st.integers(0, len(data) - 1))]
    if kind in ("flip", "both") and data:
        for _ in range(draw(st.integers(1, 8))):
            index = draw(st.integers(0, len(data) - 1))
            data[index] = draw(st.integers(0, 255))
    if kind == "splice":
        start = draw(st.integers(0, len(data)))
        data[start:start + draw(st.integers(0, 64))] = draw(st.binary(max_size=64))
    return bytes(data)


inputs = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=256).map(lambda tail: b"PK\x03\x04" + tail),
    damaged(),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=inputs)
def test_load_checkpoint_raises_only_checkpoint_error(data):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was called")

    path = FOLDER / "fuzz.npz"
    path.write_bytes(data)
    original = pickle.load, pickle.loads
    pickle.load = pickle.loads = refuse
    try:
        checkpoint = load_checkpoint(path)
        model_from_checkpoint(checkpoint)   # a damaged state must not fit silently either
    except CheckpointError as error:
        assert "\n" not in str(error)
    finally:
        pickle.load, pickle.loads = original


def test_the_valid_checkpoint_loads():
    path = FOLDER / "valid-copy.npz"
    path.write_bytes(VALID)
    checkpoint = load_checkpoint(path)
    assert checkpoint.meta["epoch"] == 1 and checkpoint.optimizer_state["state"]
    assert np.array_equal(checkpoint.extra["x"], np.arange(3))
