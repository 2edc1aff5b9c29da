"""`cnnlab train --wandb`: the real wandb library, offline; a clear error without it."""

from __future__ import annotations

import json
import sys
import time

import pytest
import wandb  # noqa: F401 - the test must fail, not skip, when wandb is missing

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from test_train import read_metrics


def test_wandb_offline_run_holds_our_config_and_metrics(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    run = tmp_path / "run"
    code = main(["train", "--model", "mlp", "--dataset", str(tiny_fashion), "--epochs", "1",
                 "--limit-train", "256", "--limit-test", "100", "--batch-size", "64",
                 "--log-every", "2", "--run-dir", str(run), "--no-progress", "--no-report",
                 "--wandb", "--wandb-project", "cnnlab-test", "--wandb-name", "tiny-mlp"])
    assert code == 0
    offline_runs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 1
    # The .wandb file is a log of protobuf records; keys and JSON values are stored as text.
    # wandb's service process writes it just after finish() returns: wait for it.
    epoch_record = [r for r in read_metrics(run) if r["kind"] == "epoch"][0]
    texts = ("cnnlab-test", "tiny-mlp", "train/loss", "epoch/test_accuracy",
             json.dumps(epoch_record["test_accuracy"]), "batch_size")
    deadline = time.monotonic() + 30
    while True:
        content = offline_runs[0].read_bytes()
        missing = [text for text in texts if text.encode() not in content]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing
    summary = json.loads((run / "summary.json").read_text())
    assert summary["wandb_run_id"] and summary["wandb_run_id"] in offline_runs[0].name


def test_missing_wandb_says_how_to_install(monkeypatch, tmp_path):
    from cnnlab.wandb_log import WandbLogger

    monkeypatch.setitem(sys.modules, "wandb", None)   # import wandb now raises ImportError
    with pytest.raises(CnnlabError, match=r"pip install 'cnnlab\[wandb\]'"):
        WandbLogger({}, tmp_path, "project", "name")


def test_import_cnnlab_train_does_not_import_wandb():
    import subprocess

    code = ("import sys, cnnlab.train, cnnlab.commands.train, cnnlab.wandb_log, cnnlab.config; "
            "print(any(m in sys.modules for m in ('wandb', 'torch', 'matplotlib')))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "False"
