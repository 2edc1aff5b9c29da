"""`cnnlab train` on a machine other processes use: default threads against --threads 1.

Issue 13: with one busy process on a 2-core machine, the default threads must never be slower
than one thread, and at most 2x slower than on the idle machine. This runs the same short
training (the mlp, one epoch of 20,000 Fashion-MNIST images by default) in rounds that take
turns: with nothing else started, and with ``--busy`` busy-loop processes, each with the
default threads and with ``--threads 1``; it prints the median train time of each, with min
and max, and the machine's load.

    python benchmarks/shared_machine.py --data-dir /usr/share/datasets --rounds 3

``--python`` runs another checkout's interpreter (a before/after comparison), from its folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train_seconds(python: str, cwd: str, args: list[str]) -> float:
    """The run's training time from its summary.json (the printed one is rounded to 0.1 s)."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        completed = subprocess.run(
            [python, "-m", "cnnlab", "train", *args, "--run-dir", str(run),
             "--no-progress", "--no-report"], cwd=cwd, capture_output=True, text=True)
        summary = run / "summary.json"
        if completed.returncode != 0 or not summary.is_file():
            raise SystemExit(f"cnnlab train failed: {completed.stderr.strip()[-500:]}")
        return float(json.loads(summary.read_text(encoding="utf-8"))["train_seconds"])


def busy_processes(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes in the busy runs")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--cwd", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    base = ["--model", args.model, "--epochs", "1", "--limit-train", str(args.limit_train),
            "--limit-test", "1000", "--dataset", "fashion-mnist", "--data-dir", args.data_dir]
    cases = {"as found, default threads": (0, []), "as found, --threads 1": (0, ["--threads", "1"]),
             f"{args.busy} busy, default threads": (args.busy, []),
             f"{args.busy} busy, --threads 1": (args.busy, ["--threads", "1"])}
    times: dict[str, list[float]] = {name: [] for name in cases}
    loads = []
    for _ in range(args.rounds):
        for name, (busy, extra) in cases.items():
            processes = busy_processes(busy)
            try:
                times[name].append(train_seconds(args.python, args.cwd, base + extra))
            finally:
                for process in processes:
                    process.kill()
                    process.wait()
            loads.append(os.getloadavg()[0])
    print(f"cnnlab train {' '.join(base)}  ({os.cpu_count()} cores, load average during the runs "
          f"{min(loads):.1f}-{max(loads):.1f})")
    for name, samples in times.items():
        print(f"  {name:32s} {statistics.median(samples):7.3f} s  [{min(samples):.3f}-{max(samples):.3f}]")
    busy_default = statistics.median(times[f"{args.busy} busy, default threads"])
    busy_one = statistics.median(times[f"{args.busy} busy, --threads 1"])
    idle_default = statistics.median(times["as found, default threads"])
    print(f"  busy default / busy --threads 1: {busy_default / busy_one:.2f}x (target <= 1)")
    print(f"  busy default / as found default: {busy_default / idle_default:.2f}x (target <= 2)")


if __name__ == "__main__":
    main()
