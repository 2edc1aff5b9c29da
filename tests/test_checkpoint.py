"""Checkpoints: exact round trips, run folders, and a clear CheckpointError for every bad file."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest

from cnnlab.checkpoint import (load_checkpoint, load_model, save_checkpoint,
                               unflatten_optimizer_state, flatten_optimizer_state)
from cnnlab.cli import main
from cnnlab.errors import CheckpointError
from cnnlab.models import build_model
from cnnlab.ops.loss import cross_entropy
from cnnlab.optim import SGD, Adam


def trained_step(model, optimizer, rng, steps=2):
    model.train()
    for _ in range(steps):
        x = rng.random((4,) + model.input_shape, dtype=np.float32)
        optimizer.zero_grad()
        _, dlogits = cross_entropy(model(x), rng.integers(0, model.num_classes, 4))
        model.backward(dlogits)
        optimizer.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda params: Adam(params, lr=1e-3),
    lambda params: SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
])
def test_round_trip_is_exact(tmp_path, rng, make_optimizer):
    model = build_model("c4k3p1-bn-p2-fc8-drop0.2", rng, input_shape=(1, 8, 8), num_classes=5)
    optimizer = make_optimizer(model.parameters())
    trained_step(model, optimizer, rng)
    meta = {"classes": list("abcde"), "epoch": 3, "step": 17, "dataset": "mnist",
            "normalization": {"kind": "unit", "mean": None, "std": None},
            "config": {"lr": 1e-3, "nested": [1, 2.5, "x"]}, "rng_state": {"seed": 2**63 - 1}}
    extra = {"history": np.arange(6.0).reshape(2, 3), "seed": np.array(5)}
    path = save_checkpoint(tmp_path / "a.npz", model, optimizer, meta=meta, extra=extra)
    checkpoint = load_checkpoint(path)

    state = model.state_dict()
    assert checkpoint.model_state.keys() == state.keys()
    for key, value in state.items():
        assert checkpoint.model_state[key].dtype == value.dtype
        assert np.array_equal(checkpoint.model_state[key], value)
    for name, parameter in model.named_parameters():
        assert np.array_equal(checkpoint.grads[name], parameter.grad)
        assert parameter.grad.any()
    for key, value in meta.items():
        assert checkpoint.meta[key] == value
    assert checkpoint.meta["format"] == "cnnlab-checkpoint"
    assert checkpoint.meta["model"] == "c4k3p1-bn-p2-fc8-drop0.2"
    assert checkpoint.meta["input_shape"] == [1, 8, 8] and checkpoint.meta["num_classes"] == 5
    assert all(np.array_equal(checkpoint.extra[key], value) for key, value in extra.items())

    expected = optimizer.state_dict()
    loaded = checkpoint.optimizer_state
    assert loaded["param_groups"] == expected["param_groups"]
    assert loaded["state"].keys() == expected["state"].keys()
    for index, values in expected["state"].items():
        assert loaded["state"][index].keys() == values.keys()
        for name, value in values.items():
            assert type(loaded["state"][index][name]) is type(value)
            assert np.array_equal(loaded["state"][index][name], value)

    # resuming from the checkpoint continues exactly as the original would
    resumed, _ = load_model(path)
    resumed_optimizer = make_optimizer(resumed.parameters())
    resumed_optimizer.load_state_dict(loaded)
    for network in (model, resumed):  # the same dropout masks in both
        dropout = next(layer for layer in network if type(layer).__name__ == "Dropout")
        dropout.rng = np.random.default_rng(3)
    trained_step(model, optimizer, np.random.default_rng(1), steps=1)
    trained_step(resumed, resumed_optimizer, np.random.default_rng(1), steps=1)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value)


def test_optimizer_flattening_keeps_python_types():
    state = {"state": {0: {"step": 3, "momentum_buffer": np.ones(2)}, 1: {"flag": True}},
             "param_groups": [{"lr": 0.5, "betas": (0.9, 0.99), "params": [0, 1],
                               "maximize": False, "foreach": None, "name": "g"}]}
    arrays = flatten_optimizer_state(state)
    assert all(not array.dtype.hasobject for array in arrays.values())
    assert arrays["optim/state/0/step"].shape == ()
    back = unflatten_optimizer_state({key[len("optim/"):]: value for key, value in arrays.items()})
    assert back["param_groups"] == state["param_groups"]
    assert back["state"][0]["step"] == 3 and type(back["state"][0]["step"]) is int
    assert back["state"][1]["flag"] is True


def test_run_folder_is_accepted_for_save_and_load(tmp_path, rng):
    model = build_model("cnn", rng)
    save_checkpoint(tmp_path, model, meta={"epoch": 1})
    assert (tmp_path / "checkpoint.npz").is_file()
    loaded, meta = load_model(tmp_path)
    assert meta["epoch"] == 1
    x = rng.random((2, 1, 28, 28), dtype=np.float32)
    model.eval()
    np.testing.assert_array_equal(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_state_from_another_architecture_lists_keys_and_shapes(tmp_path, rng):
    model = build_model("cnn", rng)
    path = save_checkpoint(tmp_path / "a.npz", model, meta={"model": "c32k3p1-p2-c64k5p2-p2"})
    with pytest.raises(CheckpointError, match=r"3.weight \(64,32,3,3\) in file vs "
                                              r"\(64,32,5,5\) in model"):
        load_model(path)
    path = save_checkpoint(tmp_path / "b.npz", model, meta={"model": "mlp"})
    # every mismatched key is listed (issue 17), not the first few and a count
    with pytest.raises(CheckpointError, match=r"\(8 mismatched\): missing 1.weight.*unexpected "
                                              r"7.bias; .*3.bias \(64\) in file vs \(10\) in model") as error:
        load_model(path)
    assert "\n" not in str(error.value)


def write_npz(path, arrays):
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)
    return path


def npy_bytes(array):
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def meta_bytes(meta):
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


GOOD_META = {"format": "cnnlab-checkpoint", "version": 1, "model": "cnn"}


@pytest.mark.parametrize("name, make, message", [
    ("missing", lambda p: None, "no such checkpoint"),
    ("empty", lambda p: p.write_bytes(b""), "is empty"),
    ("text", lambda p: p.write_text("hello, I am not a checkpoint\n"), "not a .npz"),
    ("npy", lambda p: p.write_bytes(npy_bytes(np.arange(3))), "single .npy array"),
    ("bad-zip", lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 40), "truncated or corrupt"),
    ("no-meta", lambda p: write_npz(p, {"model/0.weight": np.ones(3)}), "no 'meta'"),
    ("wrong-tag", lambda p: write_npz(p, {"meta": meta_bytes({"format": "other", "version": 1})}),
     "format tag is 'other'"),
    ("newer", lambda p: write_npz(p, {"meta": meta_bytes(dict(GOOD_META, version=99))}),
     "newer than this cnnlab"),
    ("bad-json", lambda p: write_npz(p, {"meta": np.frombuffer(b"{not json", np.uint8)}),
     "not valid UTF-8 JSON"),
    ("meta-not-bytes", lambda p: write_npz(p, {"meta": np.ones(3)}), "not a uint8 JSON"),
    ("meta-list", lambda p: write_npz(p, {"meta": meta_bytes([1, 2])}), "not a JSON object"),
    ("bad-optim", lambda p: write_npz(p, {"meta": meta_bytes(GOOD_META),
                                          "optim/state/x/step": np.array(1)}), "bad index"),
])
def test_corrupt_files_give_checkpoint_error(tmp_path, name, make, message, no_unpickling):
    path = tmp_path / f"{name}.npz"
    make(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_folder_without_checkpoint_and_missing_spec(tmp_path, rng):
    with pytest.raises(CheckpointError, match="folder without checkpoint.npz"):
        load_checkpoint(tmp_path)
    write_npz(tmp_path / "a.npz", {"meta": meta_bytes({"format": "cnnlab-checkpoint",
                                                       "version": 1})})
    with pytest.raises(CheckpointError, match="no model spec"):
        load_model(tmp_path / "a.npz")


def test_truncated_checkpoint(tmp_path, rng):
    path = save_checkpoint(tmp_path / "a.npz", build_model("cnn", rng))
    data = path.read_bytes()
    for size in (10, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_pickled_content_is_refused_and_never_unpickled(tmp_path, no_unpickling):
    objects = np.array([{"evil": 1}, None], dtype=object)
    cases = {}
    np.save(tmp_path / "object.npy", objects, allow_pickle=True)
    cases["object.npy"] = "single .npy array"
    (tmp_path / "real.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    cases["real.pkl"] = "Python pickle: refused"
    with open(tmp_path / "object.npz", "wb") as stream:
        np.savez(stream, meta=meta_bytes(GOOD_META), **{"model/0.weight": objects})
    cases["object.npz"] = "object array.*refused"
    # a zip member that is a raw pickle, not an .npy array
    with zipfile.ZipFile(tmp_path / "member.npz", "w") as archive:
        archive.writestr("meta.npy", pickle.dumps([1, 2]))
    cases["member.npz"] = "corrupt|pickle"
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)


def test_saving_object_arrays_is_refused(tmp_path, rng):
    model = build_model("fc4", rng, input_shape=(1, 2, 2), num_classes=2)
    with pytest.raises(CheckpointError, match="object arrays"):
        save_checkpoint(tmp_path / "a.npz", model, extra={"bad": np.array([None, 1], dtype=object)})
    assert not (tmp_path / "a.npz").exists()


def test_cli_summary_of_a_checkpoint(tmp_path, rng, capsys):
    save_checkpoint(tmp_path, build_model("cnn", rng))
    assert main(["summary", str(tmp_path)]) == 0
    assert "50,186" in capsys.readouterr().out
    (tmp_path / "checkpoint.npz").write_bytes(b"junk")
    assert main(["summary", str(tmp_path)]) == 2
    assert "not a .npz" in capsys.readouterr().err
