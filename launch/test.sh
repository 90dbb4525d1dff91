#!/usr/bin/env bash
# Set up (first time), lint, and run the test suite. MNIST comes from $DISTGAN_DATA_DIR (default ../shared/data).
#   ./launch/test.sh [pytest args]          e.g. ./launch/test.sh -m "not slow"   (about 50 seconds)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/setup.sh"
cd "$ROOT"
export DISTGAN_DATA_DIR="${DISTGAN_DATA_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}"
export WANDB_MODE="${WANDB_MODE:-offline}"
ruff check distgan tests
ruff format --check distgan tests
exec python -m pytest -q -p no:cacheprovider "$@" tests
