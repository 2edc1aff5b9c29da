"""The explorer's data, page, live file and command, without a browser (see test_explorer_browser.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cnnlab.cli import main as cli_main
from cnnlab.errors import ConfigError
from cnnlab.explorer import live
from cnnlab.explorer.data import (
    decode_float32,
    describe_layer,
    explorer_payload,
    layer_inputs,
    pick_test_images,
)
from cnnlab.explorer.page import explorer_section
from cnnlab.models import build_model
from conftest import make_tiny_dataset

LECTURE_META = {"normalization": {"kind": "standard", "mean": 0.2860, "std": 0.3530},
                "num_classes": 10, "classes": [str(k) for k in range(10)]}
TEN_MB = 10 * 1024 * 1024


def lecture_cnn():
    return build_model("cnn", np.random.default_rng(0))


def test_payload_carries_the_models_own_float32_weights_and_layer_inputs(rng):
    model = lecture_cnn()
    images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    payload = explorer_payload(model, LECTURE_META, images, [0, 1, 2, 3])
    assert [layer["kind"] for layer in payload["layers"]] == \
        ["conv", "relu", "maxpool", "conv", "relu", "maxpool", "flatten", "linear"]
    assert payload["layers"][3]["output_shape"] == [64, 14, 14]
    for index in (0, 3, 7):
        weight = decode_float32(payload["layers"][index]["weight"])
        np.testing.assert_array_equal(weight, model[index].weight.data.ravel())
    from cnnlab.images import to_model_input

    values = layer_inputs(model, to_model_input(images, LECTURE_META["normalization"]))
    for item, embedded in enumerate(payload["images"]):
        assert sorted(embedded["inputs"], key=int) == ["0", "3", "7"]   # each Conv2d and Linear
        for key, text in embedded["inputs"].items():
            np.testing.assert_array_equal(decode_float32(text), values[int(key)][item].ravel())
        np.testing.assert_array_equal(decode_float32(embedded["logits"]), values[-1][item])


def test_layer_inputs_equal_the_fused_forward_and_leave_the_mode_alone(rng):
    model = lecture_cnn()
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    model.train()
    values = layer_inputs(model, x)
    assert model.training
    model.eval()
    np.testing.assert_allclose(values[-1], model(x), rtol=1e-5, atol=1e-5)


def test_the_lecture_cnn_page_is_self_contained_and_under_10_mb(rng):
    model = lecture_cnn()
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)   # 3 per class, as for a run
    document = explorer_section(explorer_payload(model, LECTURE_META, images, np.arange(30) % 10))
    assert len(document.encode("utf-8")) < TEN_MB
    assert not re.search(r"https?://|<link\b|<script[^>]*\bsrc=|@import|url\(", document)
    payload = re.search(r'<script type="application/json" id="cnnlab-explorer-data">(.*?)</script>',
                        document, re.S).group(1)
    assert json.loads(payload)["images"][29]["label"] == 9


def test_pick_test_images_takes_the_first_of_each_class():
    labels = np.array([3, 1, 3, 0, 1, 3, 3, 0])
    assert pick_test_images(labels, per_class=2).tolist() == [0, 1, 2, 3, 4, 7]
    assert pick_test_images(labels, per_class=2, limit=3).tolist() == [0, 1, 2]


def test_a_layer_the_explorer_cannot_recompute_is_named():
    from cnnlab.nn import layers

    class Custom(layers.ReLU):
        pass

    with pytest.raises(ConfigError, match="cannot show a Custom"):
        describe_layer(Custom())


def test_live_writer_keeps_a_bounded_rate_and_round_trips(tmp_path, rng):
    model = build_model("c4k3p1-bn-p2-drop0.3-fc8", rng)
    now = [0.0]
    writer = live.LiveWriter(tmp_path, rng.integers(0, 256, (28, 28), dtype=np.uint8),
                             {"kind": "unit"}, epochs=3, every=2.0, clock=lambda: now[0])
    for step in range(1, 1001):
        writer.add({"kind": "step", "step": step, "loss": 1.0 / step, "accuracy": 0.5})
    if writer.due():
        writer.write(model)
    first = live.read_live(tmp_path)
    assert first["status"] == "running" and first["step"] == 1000 and first["epochs"] == 3
    assert len(first["steps"]) <= live.MAX_STEP_POINTS and first["steps"][-1][0] == 1000
    writer.add({"kind": "epoch", "epoch": 1, "step": 1000, "test_loss": 0.5, "test_accuracy": 0.8})
    now[0] = 1.0
    if writer.due():                               # too soon: the file is not rewritten
        writer.write(model)
    assert live.read_live(tmp_path)["epoch"] == 0
    now[0] = 2.5
    if writer.due():
        writer.write(model)
    state = live.read_live(tmp_path)
    assert state["epoch"] == 1
    assert [entry["layer"] for entry in state["filters"]] == [0]
    assert [(entry["layer"], entry["shape"]) for entry in state["maps"]] == [(0, [4, 28, 28]), (3, [4, 14, 14])]
    assert (tmp_path / "live.js").read_text().startswith("cnnlabLive({")
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_live_view_does_not_change_what_training_computes(tmp_path, data_root):
    data = make_tiny_dataset(data_root, tmp_path / "data", train=256, test=64)
    common = ["train", "--model", "c4k3p1-bn-p2-drop0.3-fc16", "--dataset", str(data),
              "--epochs", "2", "--batch-size", "64", "--log-every", "1", "--no-progress",
              "--threads", "2"]
    assert cli_main(common + ["--run-dir", str(tmp_path / "live")]) == 0
    assert cli_main(common + ["--run-dir", str(tmp_path / "quiet"), "--no-report"]) == 0
    assert not (tmp_path / "quiet" / "live.js").exists()
    state = live.read_live(tmp_path / "live")
    assert state["status"] == "finished" and state["epoch"] == 2
    from cnnlab.runs import read_metrics

    records = read_metrics(tmp_path / "live" / "metrics.jsonl")
    assert state["epoch_records"] == [record for record in records if record["kind"] == "epoch"]
    assert state["steps"] == [[record["step"], record["loss"], record["accuracy"]]
                              for record in records if record["kind"] == "step"]
    with np.load(tmp_path / "live" / "checkpoint.npz") as ours, \
            np.load(tmp_path / "quiet" / "checkpoint.npz") as theirs:
        for key in ours.files:
            if key.startswith(("model/", "optim/", "grad/")):
                np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_explore_writes_the_page(trained_run, tmp_path, capsys):
    out = tmp_path / "explorer.html"
    assert cli_main(["explore", str(trained_run), "--out", str(out), "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    document = out.read_text(encoding="utf-8")
    assert 'id="cnnlab-explorer-data"' in document
    assert not re.search(r"https?://", document)


def test_explore_without_a_checkpoint_says_so_in_one_line(trained_run, tmp_path, capsys):
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text((trained_run / "config.json").read_text())
    assert cli_main(["explore", str(early), "--no-open"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no checkpoint.npz" in error
    assert not (early / "explorer.html").exists()


def test_explore_serve_binds_127_0_0_1_and_prints_the_url(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for path in trained_run.iterdir():
        if path.is_file():
            (run / path.name).write_bytes(path.read_bytes())
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "explore", str(run), "--serve",
                               "--no-open"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/explorer\.html", line)
        assert url, line
        with urllib.request.urlopen(url.group(0), timeout=30) as response:
            assert b'id="cnnlab-explorer-data"' in response.read()
            assert response.headers["Cache-Control"] == "no-store"
        live_url = url.group(0).replace("explorer.html", "live.js")
        with urllib.request.urlopen(live_url, timeout=30) as response:
            assert response.read().startswith(b"cnnlabLive(")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_resumed_runs_live_view_starts_from_the_records_so_far(tmp_path, rng):
    from cnnlab.runs import METRICS_FILE

    earlier = [{"kind": "step", "step": 1, "loss": 2.0, "accuracy": 0.1},
               {"kind": "epoch", "epoch": 1, "step": 1, "test_loss": 1.5, "test_accuracy": 0.4}]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(record) + "\n" for record in earlier))
    writer = live.LiveWriter(tmp_path, np.zeros((28, 28), np.uint8), None, epochs=2)
    writer.add({"kind": "step", "step": 2, "loss": 1.0, "accuracy": 0.6})
    writer.write(build_model("c2k3-p2", rng), status="interrupted")
    state = live.read_live(tmp_path)
    assert state["steps"] == [[1, 2.0, 0.1], [2, 1.0, 0.6]] and state["epoch"] == 1
    assert state["status"] == "interrupted"


def _fail_in_second_epoch(monkeypatch, how: str):
    """Make the trainer's third step of epoch 2 end the way ``how`` says."""
    import os
    import signal

    from cnnlab import train

    original = train.Trainer._forward_backward

    def step(self, x, y, stopping):
        loss, correct, stop = original(self, x, y, stopping)
        if self.progress.epochs_done >= 1 and self.progress.batch_in_epoch == 2:
            if how == "nan":
                for parameter in self.model.parameters():   # the weights diverged
                    parameter.data[...] = np.nan
                loss = float("nan")
            elif how == "error":
                raise RuntimeError("the disk is on fire")
            elif how == "second ctrl-c":
                raise KeyboardInterrupt
            elif how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
        return loss, correct, stop

    monkeypatch.setattr(train.Trainer, "_forward_backward", step)


@pytest.mark.parametrize("how, status, exit_code, reason", [
    ("nan", "failed", 2, "the loss became nan at epoch 2, step "),
    ("error", "failed", None, "RuntimeError: the disk is on fire"),
    ("second ctrl-c", "interrupted", 130, "stopped at once by a second Ctrl-C at step "),
    ("sigint", "interrupted", 130, "stopped by SIGINT at epoch 2, step "),
])
def test_live_js_tells_how_a_run_that_did_not_finish_ended(data_root, tmp_path, monkeypatch, how,
                                                            status, exit_code, reason):
    data = make_tiny_dataset(data_root, tmp_path / "data", train=256, test=64)
    _fail_in_second_epoch(monkeypatch, how)
    run = tmp_path / "run"
    argv = ["train", "--model", "c2k3-p2", "--dataset", str(data), "--epochs", "3", "--batch-size", "64",
            "--log-every", "1", "--run-dir", str(run), "--no-progress", "--threads", "1"]
    monkeypatch.setattr("cnnlab.train.Trainer._write_report", lambda self: None)   # no matplotlib
    after_first_epoch = {}
    original_write = live.LiveWriter.write

    def remember(self, model, status="running", reason=None):
        original_write(self, model, status, reason)
        if self.last["epoch"] == 1 and not after_first_epoch:
            after_first_epoch.update(self.last)
    monkeypatch.setattr(live.LiveWriter, "write", remember)
    if exit_code is None:
        with pytest.raises(RuntimeError, match="on fire"):
            cli_main(argv)
    else:
        assert cli_main(argv) == exit_code
    state = live.read_live(run)
    assert state["status"] == status and state["reason"].startswith(reason), state["reason"]
    assert state["epoch"] == 1 and state["step"] >= 5       # the curves up to where it stopped
    if how == "sigint":
        assert f"cnnlab train --resume {run}" in state["reason"]
    if how == "nan":
        # NaN weights draw nothing: the last good filters and maps stay, and say nothing false
        assert state["filters"] == after_first_epoch["filters"]
        assert state["maps"] == after_first_epoch["maps"]
    else:
        assert all(np.isfinite(entry["lo"]).all() for entry in state["filters"])


def test_the_last_write_never_raises_and_keeps_the_error_of_the_run(tmp_path, capsys):
    class Broken:
        def parameters(self):
            raise MemoryError("no memory left to draw")

    writer = live.LiveWriter(tmp_path, np.zeros((28, 28), np.uint8), None, epochs=2)
    writer.add({"kind": "step", "step": 4, "loss": 1.0, "accuracy": 0.5})
    writer.stop(Broken(), "failed", "MemoryError: out of memory at step 4")
    state = live.read_live(tmp_path)
    assert state["status"] == "failed" and state["reason"] == "MemoryError: out of memory at step 4"
    assert state["steps"] == [[4, 1.0, 0.5]] and state["filters"] == [] and state["image"] is None
