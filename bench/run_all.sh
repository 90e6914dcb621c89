#!/usr/bin/env bash
# All benchmarks in sequence (about 10-15 minutes on 2 cores); results in bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY bench/predict_speed.py
$PY bench/scoring.py --n 4000
$PY bench/scaling.py --base 250
$PY bench/training_input.py --images 2000 --epochs 2
$PY bench/review_overhead.py --n 1000
$PY bench/archive_memory.py --gib 2 --members 100000
