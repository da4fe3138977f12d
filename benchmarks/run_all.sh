#!/usr/bin/env bash
# Every benchmark, one after the other, then benchmarks/results/summary.md (about 15-25 minutes on 2 cores).
#   bash benchmarks/run_all.sh          # PYTHON=... to choose the interpreter, OUT=... the results folder
# The Keras reference needs the separate environment .venv-bench (see benchmarks/RESULTS.md to set it up);
# without Keras the scripts run charmt alone.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv-bench/bin/python ]; then PYTHON=.venv-bench/bin/python; else PYTHON=.venv/bin/python; fi
fi
OUT=${OUT:-benchmarks/results}
REFERENCE=()
if ! "$PYTHON" -c "import keras, tensorflow" 2>/dev/null; then
  echo "Keras/TensorFlow not importable with $PYTHON: running charmt alone" >&2
  REFERENCE=(--no-reference)
fi
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2
"$PYTHON" benchmarks/bench_train.py --out "$OUT" "${REFERENCE[@]}" 2>&1 | tee "$OUT/train.log"
"$PYTHON" benchmarks/bench_translate.py --out "$OUT" "${REFERENCE[@]}" 2>&1 | tee "$OUT/translate.log"
"$PYTHON" benchmarks/bench_scale.py --out "$OUT" 2>&1 | tee "$OUT/scale.log"
"$PYTHON" benchmarks/bench_speedups.py --out "$OUT" 2>&1 | tee "$OUT/speedups.log"
"$PYTHON" benchmarks/report.py --out "$OUT"
