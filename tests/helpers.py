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
    return [
        accelerate,
        "launch",
        "--config_file",
        "launch/cpu_debug.yaml",
        "--num_processes",
        str(nproc),
        "--main_process_port",
        str(free_port()),
        *args,
    ]


def child_env(extra: dict | None = None) -> dict:
    """The environment of a child process: one intra-op thread unless OMP_NUM_THREADS says otherwise
    (several ranks share 2 cores; OMP_NUM_THREADS=2 runs the multi-process tests in another reduction
    order) and TMPDIR in the session directory (torch elastic and W&B leave files in the temp dir)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(extra or {})}
    if os.environ.get("DISTGAN_TEST_TMPDIR"):
        env["TMPDIR"] = os.environ["DISTGAN_TEST_TMPDIR"]
    return env


def run(cmd: list[str], env: dict | None = None, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run in the repo root, in :func:`child_env`."""
    env = child_env(env)
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{cmd[:6]}... exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
        )
    return p


def module(
    mod: str, *args: str, nproc: int = 1, env: dict | None = None, check: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    return run(launch_cmd(nproc, "-m", mod, *args), env=env, check=check, timeout=timeout)


def train_cmd(run_dir, *overrides: str, nproc: int = 1, config: str = "configs/debug.yaml") -> list[str]:
    """The command of ``distgan.train`` with QUIET overrides first (the caller's win), for Popen."""
    return launch_cmd(nproc, "-m", "distgan.train", "--config", config, "--run-dir", str(run_dir), *QUIET, *overrides)


def train(
    run_dir,
    *overrides: str,
    nproc: int = 1,
    config: str = "configs/debug.yaml",
    env=None,
    check=True,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """``distgan.train`` run to its end (see :func:`train_cmd`)."""
    return run(train_cmd(run_dir, *overrides, nproc=nproc, config=config), env=env, check=check, timeout=timeout)


WORKER = str(REPO / "tests" / "integration" / "ddp_worker.py")


def worker_cmd(nproc: int, out, run_dir, overrides=(), probe=(), config: str = "configs/debug.yaml") -> list[str]:
    """tests/integration/ddp_worker.py (distgan.train.main with probes) on ``nproc`` ranks."""
    return launch_cmd(
        nproc, WORKER, "--out", str(out), *probe, "--", "--config", config, "--run-dir", str(run_dir), *overrides
    )


def tree_snapshot(d: Path) -> dict:
    """{relative path: sha256} of every file under ``d``: "nothing changed" is equality of two snapshots."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


class Result:
    """What a finished command left: exit code, stdout, stderr (like subprocess.CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def call(mod: str, *args: str, env: dict | None = None, check: bool = True) -> Result:
    """A CLI entry point's ``main(argv)`` in this process: the same code as ``python -m mod`` without the
    seconds of a new interpreter importing torch. For commands that neither train on several ranks nor
    need signals, resource limits or a clean process (those use :func:`module`)."""
    import contextlib
    import importlib
    import io

    saved = {k: os.environ.get(k) for k in (env or {})}
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = importlib.import_module(mod).main(list(args))
            except SystemExit as e:  # argparse errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    r = Result(code or 0, out.getvalue(), err.getvalue())
    if check and r.returncode != 0:
        raise AssertionError(
            f"{mod} {args[:4]}... returned {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
        )
    return r


def train_here(run_dir, *overrides: str, config: str = "configs/debug.yaml", env=None, check=True) -> Result:
    """``distgan.train`` in this process (see :func:`call`), QUIET overrides first."""
    return call(
        "distgan.train", "--config", config, "--run-dir", str(run_dir), *QUIET, *overrides, env=env, check=check
    )


# A rounding bound for two float32 runs of the same plain-SGD update that sum in different orders (the
# derivation is beside the equivalence tests in tests/integration/test_distributed.py).
U = 2.0**-24
ROUNDING = 2 * 8 * 8192 * U  # 2 L N u: L = 8 nested sums of at most N = 8192 terms


def deviation(a: dict, b: dict, init: dict, moved: dict | None = None) -> float:
    """max over tensors and elements of |a - b| / (2 L N u m + 2 u |p|), m = the tensor's largest update in
    ``b`` since ``init``: below 1 is rounding, above 1 is a real difference. Over several updates, ``moved``
    gives m per tensor: the sum over the updates of each one's largest element (each update is rounded on
    its own, so the bounds add; see tests/unit/test_precision_compile.py)."""
    worst = 0.0
    for k in b:
        m = moved[k] if moved is not None else (b[k] - init[k]).abs().max()
        tol = ROUNDING * m + 2 * U * b[k].abs()
        worst = max(worst, ((a[k] - b[k]).abs() / tol.clamp_min(1e-30)).max().item())
    return worst
