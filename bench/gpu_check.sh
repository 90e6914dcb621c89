#!/usr/bin/env bash
# GPU readiness check (bench/gpu_check.py): run on a machine with an NVIDIA GPU. Creates .venv with the
# CUDA libraries (tensorflow[and-cuda]) when missing; prints one table, writes bench/results/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: not a GPU machine"; exit 2; }
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'; fi
"$PY" -c "import nvidia.cudnn" 2>/dev/null || "$PY" -m pip install -q "tensorflow[and-cuda]>=2.21,<2.22"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv
"$PY" bench/gpu_check.py
