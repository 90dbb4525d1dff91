"""Running the real entry points in subprocesses: one process, or N CPU ranks on gloo via accelerate launch."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUIET = ["train.progress=false", "train.sample_every=0", "runtime.pg_timeout_s=60", "eval.every=0"]
"""Overrides for runs that test neither progress output, grids nor evaluation."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(nproc: int, *args: str) -> list[str]:
    """``python ARGS`` for one process, else ``accelerate launch`` with ``nproc`` CPU ranks (launch/cpu_debug.yaml).
    ARGS start with ``-m module`` or a script path."""
    if nproc == 1:
        return [sys.executable, *args]
    accelerate = str(Path(sys.executable).parent / "accelerate")
    return [accelerate, "launch", "--config_file", "launch/cpu_debug.yaml", "--num_processes", str(nproc),
            "--main_process_port", str(free_port()), *args]


def run(cmd: list[str], env: dict | None = None, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run in the repo root with one intra-op thread per process (several ranks share 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                       start_new_session=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd[:6]}... exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}")
    return p


def module(mod: str, *args: str, nproc: int = 1, env: dict | None = None, check: bool = True,
           timeout: int = 300) -> subprocess.CompletedProcess:
    return run(launch_cmd(nproc, "-m", mod, *args), env=env, check=check, timeout=timeout)


def train(run_dir, *overrides: str, nproc: int = 1, config: str = "configs/debug.yaml", env=None, check=True,
          timeout: int = 300) -> subprocess.CompletedProcess:
    """``distgan.train`` with QUIET overrides first (the caller's win)."""
    return module("distgan.train", "--config", config, "--run-dir", str(run_dir), *QUIET, *overrides, nproc=nproc,
                  env=env, check=check, timeout=timeout)


def tree_snapshot(d: Path) -> dict:
    """{relative path: sha256} of every file under ``d``: "nothing changed" is equality of two snapshots."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}
