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
  # pip byte-compiles each installed file in turn; compileall does the same work on every core afterwards
  # (about 25 s -> 13 s on 2 cores for torch's CUDA build). Some packages ship files for other Pythons that do
  # not compile (compileall carries on past them and exits 1, hence || true).
  "$VENV/bin/python" -m pip install -q --no-compile -e "$ROOT[dev]" >&2
  "$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
