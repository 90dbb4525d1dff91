"""Fault injection on real processes: SIGKILL + exact resume, SIGTERM, corrupted checkpoints, NaNs, bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, accelerate_bin, free_port

pytestmark = pytest.mark.timeout(420)
WORKER = Path(__file__).with_name("ddp_worker.py")
QUIET = ["train.progress=false", "wandb.mode=disabled", "train.sample_every=0", "runtime.pg_timeout_s=60"]


def train_cmd(nproc, run_dir, overrides):
    args = ["-m", "distgan.train", "--config", "configs/debug.yaml", "--run-dir", str(run_dir), *QUIET, *overrides]
    if nproc == 1:
        return [sys.executable, *args]
    return [accelerate_bin(), "launch", "--config_file", "launch/cpu_debug.yaml", "--num_processes", str(nproc),
            "--main_process_port", str(free_port()), *args]


def run(cmd, env=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def kill_tree(proc):
    """SIGKILL the launcher and every worker (torch elastic starts workers in their own sessions)."""
    import psutil

    family = [psutil.Process(proc.pid)]
    family += family[0].children(recursive=True)
    for p in family:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def tree_snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def assert_checkpoints_identical(a: Path, b: Path):
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        sa, sb = load_file(str(a / name)), load_file(str(b / name))
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}:{k} differs"
    ta, tb = (torch.load(x / "state.pt", weights_only=True) for x in (a, b))
    for opt in ("opt_G", "opt_D"):
        for pid, st in ta[opt]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, tb[opt]["state"][pid][k]), f"{opt}[{pid}].{k} differs"


@pytest.mark.parametrize("nproc", [1, 2])
def test_exact_resume_after_sigkill(tmp_path, nproc):
    n = 8
    common = [f"train.max_steps={2 * n}", f"train.ckpt_every={n}", "train.keep_last=5"]
    ok(run(train_cmd(nproc, tmp_path / "straight", common)))

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train_cmd(nproc, killed, common), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() == f"step-{n:09d}":
            break
        time.sleep(0.01)
    kill_tree(proc)
    assert latest.read_text().strip() == f"step-{n:09d}", "the run was not killed between its two checkpoints"

    p = ok(run(train_cmd(nproc, killed, [*common, "train.resume=auto"])))
    assert f"at step {n}" in p.stdout, p.stdout
    last = f"step-{2 * n:09d}"
    assert_checkpoints_identical(tmp_path / "straight" / "checkpoints" / last, killed / "checkpoints" / last)


def test_sigterm_checkpoints_and_exits_75(tmp_path):
    run_dir = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train_cmd(1, run_dir, ["train.max_steps=400", "train.ckpt_every=1000", "train.log_every=5",
                                                   "train.stop_check_every=5"]),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    stopped_at = json.loads((run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
                             / "manifest.json").read_text())["step"]
    assert 10 <= stopped_at < 400 and stopped_at % 5 == 0
    assert f"stopped on signal SIGTERM at step {stopped_at}" in out
    p = ok(run(train_cmd(1, run_dir, ["train.max_steps=" + str(stopped_at + 5), "train.resume=auto",
                                      "train.ckpt_every=1000"])))
    assert f"at step {stopped_at}" in p.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("t") / "run"
    ok(run(train_cmd(1, run_dir, [])))  # checkpoints at 20 and 40
    return run_dir


def _flip(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_checkpoint_auto_falls_back_explicit_fails(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    bad = run_dir / "checkpoints" / "step-000000040"
    _flip(bad / "G.safetensors")
    p = run(train_cmd(1, run_dir, [f"train.resume={bad}", "train.max_steps=50"]))
    assert p.returncode == 2
    assert str(bad / "G.safetensors") in p.stderr and "sha256" in p.stderr
    p = ok(run(train_cmd(1, run_dir, ["train.resume=auto", "train.max_steps=45"])))
    assert "skipping bad checkpoint" in p.stdout and "step-000000020 at step 20" in p.stdout

    trunc = tmp_path / "run2"
    shutil.copytree(trained, trunc)
    g = trunc / "checkpoints" / "step-000000040" / "D.safetensors"
    g.write_bytes(g.read_bytes()[:100])
    p = run([sys.executable, "-m", "distgan.sample", "--checkpoint", str(g.parent), "--out", str(tmp_path / "x.npz")])
    assert p.returncode == 2 and "truncated" in p.stderr and not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nan_in_d_loss(tmp_path, policy):
    run_dir = tmp_path / "r"
    cmd = [sys.executable, str(WORKER), "--run-dir", str(run_dir), "--out", str(tmp_path / "o"), "--nan-steps", "6",
           *QUIET, "train.max_steps=12", "train.ckpt_every=5", "train.log_every=4", f"train.nonfinite={policy}"]
    p = run(cmd)
    if policy == "skip":
        ok(p)
        out = torch.load(tmp_path / "o" / "rank0.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for net in ("G", "D", "G_ema") for v in out[net].values())
        rows = [r for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "skipped/D" in (r := json.loads(x))]
        assert rows[-1]["skipped/D"] == 1 and rows[-1]["skipped/G"] == 0
        assert (run_dir / "checkpoints" / "step-000000012").exists()
    else:
        assert p.returncode == 3, p.stderr[-2000:]
        assert "non-finite gradients by step 8" in p.stderr and "step-000000005" in p.stderr
        assert [c.name for c in sorted((run_dir / "checkpoints").glob("step-*"))] == ["step-000000005"]


def test_skip_streak_stops_the_run(tmp_path):
    cmd = [sys.executable, str(WORKER), "--run-dir", str(tmp_path / "r"), "--out", str(tmp_path / "o"),
           "--nan-steps", "2,3,4,5,6", *QUIET, "train.max_steps=12", "train.log_every=4", "train.max_skip_streak=3"]
    p = run(cmd)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "stopping: 5 consecutive steps with skipped updates (train.max_skip_streak=3)" in p.stderr


@pytest.mark.parametrize("overrides, env, message", [
    (["train.bogus=1"], {}, "unknown config key train.bogus"),
    (["train.max_steps=many"], {}, "train.max_steps='many' must be an integer"),
    (["train.batch_size=101", "train.grad_accum=2"], {}, "must be divisible by world size 1 x train.grad_accum 2"),
    (["data.download=false"], {"DISTGAN_DATA_DIR": "/nonexistent/mnist"}, "DISTGAN_DATA_DIR"),
    (["model.width=64"], {}, "tensor 'net.0.weight' has shape [1200, 100] in the checkpoint but [64, 100]"),
    (["train.max_steps=60"], {}, "already holds a run"),
])
def test_bad_input_clear_error_nothing_changed(trained, overrides, env, message):
    before = tree_snapshot(trained)
    resume = [] if "already holds a run" in message else ["train.resume=auto"]
    p = run(train_cmd(1, trained, [*resume, *overrides]), env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr
    assert "Traceback" not in p.stderr
    assert tree_snapshot(trained) == before
