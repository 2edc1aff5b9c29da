"""`cnnlab train`: the run folder, config files, determinism, option errors, NaN losses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.errors import ConfigError, TrainingError

TIMING_KEYS = {"time", "seconds", "images_per_second"}


def train_cli(*args, capsys=None) -> int:
    return main(["train", "--no-progress", "--no-report", *map(str, args)])


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def checkpoint_arrays(run: Path) -> dict:
    with np.load(run / "checkpoint.npz", allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files if key != "meta"}


def assert_same_checkpoint(run_a: Path, run_b: Path) -> None:
    a, b = checkpoint_arrays(run_a), checkpoint_arrays(run_b)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.slow
def test_run_folder_has_every_file_with_the_right_content(tiny_fashion, tmp_path, capsys):
    from cnnlab.checkpoint import load_checkpoint, load_model
    from cnnlab.evaluation import evaluate

    run = tmp_path / "run"
    code = main(["train", "--model", "mlp", "--dataset", str(tiny_fashion), "--epochs", "2",
                 "--batch-size", "64", "--limit-test", "500", "--log-every", "8",
                 "--val-fraction", "0.125", "--run-dir", str(run), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "test accuracy" in out and str(run) in out and "cnnlab evaluate" in out

    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "mlp" and config["epochs"] == 2 and config["batch_size"] == 64
    assert config["lr"] is not None and config["val_fraction"] == 0.125

    records = read_metrics(run)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps_per_epoch = 1792 // 64   # 2048 minus the 256 held out for validation
    assert [r["step"] for r in steps] == list(range(8, 2 * steps_per_epoch + 1, 8))
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 28), (2, 56)]
    for record in epochs:
        assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "val_loss",
                "val_accuracy", "seconds", "time"} <= set(record)
    assert all(r["lr"] > 0 and np.isfinite(r["loss"]) for r in steps)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is True and summary["epochs"] == 2
    assert summary["test_accuracy"] == epochs[-1]["test_accuracy"] > 0.6   # chance is 0.1
    assert summary["images_per_second"] > 0 and summary["train_seconds"] > 0
    assert summary["versions"]["numpy"] == np.__version__
    assert summary["model"] == "mlp" and summary["seed"] == 0
    assert (run / "report.html").is_file()

    checkpoint = load_checkpoint(run / "checkpoint.npz")
    assert checkpoint.meta["epoch"] == 2 and checkpoint.meta["step"] == 56
    assert checkpoint.meta["config"] == config
    model, meta = load_model(run / "checkpoint.npz")
    from cnnlab.data import load_dataset

    dataset = load_dataset(str(tiny_fashion), progress=False)
    norm = meta["normalization"]
    result = evaluate(model, dataset.test_images[:500], dataset.test_labels[:500],
                      normalization=norm["kind"], mean=norm["mean"], std=norm["std"])
    assert result.accuracy == summary["test_accuracy"]


def test_threads_split_each_batch_without_changing_the_run(tiny_fashion, tmp_path):
    common = ["--model", "cnn", "--dataset", tiny_fashion, "--epochs", "1", "--batch-size",
              "64", "--limit-train", "512", "--limit-test", "200", "--log-every", "1",
              "--no-report"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert train_cli(*common, "--threads", "1", "--run-dir", one) == 0
    assert train_cli(*common, "--threads", "2", "--run-dir", two) == 0
    assert json.loads((one / "config.json").read_text())["threads"] == 1
    assert json.loads((two / "config.json").read_text())["threads"] == 2
    # Two shards sum the same gradient in another order: the runs agree to float rounding.
    losses = [[r["loss"] for r in read_metrics(run) if r["kind"] == "step"] for run in (one, two)]
    assert len(losses[0]) == 8
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_config_file_reruns_the_same_run_and_seeds_matter(tiny_fashion, tmp_path, capsys):
    common = ["--model", "mlp", "--dataset", tiny_fashion, "--epochs", "2", "--batch-size",
              "64", "--limit-train", "512", "--limit-test", "200", "--log-every", "2"]
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    assert train_cli(*common, "--run-dir", first) == 0
    assert train_cli("--config", first / "config.json", "--run-dir", again) == 0
    assert train_cli("--config", first / "config.json", "--seed", "1", "--run-dir", other) == 0
    assert json.loads((again / "config.json").read_text()) == \
        json.loads((first / "config.json").read_text())
    assert without_timings(read_metrics(first)) == without_timings(read_metrics(again))
    assert_same_checkpoint(first, again)
    assert json.loads((other / "config.json").read_text())["seed"] == 1
    assert without_timings(read_metrics(first)) != without_timings(read_metrics(other))


def test_toml_config_and_command_line_override(tmp_path):
    from cnnlab.config import load_config_file, resolve_config

    path = tmp_path / "run.toml"
    path.write_text('model = "mlp"\nbatch-size = 32\nlr = 0.01\nschedule = "step"\n')
    config = resolve_config(load_config_file(path), {"lr": 0.5, "epochs": None})
    assert (config.model, config.batch_size, config.lr, config.schedule) == ("mlp", 32, 0.5, "step")
    assert config.epochs > 0 and config.step_epochs >= 1


def test_toml_config_on_python_3_10_reads_with_tomli(tmp_path, monkeypatch):
    import sys
    import tomllib

    from cnnlab.config import load_config_file

    path = tmp_path / "run.toml"
    path.write_text('model = "mlp"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python 3.10: no tomllib
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # tomli is the same parser
    assert load_config_file(path) == {"model": "mlp"}
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ConfigError, match="needs the tomli package: pip install tomli"):
        load_config_file(path)


def test_each_optimizer_has_its_own_default_learning_rate(tmp_path, capsys):
    from cnnlab.config import resolve_config

    lr = {optimizer: resolve_config(overrides={"model": "mlp", "optimizer": optimizer}).lr
          for optimizer in ("sgd", "adam", "adamw")}
    assert lr == {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
    assert resolve_config(overrides={"model": "cnn-bn", "optimizer": "adam"}).lr == 2e-3
    assert resolve_config(overrides={"model": "cnn-bn", "optimizer": "sgd"}).lr == 0.05
    assert resolve_config(overrides={"optimizer": "sgd", "lr": 0.2}).lr == 0.2
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 0.05 for sgd, 0.001 for adam and adamw, 0.002 for cnn-bn" in help_text


def test_default_dataset_is_the_one_the_quick_start_installs(capsys):
    from cnnlab.config import resolve_config

    assert resolve_config().dataset == "fashion-mnist"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "default fashion-mnist" in " ".join(capsys.readouterr().out.split())


def test_learning_rate_schedules_step_every_step():
    from cnnlab.config import resolve_config
    from cnnlab.nn.module import Parameter
    from cnnlab.optim import Adam
    from cnnlab.train import build_scheduler

    def lrs(config, steps):
        optimizer = Adam([Parameter(np.zeros(1, np.float32))], lr=config.lr)
        scheduler = build_scheduler(config, optimizer, 10)
        values = []
        for _ in range(steps):
            values.append(optimizer.lr)
            if scheduler is not None:
                scheduler.step()
        return values

    cosine = lrs(resolve_config({"lr": 0.1, "epochs": 2, "schedule": "cosine"}), 21)
    assert cosine[0] == 0.1 and cosine[10] == pytest.approx(0.05) and cosine[20] == pytest.approx(0)
    assert all(a > b for a, b in zip(cosine[:20], cosine[1:21]))
    step = lrs(resolve_config({"lr": 0.1, "epochs": 4, "schedule": "step", "step_epochs": 2}), 40)
    assert [step[t] for t in (0, 19, 20, 39)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    linear = lrs(resolve_config({"lr": 0.1, "epochs": 1, "schedule": "linear"}), 11)
    assert linear[5] == pytest.approx(0.05) and linear[10] == pytest.approx(0)
    assert set(lrs(resolve_config({"lr": 0.1, "epochs": 1, "schedule": "constant"}), 5)) == {0.1}


def test_run_dir_rules(tiny_fashion, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    for run_dir, words in ((a_file, "is a file"), (full, "not empty")):
        assert train_cli("--dataset", tiny_fashion, "--run-dir", run_dir) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert (full / "keep.txt").read_text() == "x" and sorted(p.name for p in full.iterdir()) == ["keep.txt"]


def test_two_runs_in_the_same_second_get_separate_folders(tmp_path, monkeypatch):
    import time

    from cnnlab import runs

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20240101-120000")
    first = runs.make_run_dir("cnn", "fashion-mnist", runs_root=str(tmp_path))
    second = runs.make_run_dir("cnn", "fashion-mnist", runs_root=str(tmp_path))
    third = runs.make_run_dir("cnn-bn", "/data/My Set", runs_root=str(tmp_path))
    assert first.name == "cnn-fashion-mnist-20240101-120000"
    assert second.name == "cnn-fashion-mnist-20240101-120000-2"
    assert third.name == "cnn-bn-my-set-20240101-120000"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runs.make_run_dir("cnn", "mnist", run_dir=str(empty)) == empty


@pytest.mark.parametrize("options, words", [
    (["--optimizer", "adma"], "did you mean 'adam'"),
    (["--schedule", "cosin"], "did you mean 'cosine'"),
    (["--normalization", "standrad"], "did you mean 'standard'"),
    (["--batch-size", "0"], "--batch-size must be greater than 0"),
    (["--epochs", "-2"], "--epochs must be greater than 0"),
    (["--lr", "0"], "--lr must be greater than 0"),
    (["--limit-train", "0"], "--limit-train must be greater than 0"),
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (["--model", "cnn_bn"], "did you mean 'cnn-bn'"),
    (["--dataset", "fashion-mnst"], "did you mean 'fashion-mnist'"),
    (["--config", "missing.json"], "does not exist"),
    (["--resume", "no-such-run"], "no such run folder"),
])
def test_bad_options_exit_2_with_one_line(options, words, tiny_fashion, tmp_path, capsys,
                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--dataset" not in options and "--resume" not in options:
        options = ["--dataset", str(tiny_fashion), *options]
    assert train_cli(*options) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert err.startswith("cnnlab: error:") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_setting_in_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": "cnn", "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        from cnnlab.config import load_config_file

        load_config_file(path)
    path.write_text(json.dumps({"bach_size": 3}))
    assert train_cli("--config", path) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err


def test_huge_learning_rate_stops_with_a_message(tiny_fashion, tmp_path, capsys):
    run = tmp_path / "run"
    code = train_cli("--model", "mlp", "--dataset", tiny_fashion, "--optimizer", "sgd",
                     "--lr", "1e6", "--schedule", "constant", "--epochs", "2",
                     "--limit-train", "512", "--run-dir", run)
    err = capsys.readouterr().err
    assert code == 2
    assert "lower the learning rate" in err and "epoch 1" in err
    assert not (run / "checkpoint.npz").exists()
    assert json.loads((run / "summary.json").read_text())["finished"] is False


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint(tiny_fashion, tmp_path,
                                                             monkeypatch):
    import cnnlab.backend.parallel as loss_module  # the training step calls cross_entropy from there
    from cnnlab.checkpoint import load_checkpoint
    from cnnlab.config import resolve_config
    from cnnlab.train import train

    real_cross_entropy = loss_module.cross_entropy
    calls = {"n": 0}

    def cross_entropy_nan_at_step_11(logits, labels):
        calls["n"] += 1
        loss, dlogits = real_cross_entropy(logits, labels)
        return (float("nan"), dlogits) if calls["n"] == 11 else (loss, dlogits)

    monkeypatch.setattr(loss_module, "cross_entropy", cross_entropy_nan_at_step_11)
    # One thread: one cross_entropy call per step.
    config = resolve_config({"model": "mlp", "dataset": str(tiny_fashion), "epochs": 3,
                             "batch_size": 64, "limit_train": 512, "limit_test": 100,
                             "threads": 1, "progress": False, "report": False})
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="epoch 2, step 11.*lower the learning rate"):
        train(config, run_dir=run)
    checkpoint = load_checkpoint(run / "checkpoint.npz")
    assert checkpoint.meta["epoch"] == 1 and checkpoint.meta["step"] == 8
    assert all(np.isfinite(array).all() for array in checkpoint.model_state.values())
    assert [r["kind"] for r in read_metrics(run)].count("epoch") == 1


def test_report_is_rewritten_while_training_at_most_once_a_minute(tiny_fashion, tmp_path, monkeypatch):
    """After the first epoch, then only when REPORT_EVERY_SECONDS have passed, and at the end."""
    import itertools

    import cnnlab.report
    from cnnlab import train as train_module

    written = []

    def record(run_dir, out=None):
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        written.append((summary["epochs"], summary["finished"]))

    monkeypatch.setattr(cnnlab.report, "write_report", record)
    clock = itertools.chain([0.0, 10.0, 30.0, 75.0], itertools.repeat(500.0))
    monkeypatch.setattr(train_module, "_clock", lambda: next(clock))
    code = main(["train", "--model", "mlp", "--dataset", str(tiny_fashion), "--epochs", "5",
                 "--limit-train", "256", "--limit-test", "128", "--run-dir", str(tmp_path / "run"),
                 "--no-progress"])
    assert code == 0
    # epoch 1 at t=0 (the page then reloads itself); epochs 2 (10 s) and 3 (30 s) too soon;
    # epoch 4 (75 s); the last epoch leaves it to the final report
    assert written == [(1, False), (4, False), (5, True)]