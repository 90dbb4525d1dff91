#!/usr/bin/env bash
# The GPU check: one command, at most 8 minutes on one GPU, no network; prints one report and writes it
# to --out (default runs/gpu_check.txt). Needs torch and accelerate only (accelerate brings safetensors,
# PyYAML and numpy). Without a GPU it runs the same sections on the CPU at tiny sizes and says so (the
# tests run it that way, with wandb, webdataset, einops, torchvision and Pillow hidden).
#
#   ./launch/gpu_check.sh [--out FILE] [--paper-steps N]
#
# On a GPU box without MNIST and without network (as the device machines of this project), prepare the
# data here and carry it: `mkdir -p data/MNIST/raw && gzip -c ../shared/data/MNIST/raw/X > data/MNIST/raw/X.gz`
# for the four files (11 MB), then run `DISTGAN_DATA_DIR=data ./launch/gpu_check.sh --out $OUT/gpu_check.txt`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${DISTGAN_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export DISTGAN_DATA_DIR="${DISTGAN_DATA_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}"
export WANDB_MODE=disabled
exec "$PY" -m distgan.gpu_check "$@"
