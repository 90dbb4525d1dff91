#!/usr/bin/env bash
# The GPU check: one command, at most 8 minutes on one GPU, no network; prints one report and writes it
# to --out (default runs/gpu_check.txt). Needs torch, accelerate, safetensors, einops, PyYAML, numpy only.
# Without a GPU it runs the same sections on the CPU at tiny sizes and says so (the tests run it that way).
#
#   ./launch/gpu_check.sh [--out FILE] [--paper-steps N]
#
# On a bare GPU box that has torch and accelerate but not einops, and no MNIST (as the device machines of
# this project), prepare here and carry both: `pip install --no-deps --target .gpu_deps einops` and
# `mkdir -p data/MNIST/raw && gzip -c ../shared/data/MNIST/raw/X > data/MNIST/raw/X.gz` for the four files
# (11 MB), then run `DISTGAN_DATA_DIR=data ./launch/gpu_check.sh --out $OUT/gpu_check.txt` there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${DISTGAN_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
export PYTHONPATH="$ROOT:$ROOT/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
export DISTGAN_DATA_DIR="${DISTGAN_DATA_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}"
export WANDB_MODE=disabled
exec "$PY" -m distgan.gpu_check "$@"
