#!/usr/bin/env bash
# The CUDA checks in one go (under 8 minutes on one GPU): the tests marked `cuda`, then training and decoding
# throughput of the base network. Run from the repository root on a machine with CUDA and PyTorch:
#
#   bash tools/gpu_check.sh [PAIRS.txt]      # PAIRS.txt: real data for the throughput figures (default: demo corpus)
#
# It uses the Python that has PyTorch (PYTHON=..., default python3) with charmt from src/, installs nothing, and
# writes the log and results to ${OUT:-gpu-check}/. Record the figures and the card in benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name())"
  status=0
  timeout 300 "$PYTHON" -m pytest -m cuda -rs -p no:cacheprovider tests/test_cuda.py || status=$?
  timeout 240 "$PYTHON" benchmarks/bench_gpu.py --out "$OUT" ${1:+--data "$1"} || status=$?
  echo "gpu_check: exit status $status"
  exit $status
} 2>&1 | tee "$OUT/gpu_check.log"
