"""cnnlab export (ONNX, safetensors) and weights coming back from PyTorch.

Each named model, and a spec with every layer kind the spec language has, is exported from a
checkpoint; onnxruntime and PyTorch (from the safetensors file) must give cnnlab's logits on
1,000 real Fashion-MNIST test images. Weights trained in PyTorch come back through safetensors
and ``cnnlab evaluate`` must report PyTorch's accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cnnlab.checkpoint import input_preparation, load_weights, model_from_checkpoint, save_checkpoint
from cnnlab.cli import main
from cnnlab.data import dataset_mean_std, read_idx, to_float
from cnnlab.errors import CheckpointError
from cnnlab.models import build_model
from export_helpers import (fashion_source, randomize_batch_norm, real_dataset, require,
                            synthetic_dataset, torch_twin)

from conftest import FASHION_CLASSES

# every layer kind and alias of the spec language (docs/models.md): conv with stride, dilation
# and 'same' padding (an even kernel's too), batch norm after a conv and after a linear layer, every activation, both
# pools with strides and padding, flatten, dropout
EVERY_KIND = ("c8k3s2p1-bn-lrelu0.1-conv8k3d2psame-tanh-c8k2psame-ap3s2p1-c8k3p1-sigmoid-"
              "maxpool3s1p1-p2-flatten-drop0.2-fc32-bn-relu-linear16-tanh-dropout-fc12-lrelu")
MODELS = ["mlp", "cnn", "cnn-bn", EVERY_KIND]
REAL_IMAGES = 1000
RELATIVE = 1e-5


def _close(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference relative to the logits' scale; the parity checks need <= 1e-5."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def real_images():
    """The first 1,000 real Fashion-MNIST test images (uint8) and labels."""
    source = fashion_source()
    return (read_idx(source / "t10k-images-idx3-ubyte.gz")[:REAL_IMAGES],
            read_idx(source / "t10k-labels-idx1-ubyte.gz")[:REAL_IMAGES].astype(np.int64))


def _checkpoint(tmp_path, spec: str, seed: int = 0):
    """A checkpoint of ``spec`` with trained-looking meta: classes, standard normalization."""
    rng = np.random.default_rng(seed)
    model = build_model(spec, rng)
    randomize_batch_norm(model, rng)
    source = fashion_source()
    mean, std = dataset_mean_std(read_idx(source / "train-images-idx3-ubyte.gz")[:5000])
    meta = {"classes": FASHION_CLASSES, "dataset": "fashion-mnist", "epoch": 3,
            "normalization": {"kind": "standard", "mean": mean, "std": std}}
    path = save_checkpoint(tmp_path / "checkpoint.npz", model, meta=meta)
    model.eval()
    return path, model, meta


def _prepared(images, meta):
    normalization = meta["normalization"]
    return to_float(images, normalization["kind"], normalization.get("mean"),
                    normalization.get("std"))


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("spec", MODELS, ids=["mlp", "cnn", "cnn-bn", "every-kind"])
def test_onnxruntime_gives_cnnlabs_logits_on_real_images(tmp_path, spec, real_images, capsys):
    onnx = require("onnx")
    onnxruntime = require("onnxruntime")
    path, model, meta = _checkpoint(tmp_path, spec)
    assert main(["export", str(path), "--format", "onnx"]) == 0
    exported = tmp_path / "checkpoint.onnx"
    assert f"wrote {exported}" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(exported), full_check=True)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = _prepared(real_images[0], meta)
    expected = model(x)
    logits = session.run(["logits"], {"input": x})[0]
    assert logits.shape == (REAL_IMAGES, 10)
    assert _close(logits, expected) <= RELATIVE
    np.testing.assert_allclose(logits, expected, rtol=RELATIVE,
                               atol=RELATIVE * np.abs(expected).max())
    # the batch dimension is dynamic: one image, and an odd batch, run too
    for batch in (1, 37):
        part = session.run(["logits"], {"input": x[:batch]})[0]
        assert _close(part, expected[:batch]) <= RELATIVE


def test_onnx_graph_is_the_network_layer_by_layer(tmp_path):
    onnx = require("onnx")
    _, model, meta = _checkpoint(tmp_path, "cnn-bn")
    from cnnlab.export.onnx import to_onnx

    proto = to_onnx(model, meta)
    operators = [node.op_type for node in proto.graph.node]
    block = ["Conv", "BatchNormalization", "Relu", "MaxPool"]
    assert operators == block * 3 + ["Flatten", "Identity", "Gemm", "Relu", "Identity", "Gemm"]
    assert proto.opset_import[0].version >= 17
    initializers = {tensor.name: tuple(tensor.dims) for tensor in proto.graph.initializer}
    assert initializers["0.weight"] == (32, 1, 3, 3)          # PyTorch's names and layouts
    assert initializers["1.running_var"] == (32,)
    assert initializers["17.weight"] == (10, 128)
    conv = proto.graph.node[0]
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute)
                  for attribute in conv.attribute}
    assert attributes["pads"] == [1, 1, 1, 1] and attributes["kernel_shape"] == [3, 3]
    batch_axis = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param == "batch" and not batch_axis.HasField("dim_value")
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    props = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(props["cnnlab.classes"]) == FASHION_CLASSES
    assert props["cnnlab.model"] == "cnn-bn"
    preparation = json.loads(props["cnnlab.input_preparation"])
    assert preparation == input_preparation(meta)
    assert preparation["normalization"]["kind"] == "standard"
    assert preparation["normalization"]["mean"] == pytest.approx(meta["normalization"]["mean"])
    assert "pixel / 255" in preparation["formula"]
    onnx.checker.check_model(proto, full_check=True)


def test_input_preparation_carries_what_the_checkpoint_records():
    meta = {"input_shape": [1, 28, 28], "normalization": {"kind": "unit", "mean": None,
                                                          "std": None},
            "preprocess": {"kind": "mnist-digit", "box": 20}}
    preparation = input_preparation(meta)
    assert preparation["normalization"] == {"kind": "unit"}
    assert preparation["formula"] == "x = pixel / 255"
    assert preparation["preprocess"] == {"kind": "mnist-digit", "box": 20}
    assert preparation["input_shape"] == [1, 28, 28] and preparation["layout"] == "NCHW"


def test_export_of_a_run_folder_writes_beside_the_checkpoint(tmp_path, capsys):
    require("onnx")
    require("safetensors")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, build_model("mlp", np.random.default_rng(0)), meta={"classes": list("abcdefghij")})
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "w.safetensors")]) == 0
    assert (run / "model.onnx").is_file() and (tmp_path / "w.safetensors").is_file()
    out = capsys.readouterr().out
    assert "Flatten -> Gemm -> Relu -> Gemm" in out and "dynamic batch" in out
    # a safetensors file re-exported as ONNX needs no --model: its metadata names the spec
    assert main(["export", str(tmp_path / "w.safetensors"), "--format", "onnx"]) == 0
    assert (tmp_path / "w.onnx").is_file()


def test_export_refuses_to_overwrite_its_source(tmp_path, capsys):
    require("safetensors")
    path = save_checkpoint(tmp_path / "m.npz", build_model("mlp", np.random.default_rng(0)))
    assert main(["export", str(path), "--format", "safetensors"]) == 0
    before = (tmp_path / "m.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m.safetensors"), "--format", "safetensors"]) == 2
    assert "is the file being exported" in capsys.readouterr().err
    assert (tmp_path / "m.safetensors").read_bytes() == before


# --------------------------------------------------------------------------- safetensors


@pytest.mark.parametrize("spec", MODELS, ids=["mlp", "cnn", "cnn-bn", "every-kind"])
def test_safetensors_loads_into_the_pytorch_model_with_the_same_logits(tmp_path, spec,
                                                                        real_images):
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")
    path, model, meta = _checkpoint(tmp_path, spec, seed=1)
    assert main(["export", str(path), "--format", "safetensors", "--out",
                 str(tmp_path / "model.safetensors")]) == 0
    state = safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    twin = torch_twin(model)
    assert {key: tuple(value.shape) for key, value in state.items()} == \
        {key: tuple(value.shape) for key, value in twin.state_dict().items()}
    twin.load_state_dict(state, strict=True)   # every key, nothing left over
    twin.eval()
    x = _prepared(real_images[0], meta)
    with torch.no_grad():
        logits = twin(torch.from_numpy(x)).numpy()
    assert _close(logits, model(x)) <= RELATIVE


def test_pytorch_trained_weights_evaluate_in_cnnlab_to_pytorchs_accuracy(tmp_path, capsys):
    """The lecture CNN trained in PyTorch (x / 255 inputs), saved with safetensors.torch."""
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")
    data = real_dataset(tmp_path / "fashion", train=3000, test=REAL_IMAGES)
    images = read_idx(data / "train-images-idx3-ubyte")
    labels = read_idx(data / "train-labels-idx1-ubyte").astype(np.int64)
    torch.manual_seed(0)
    lecture_cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(3136, 10))
    optimizer = torch.optim.Adam(lecture_cnn.parameters(), lr=1e-3)
    x_train = torch.from_numpy(images[:, None] / np.float32(255))
    y_train = torch.from_numpy(labels)
    for start in range(0, len(labels), 100):
        loss = torch.nn.functional.cross_entropy(lecture_cnn(x_train[start:start + 100]),
                                                 y_train[start:start + 100])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lecture_cnn.eval()
    test_images = read_idx(data / "t10k-images-idx3-ubyte")
    test_labels = read_idx(data / "t10k-labels-idx1-ubyte").astype(np.int64)
    with torch.no_grad():
        predictions = lecture_cnn(torch.from_numpy(test_images[:, None] / np.float32(255)))
    torch_accuracy = float((predictions.argmax(1).numpy() == test_labels).mean())
    assert torch_accuracy > 0.6   # it learned something, so agreement is not by chance
    weights = tmp_path / "lecture-cnn.safetensors"
    safetensors_torch.save_file(lecture_cnn.state_dict(), str(weights))

    report = tmp_path / "eval.json"
    assert main(["evaluate", str(weights), "--model", "cnn", "--dataset", str(data),
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["accuracy"] == pytest.approx(torch_accuracy, abs=1.5 / REAL_IMAGES)
    assert result["num_samples"] == REAL_IMAGES
    assert "model 'cnn'" in capsys.readouterr().out


def test_a_checkpoint_exported_to_safetensors_evaluates_like_the_checkpoint(tmp_path, capsys):
    require("safetensors")
    data = synthetic_dataset(tmp_path / "bars")
    run = tmp_path / "run"
    assert main(["train", "--model", "cnn", "--dataset", str(data), "--epochs", "1",
                 "--run-dir", str(run), "--no-progress", "--no-report"]) == 0
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    outputs = []
    for source in (run, run / "model.safetensors"):
        path = tmp_path / f"{source.name}.json"
        assert main(["evaluate", str(source), "--json", str(path)]) == 0
        outputs.append(json.loads(path.read_text()))
    for key in ("accuracy", "loss", "confusion"):
        assert outputs[0][key] == outputs[1][key]
    assert outputs[1]["dataset"] == str(data)   # the dataset came from the file's metadata


def test_predict_reads_safetensors_from_pytorch(tmp_path, capsys):
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")
    model = build_model("mlp", np.random.default_rng(0))
    twin = torch_twin(model)
    safetensors_torch.save_file(twin.state_dict(), str(tmp_path / "mlp.safetensors"))
    from cnnlab.data import write_idx

    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "three.idx", images)
    assert main(["predict", str(tmp_path / "mlp.safetensors"), "--model", "mlp",
                 str(tmp_path / "three.idx"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        expected = torch.softmax(twin(torch.from_numpy(images[:, None] / np.float32(255))), 1)
    for result, row in zip(results, expected.numpy()):
        assert result["top"][0]["class"] == int(row.argmax())
        assert result["top"][0]["probability"] == pytest.approx(float(row.max()), rel=1e-5)


@pytest.mark.slow
def test_report_of_a_safetensors_file(tmp_path, capsys):
    require("safetensors")
    pytest.importorskip("matplotlib")
    data = synthetic_dataset(tmp_path / "bars")
    path = save_checkpoint(tmp_path / "m.npz", build_model("cnn", np.random.default_rng(0)))
    assert main(["export", str(path), "--format", "safetensors"]) == 0
    assert main(["report", str(tmp_path / "m.safetensors"), "--dataset", str(data)]) == 0
    html = (tmp_path / "m.report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in html
    assert 'http-equiv="refresh"' not in html    # nothing is training
    assert html.count("<img") >= 5                # confusion, mistakes, filters, features, ...


# --------------------------------------------------------------------------- fine-tuning


def test_train_init_from_safetensors_starts_from_those_weights(tmp_path):
    require("safetensors")
    from cnnlab.interop import save_safetensors

    data = synthetic_dataset(tmp_path / "bars", train=128)
    start = build_model("cnn", np.random.default_rng(42))
    save_safetensors(tmp_path / "start.safetensors", start.state_dict())   # as PyTorch would
    run = tmp_path / "run"
    assert main(["train", "--model", "cnn", "--dataset", str(data), "--epochs", "1",
                 "--batch-size", "128", "--optimizer", "sgd", "--momentum", "0", "--lr", "1e-9",
                 "--init-from", str(tmp_path / "start.safetensors"), "--run-dir", str(run),
                 "--no-progress", "--no-report"]) == 0
    trained = model_from_checkpoint(load_weights(run))
    for key, value in start.state_dict().items():   # one step of lr 1e-9 from those weights
        np.testing.assert_allclose(trained.state_dict()[key], value, atol=1e-6)
    assert json.loads((run / "config.json").read_text())["init_from"] == \
        str(tmp_path / "start.safetensors")


def test_train_init_from_reads_the_weights_once(tmp_path, monkeypatch):
    import cnnlab.checkpoint as checkpoint

    data = synthetic_dataset(tmp_path / "bars", train=64)
    save_checkpoint(tmp_path / "start.npz", build_model("cnn", np.random.default_rng(42)),
                    meta={"model": "cnn"})
    reads = []
    real_load = checkpoint.load_weights
    monkeypatch.setattr(checkpoint, "load_weights",
                        lambda *args, **kwargs: reads.append(args) or real_load(*args, **kwargs))
    assert main(["train", "--model", "cnn", "--dataset", str(data), "--epochs", "1",
                 "--init-from", str(tmp_path / "start.npz"), "--run-dir", str(tmp_path / "run"),
                 "--no-progress", "--no-report"]) == 0
    assert len(reads) == 1


def test_train_init_from_a_run_and_its_mismatches(tmp_path, capsys):
    data = synthetic_dataset(tmp_path / "bars", train=128)
    first = tmp_path / "first"
    common = ["--dataset", str(data), "--epochs", "1", "--no-progress", "--no-report"]
    assert main(["train", "--model", "cnn", *common, "--run-dir", str(first)]) == 0
    assert main(["train", "--model", "cnn", *common, "--init-from", str(first),
                 "--run-dir", str(tmp_path / "second")]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "c16k3p1-p2-c64k3p1-p2-fc128", *common, "--init-from",
                 str(first), "--run-dir", str(tmp_path / "third")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    # every mismatched key is named, not only the first few
    for phrase in ("0.weight (32,1,3,3) in file vs (16,1,3,3) in model", "0.bias (32)",
                   "3.weight (64,32,3,3) in file vs (64,16,3,3)", "missing 9.weight",
                   "missing 9.bias", "7.weight (10,3136) in file vs (128,3136) in model",
                   "7.bias (10) in file vs (128)"):
        assert phrase in error, phrase
    assert not (tmp_path / "third").exists()   # nothing made for a run that cannot start


# --------------------------------------------------------------------------- bad files


def test_mismatch_message_lists_every_key():
    from cnnlab.interop import check_state_fits

    model = build_model("cnn-bn", np.random.default_rng(0))
    state = {f"features.{key}": value for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        check_state_fits(model, state, "x.safetensors")
    text = str(error.value)
    assert f"({2 * len(state)} mismatched)" in text and "\n" not in text
    listed = set(text.split("mismatched): ")[1].split("; the model's keys")[0].split("; "))
    assert listed == {f"missing {key}" for key in model.state_dict()} | \
        {f"unexpected features.{key}" for key in model.state_dict()}
    assert "nn.Sequential" in text


def test_a_torch_pickle_is_refused_without_unpickling(tmp_path, no_unpickling, capsys):
    torch = require("torch")
    path = tmp_path / "model.safetensors"
    torch.save({"0.weight": torch.zeros(3)}, path)   # a .pt file given the wrong name
    assert main(["evaluate", str(path), "--model", "mlp"]) == 2
    error = capsys.readouterr().err
    assert "PyTorch pickle" in error and "never unpickles" in error
    assert "safetensors.torch.save_file" in error


@pytest.mark.parametrize("content, phrase", [
    (b"", "not a safetensors file"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}", "not a safetensors file"),
    (b"\x48\x00\x00\x00\x00\x00\x00\x00" + json.dumps({"w": {"dtype": "F32", "shape": [4, 4],
     "data_offsets": [0, 64]}}).encode().ljust(72) + b"\x00" * 10, "not a valid safetensors"),
])
def test_broken_safetensors_files_are_one_line_errors(tmp_path, content, phrase, capsys):
    require("safetensors")
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    assert main(["evaluate", str(path), "--model", "mlp"]) == 2
    error = capsys.readouterr().err
    assert phrase in error and len(error.strip().splitlines()) == 1


def test_a_pytorch_file_without_model_says_to_give_model(tmp_path, capsys):
    require("safetensors")
    from cnnlab.interop import save_safetensors

    save_safetensors(tmp_path / "w.safetensors", build_model("mlp", np.random.default_rng(0)).state_dict())
    assert main(["evaluate", str(tmp_path / "w.safetensors"), "--dataset", "mnist"]) == 2
    assert "give the architecture with --model SPEC" in capsys.readouterr().err


def test_safetensors_is_optional(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    path = save_checkpoint(tmp_path / "m.npz", build_model("mlp", np.random.default_rng(0)))
    assert main(["export", str(path), "--format", "safetensors"]) == 2
    assert "pip install 'cnnlab[safetensors]'" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_onnx_is_optional(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)    # `import onnx` now raises ImportError
    path = save_checkpoint(tmp_path / "m.npz", build_model("mlp", np.random.default_rng(0)))
    assert main(["export", str(path), "--format", "onnx"]) == 2
    assert "pip install 'cnnlab[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_help_imports_no_optional_package():
    code = ("import sys\nfrom cnnlab.cli import main\ntry:\n    main(['export', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'safetensors', 'torch') "
            "if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True)
    assert completed.stdout.strip().splitlines()[-1] == "[]"


def test_the_lectures_simple_cnn_with_named_parts_comes_in_flattened(tmp_path, capsys):
    """Lecture 004's SimpleCNN keeps its layers in features and classifier Sequentials."""
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")

    class SimpleCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
            self.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3136, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    simple = SimpleCNN()
    safetensors_torch.save_file(simple.state_dict(), str(tmp_path / "named.safetensors"))
    assert main(["export", str(tmp_path / "named.safetensors"), "--model", "cnn",
                 "--format", "onnx"]) == 2
    error = capsys.readouterr().err
    assert "unexpected features.0.weight" in error and "missing 7.weight" in error
    assert "torch.nn.Sequential(*model.features, *model.classifier).state_dict()" in error
    flat = torch.nn.Sequential(*simple.features, *simple.classifier)
    safetensors_torch.save_file(flat.state_dict(), str(tmp_path / "flat.safetensors"))
    checkpoint = load_weights(tmp_path / "flat.safetensors", "cnn")
    model = model_from_checkpoint(checkpoint)
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = simple(torch.from_numpy(x)).numpy()
    assert _close(model(x), expected) <= RELATIVE


@pytest.mark.parametrize("opset", [18, 21])
def test_newer_opsets_export_and_run(tmp_path, opset):
    onnx = require("onnx")
    onnxruntime = require("onnxruntime")
    from cnnlab.export.onnx import to_onnx

    model = build_model("cnn-bn", np.random.default_rng(0))
    model.eval()
    proto = to_onnx(model, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    assert _close(session.run(None, {"input": x})[0], model(x)) <= RELATIVE
