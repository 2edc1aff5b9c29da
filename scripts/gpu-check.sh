#!/usr/bin/env bash
# The GPU checks of the torch backend, in under 5 minutes on one machine with CUDA GPUs:
#   1. one epoch of each named model (mlp, cnn, cnn-bn) on cuda, checkpoints evaluated back on
#      the NumPy engine;
#   2. DistributedDataParallel over every GPU present (torchrun, NCCL), one epoch of cnn;
#   3. cnnlab bench --backend torch --device cuda: cnnlab's loop against a plain PyTorch loop
#      (target: at most 5% overhead at batch 128).
# Usage: scripts/gpu-check.sh [DATA_DIR]   (a folder holding fashion-mnist/; default: cnnlab's
# usual search, which downloads Fashion-MNIST when it is missing and the network allows).
# Run from the repository root with the venv of the README (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATA_OPTION=()
if [ $# -ge 1 ]; then DATA_OPTION=(--data-dir "$1"); fi
OUT=${OUT:-$(mktemp -d)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "devices"
command -v nvidia-smi >/dev/null && nvidia-smi -L
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to PyTorch"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s):",
      ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
PY
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")

for model in mlp cnn cnn-bn; do
  step "one epoch of $model on cuda"
  timeout 90 "$PYTHON" -m cnnlab train --backend torch --device cuda --model "$model" \
    --dataset fashion-mnist "${DATA_OPTION[@]}" --epochs 1 --no-progress --no-report \
    --run-dir "$OUT/$model"
  timeout 60 "$PYTHON" -m cnnlab evaluate "$OUT/$model" "${DATA_OPTION[@]}" | tail -n 3
done

step "DDP over $GPUS GPU(s): torchrun --nproc-per-node $GPUS"
timeout 120 "$PYTHON" -m torch.distributed.run --nproc-per-node "$GPUS" --master-addr 127.0.0.1 \
  --master-port 29531 -m cnnlab train --backend torch --device cuda --model cnn \
  --dataset fashion-mnist "${DATA_OPTION[@]}" --epochs 1 --no-progress --no-report \
  --run-dir "$OUT/ddp"
grep -h '"world_size"' "$OUT/ddp/config.json"

step "cnnlab bench --backend torch --device cuda"
timeout 120 "$PYTHON" -m cnnlab bench --backend torch --device cuda "${DATA_OPTION[@]}" \
  --json "$OUT/bench-torch-cuda.json"
printf '\nruns and figures in %s\n' "$OUT"
