#!/usr/bin/env bash
# All CPU benchmarks in sequence (about 45 minutes on 2 cores); tables on stdout, results in bench/results/*.json.
# bench/gpu_check.sh is separate: it needs an NVIDIA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY bench/engines.py
$PY bench/decode_cost.py --n 200
$PY bench/reduced_decode_parity.py --per-collection 100
$PY bench/dicom_job.py --slices 1000 --sizes 512,256
$PY bench/scoring.py --n 20000
$PY bench/review_overhead.py --n 8000 --shares 0.0,0.7
$PY bench/predict_speed.py
$PY bench/dicomweb_throughput.py
$PY bench/dicomweb_memory.py
$PY bench/scaling.py --base 250
$PY bench/training_input.py --images 2000 --epochs 2
$PY bench/archive_memory.py --gib 2 --members 100000
$PY bench/report_memory.py --rows 100000,1000000
$PY bench/incremental_finalise.py --rows 100000,1000000
# Before/after a change (needs a commit to compare with): $PY bench/compare_revisions.py --base <commit>
