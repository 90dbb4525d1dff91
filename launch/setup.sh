#!/usr/bin/env bash
# Create .venv and install distgan (editable, with the dev extra) unless that is already done for this
# pyproject.toml. Sourced by launch/train.sh and launch/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${DISTGAN_PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="$ROOT/.venv"
STAMP="$VENV/.distgan-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing distgan into $VENV (torch is large: a few minutes the first time)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" >&2
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
