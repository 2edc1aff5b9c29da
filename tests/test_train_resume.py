"""Ctrl-C / SIGTERM during training, then `--resume`: bit for bit the uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.cli import main
from test_train import assert_same_checkpoint, read_metrics, without_timings

REPO = Path(__file__).resolve().parent.parent


def common_options(data: Path) -> list[str]:
    # A small conv net with BatchNorm and Dropout: their buffers and rng must survive too,
    # with each batch split over two threads (each shard's dropout generator is seeded
    # from the checkpointed one).
    return ["train", "--model", "c6k3p1-bn-p2-c8k3p1-p2-flatten-drop0.3-fc32", "--dataset",
            str(data), "--epochs", "2", "--batch-size", "16", "--threads", "2", "--limit-train", "512",
            "--limit-test", "100", "--log-every", "1", "--no-report", "--no-progress",
            "--val-fraction", "0.0625", "--optimizer", "adamw", "--schedule", "step",
            "--step-epochs", "1"]


def step_lines(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    return metrics.read_text().count('"kind": "step"')


def interrupt_at_random_step(options: list[str], run: Path, signum: int, seed: int):
    """Start `cnnlab train` in a subprocess and send ``signum`` after a random step."""
    after = random.Random(seed).randint(2, 40)   # of 60 steps: 30 per epoch
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", *options, "--run-dir", str(run)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while step_lines(run / "metrics.jsonl") < after and process.poll() is None:
        assert time.monotonic() < deadline, "training never reached the step to interrupt"
        time.sleep(0.002)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return process.returncode, out + err, after


@pytest.mark.slow
@pytest.mark.parametrize("signum, seed", [(signal.SIGINT, 1), (signal.SIGTERM, 2)])
def test_interrupt_then_resume_equals_an_uninterrupted_run(signum, seed, tiny_fashion, tmp_path,
                                                           capsys):
    options = common_options(tiny_fashion)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(options + ["--run-dir", str(reference)]) == 0

    code, output, after = interrupt_at_random_step(options, interrupted, signum, seed)
    assert code == 128 + signum, output
    assert f"cnnlab train --resume {interrupted}" in output
    with np.load(interrupted / "checkpoint.npz", allow_pickle=False) as arrays:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    stopped_at = meta["step"]
    assert stopped_at >= after
    assert json.loads((interrupted / "summary.json").read_text())["finished"] is False

    capsys.readouterr()
    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 0
    assert f"step {stopped_at}" in capsys.readouterr().out

    resumed_records = without_timings(read_metrics(interrupted))
    assert resumed_records == without_timings(read_metrics(reference))
    steps = [record["step"] for record in resumed_records if record["kind"] == "step"]
    assert steps == sorted(set(steps))   # nothing repeated past the checkpoint
    assert_same_checkpoint(reference, interrupted)
    assert json.loads((interrupted / "summary.json").read_text())["finished"] is True

    assert main(["train", "--resume", str(interrupted), "--no-progress"]) == 2
    assert "already finished" in capsys.readouterr().err


def test_resume_refuses_to_change_the_config(tiny_fashion, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "--lr cannot be combined with --resume" in capsys.readouterr().err
