#!/usr/bin/env bash
# Set up (first time) and train, on whatever hardware is here: all local GPUs through accelerate
# launch, or the CPU. Running it again resumes the run dir (train.resume=auto).
#   ./launch/train.sh [CONFIG] [RUN_DIR] [section.key=value ...]
# defaults: configs/mnist_paper.yaml runs/paper; the run dir is resumed if it holds a run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/setup.sh"
cd "$ROOT"
# MNIST: $DISTGAN_DATA_DIR, else a shared copy beside the checkout (../shared/data), else data/ (downloaded)
if [ -z "${DISTGAN_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data/MNIST/raw" ]; then
  export DISTGAN_DATA_DIR="$(cd "$ROOT/../shared/data" && pwd)"
fi
CONFIG="${1:-configs/mnist_paper.yaml}"; [ $# -gt 0 ] && shift
RUN_DIR="${1:-runs/paper}"; [ $# -gt 0 ] && shift
NGPU=0  # the GPUs this process may use (CUDA_VISIBLE_DEVICES counts; nvidia-smi -L would not)
if command -v nvidia-smi >/dev/null 2>&1; then
  NGPU=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
fi
if [ "$NGPU" -gt 1 ]; then
  exec accelerate launch --config_file launch/multi_gpu.yaml --num_processes "$NGPU" \
    -m distgan.train --config "$CONFIG" --run-dir "$RUN_DIR" train.resume=auto "$@"
else
  # one GPU or the CPU: one plain process, whose exit code (0, 1, 2, 3, 75) is distgan's own; accelerate
  # launch would turn every failure into 1
  exec python -m distgan.train --config "$CONFIG" --run-dir "$RUN_DIR" train.resume=auto "$@"
fi
