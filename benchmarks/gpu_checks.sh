#!/usr/bin/env bash
# The GPU checks, in one go, for a machine with one or more CUDA GPUs (README, "Tests";
# BENCHMARKS.md, EVA-CLIP features and training): pytest -m gpu (NCCL + bf16 DDP, GPU
# features against CPU fp32), the features benchmark for EVA02-B-16 and EVA02-L-14 (bf16,
# random weights) on one shared corpus, and the training benchmark.
#
#   bash benchmarks/gpu_checks.sh [LOG_DIR]     # default LOG_DIR: runs/gpu-checks
#
# Each check has its own time limit and a failure does not stop the next one: the logs
# (one per check, plus summary.txt) say what passed. Python is $PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-runs/gpu-checks}
PY=${PYTHON:-python3}
WORK=${GPU_CHECKS_WORK:-$(mktemp -d)}
IMAGES=${GPU_CHECKS_IMAGES:-20000}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

check() {   # check NAME SECONDS COMMAND...: run it under a limit, log it, note the exit code
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$LOGS/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, ray, open_clip, pyarrow; print('torch', torch.__version__, 'ray', ray.__version__,
'open_clip', open_clip.__version__, 'pyarrow', pyarrow.__version__, 'gpus', torch.cuda.device_count())"
} >"$LOGS/machine.txt" 2>&1

check pytest_gpu 180 $PY -m pytest -m gpu -p no:cacheprovider -q tests/test_ddp.py tests/test_features.py
for model in EVA02-B-16 EVA02-L-14; do
  check "features_$model" 120 $PY benchmarks/features.py --model "$model" --precision bf16 \
    --batch-size 256 --images "$IMAGES" --corpus "$WORK/corpus"
done
check train 120 $PY benchmarks/train.py --device cuda --steps 200 --batch-size 64 --workers 8
