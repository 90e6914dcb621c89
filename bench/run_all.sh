#!/usr/bin/env bash
# All CPU benchmarks in sequence (about 30 minutes on 2 cores); tables on stdout, results in bench/results/*.json.
# bench/gpu_check.sh is separate: it needs an NVIDIA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY bench/engines.py
$PY bench/decode_cost.py --n 200
$PY bench/scoring.py --n 20000 --batch-size 256 --chunk-size 256
$PY bench/review_overhead.py --n 4000
$PY bench/predict_speed.py
$PY bench/scaling.py --base 250
$PY bench/training_input.py --images 2000 --epochs 2
$PY bench/archive_memory.py --gib 2 --members 100000
