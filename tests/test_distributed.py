"""torchrun: data parallel training over processes and "machines" (gloo on 127.0.0.1, and two
network namespaces joined by a veth pair), for both backends; resume; a killed rank."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.distributed import rank_bounds, world_from_environment
from test_train import assert_same_checkpoint, checkpoint_arrays, read_metrics, without_timings

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def options(data: Path, *more) -> list[str]:
    # 512 images in global batches of 64: 8 steps an epoch, each split 32 + 32 over two ranks
    return ["train", "--model", "cnn", "--dataset", str(data), "--limit-train", "512",
            "--limit-test", "200", "--batch-size", "64", "--epochs", "1", "--log-every", "1",
            "--no-progress", "--no-report", *map(str, more)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(**more) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.update({key: str(value) for key, value in more.items()})
    return env


def torchrun_command(arguments, nproc: int = 2, launcher=None) -> list[str]:
    launcher = launcher or ["--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
                            "--master-port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "cnnlab", *arguments]


def torchrun(arguments, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun_command(arguments, nproc), cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def finish(processes, timeout: float = 240) -> list[str]:
    """Wait for ``processes`` (stdout piped, stderr merged) and return their outputs; none is
    left running, whatever happens."""
    try:
        return [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def step_records(run: Path) -> list[dict]:
    return [r for r in without_timings(read_metrics(run)) if r["kind"] == "step"]


# --------------------------------------------------------------------------- units


def test_rank_parts_are_disjoint_and_cover_every_batch():
    for batch in (1, 2, 5, 64, 127):
        for world in (1, 2, 3, 8):
            parts = [rank_bounds(batch, rank, world) for rank in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == batch
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [stop - start for start, stop in parts]
            assert max(sizes) - min(sizes) <= 1


def test_world_comes_from_torchrun_environment():
    world = world_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                    "TORCHELASTIC_RUN_ID": "x"})
    assert (world.rank, world.size, world.local_rank, world.supervised) == (3, 4, 1, True)
    assert not world.is_main and world_from_environment({}).size == 1


# --------------------------------------------------------------------------- the NumPy engine


def test_numpy_engine_on_two_ranks_equals_one_process_bit_for_bit(tiny_fashion, tmp_path):
    """Two ranks (gloo all-reduce of the NumPy gradients) give the weights, optimizer state and
    metrics of one process splitting each batch over two threads, bit for bit: each rank's
    share is 1/2, a power of two, and a sum of two numbers does not depend on the order."""
    reference, distributed = tmp_path / "one", tmp_path / "two"
    assert main(options(tiny_fashion, "--threads", "2", "--run-dir", reference)) == 0
    result = torchrun(options(tiny_fashion, "--threads", "1", "--run-dir", distributed))
    assert_same_checkpoint(reference, distributed)
    assert without_timings(read_metrics(distributed)) == without_timings(read_metrics(reference))
    config = json.loads((distributed / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == 64
    assert result.stdout.count("finished 1 epoch") == 1   # rank 0 alone speaks


def test_two_nodes_meet_at_a_rendezvous_endpoint(tiny_fashion, tmp_path):
    """Two torchrun processes, one "machine" each (--nnodes 2, c10d rendezvous)."""
    reference, distributed = tmp_path / "one", tmp_path / "two"
    assert main(options(tiny_fashion, "--threads", "2", "--run-dir", reference)) == 0
    launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes"]
    command = torchrun_command(options(tiny_fashion, "--threads", "1", "--run-dir", distributed),
                               launcher=launcher)
    nodes = [subprocess.Popen(command, cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = finish(nodes, timeout=120)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert_same_checkpoint(reference, distributed)


def test_interrupted_on_two_ranks_then_resumed_on_two_ranks(tiny_fashion, tmp_path):
    """Ctrl-C (SIGINT to torchrun's process group): rank 0 saves a checkpoint at the step the
    ranks agree on; torchrun ... --resume continues it to the uninterrupted run, bit for bit."""
    # 96 steps: the Ctrl-C after the 10th lands inside training even when this test's poll of
    # the metrics file lags on a busy machine (with 24 steps it could come after the last one)
    longer = ["--epochs", "3", "--limit-train", "2048"]
    more = ["--threads", "1", *longer]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(options(tiny_fashion, "--threads", "2", *longer, "--run-dir", reference)) == 0
    process = subprocess.Popen(torchrun_command(options(tiny_fashion, *more, "--run-dir",
                                                        interrupted)),
                               cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    metrics = interrupted / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().count('"step"') >= 10):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)   # what the terminal does on Ctrl-C
    output = process.communicate(timeout=120)[0]
    assert "stopped by SIGINT" in output, output
    assert "torchrun ... -m cnnlab train --resume" in output
    # torchrun's agent prints its own SignalException traceback; the ranks print none
    assert "[rank" not in output and "cnnlab: error" not in output, output
    assert json.loads((interrupted / "summary.json").read_text())["finished"] is False

    result = torchrun(["train", "--resume", str(interrupted), "--no-progress"])
    assert "resuming" in result.stdout
    assert_same_checkpoint(reference, interrupted)
    assert step_records(interrupted) == step_records(reference)


def test_a_killed_rank_stops_the_other_with_one_line(tiny_fashion, tmp_path):
    """Without torchrun's agent to clean up: rank 1 is killed (SIGKILL) after the first
    epoch; rank 0 stops within the timeout with one line and the checkpoint stays whole."""
    run = tmp_path / "run"
    port = free_port()
    command = [sys.executable, "-m", "cnnlab",
               *options(tiny_fashion, "--threads", "1", "--epochs", "50", "--run-dir", run)]
    ranks = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True,
                              env=environment(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank,
                                              MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                              CNNLAB_DIST_TIMEOUT=15))
             for rank in (0, 1)]
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.npz").is_file():
        assert ranks[0].poll() is None and time.monotonic() < deadline, ranks[0].communicate()
        time.sleep(0.01)
    ranks[1].kill()
    killed_at = time.monotonic()
    out, err = ranks[0].communicate(timeout=60)
    assert time.monotonic() - killed_at < 30
    assert ranks[0].returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: rank 0 of 2 lost the other "
                                                   "ranks"), err
    assert f"--resume {run}" in lines[0]
    ranks[1].communicate()
    assert checkpoint_arrays(run)   # whole: it loads
    assert json.loads((run / "summary.json").read_text())["finished"] is False


# --------------------------------------------------------------------------- the torch backend


def test_ddp_on_two_ranks_equals_one_process(tiny_fashion, tmp_path):
    """DistributedDataParallel over gloo: the weights of one process with the same global
    batch, to float32 rounding (DDP's bucketed sums add in another order)."""
    reference, distributed = tmp_path / "one", tmp_path / "two"
    assert main(options(tiny_fashion, "--backend", "torch", "--threads", "1",
                        "--run-dir", reference)) == 0
    torchrun(options(tiny_fashion, "--backend", "torch", "--threads", "1",
                     "--run-dir", distributed))
    ours, theirs = checkpoint_arrays(reference), checkpoint_arrays(distributed)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        if key.startswith(("model/", "optim/state/")):
            np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for one, two in zip(step_records(reference), step_records(distributed)):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)


# --------------------------------------------------------------------------- two machines


def _ip(*arguments) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True)


@pytest.fixture
def two_namespaces():
    """Two network namespaces joined by a veth pair, 10.231.0.1 <-> 10.231.0.2 (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    assert shutil.which("ip"), "the test needs iproute2 (apt-get install iproute2)"
    suffix = str(os.getpid())
    names = [f"cnnlab-a-{suffix}", f"cnnlab-b-{suffix}"]
    devices = [f"cla{suffix}"[:15], f"clb{suffix}"[:15]]
    try:
        for name in names:
            _ip("netns", "add", name)
        _ip("link", "add", devices[0], "type", "veth", "peer", "name", devices[1])
        for index, (name, device) in enumerate(zip(names, devices), start=1):
            _ip("link", "set", device, "netns", name)
            _ip("-n", name, "addr", "add", f"10.231.0.{index}/24", "dev", device)
            _ip("-n", name, "link", "set", device, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield list(zip(names, devices, ["10.231.0.1", "10.231.0.2"]))
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def test_two_machines_in_network_namespaces(two_namespaces, tiny_fashion, tmp_path):
    """One torchrun node in each namespace, meeting at the first one's veth address; gloo
    talks over the veth pair (GLOO_SOCKET_IFNAME), as two machines on a network would.
    Bit for bit the one-process run, as on one machine."""
    reference, distributed = tmp_path / "one", tmp_path / "two"
    assert main(options(tiny_fashion, "--threads", "2", "--run-dir", reference)) == 0
    endpoint = f"{two_namespaces[0][2]}:{free_port()}"
    nodes = []
    for rank, (name, device, address) in enumerate(two_namespaces):
        # A namespace's hostname resolves to no veth address: say which node hosts the
        # rendezvous and what each node's own address is, as on machines with such names.
        launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", endpoint, "--rdzv-id", "netns",
                    "--rdzv-conf", f"is_host={'true' if rank == 0 else 'false'}",
                    "--local-addr", address]
        command = ["ip", "netns", "exec", name, *torchrun_command(
            options(tiny_fashion, "--threads", "1", "--run-dir", distributed), launcher=launcher)]
        nodes.append(subprocess.Popen(command, cwd=REPO, env=environment(GLOO_SOCKET_IFNAME=device),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = finish(nodes, timeout=120)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert_same_checkpoint(reference, distributed)
