"""Fault injection on real processes: exit codes, SIGKILL + exact resume, SIGTERM, corrupted checkpoints,
NaNs, a full disk, and bad input that must leave everything as it was."""

import gc
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import QUIET, REPO, call, child_env, run, train, train_cmd, train_here, tree_snapshot, worker_cmd

pytestmark = [pytest.mark.timeout(420)]
SMALL = ["model.width=64"]  # the paper's MLP at width 64: checkpoints of 1 MB, not 55


def worker(run_dir, out, *overrides, probe=(), nproc=1, check=True, env=None):
    return run(worker_cmd(nproc, out, run_dir, [*QUIET, *SMALL, *overrides], probe), check=check, env=env)


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished 20-step run with checkpoints at steps 10 and 20 (read-only: tests copy it to change it)."""
    run_dir = tmp_path_factory.mktemp("small") / "run"
    train(run_dir, *SMALL, "train.max_steps=20", "train.ckpt_every=10", "train.log_every=5")
    return run_dir


def kill_tree(proc):
    """SIGKILL the launcher and every worker (torch elastic starts workers in their own sessions)."""
    import psutil

    family = [psutil.Process(proc.pid)]
    family += family[0].children(recursive=True)
    for p in family:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def assert_checkpoints_identical(a: Path, b: Path):
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        sa, sb = load_file(str(a / name)), load_file(str(b / name))
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}:{k} differs"
    ta, tb = (torch.load(x / "state.pt", weights_only=True) for x in (a, b))
    for opt in ("opt_G", "opt_D"):
        assert ta[opt]["state"].keys() == tb[opt]["state"].keys()
        for pid, st in ta[opt]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, tb[opt]["state"][pid][k]), f"{opt}[{pid}].{k} differs"


# ------------------------------------------------------------------------------------ exit codes
@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_exact_resume_after_sigkill(tmp_path, nproc, request):
    """SIGKILL between two checkpoints, then train.resume=auto: the final checkpoint equals an uninterrupted
    run's bit for bit. The killed run holds after step n + 1 (ddp_worker --hold-at, a Callback), so the kill
    lands after checkpoint n and before checkpoint 2n on any machine, however fast: no polling race. The
    uninterrupted run is made with the other finishing runs of its world size (conftest.py's groups), with
    the same overrides as the killed one."""
    from tests.integration.conftest import SIGKILL_AT

    n, name = SIGKILL_AT, f"sigkill_straight_{nproc}"
    group = request.getfixturevalue(f"ranks_{nproc}")
    straight, common = group.dir(name) / "run", group.overrides(name)

    killed, probe = tmp_path / "killed", tmp_path / "probe"
    cmd = worker_cmd(nproc, probe, killed, [*common, "train.log_every=1"], ["--hold-at", str(n + 1)])
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    held = [probe / f"held-rank{r}" for r in range(nproc)]
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not all(h.exists() for h in held):
        time.sleep(0.05)
    exited = proc.poll()
    kill_tree(proc)
    assert exited is None and all(h.exists() for h in held), f"the run did not hold at step {n + 1} (exit {exited})"
    latest = killed / "checkpoints" / "latest"
    assert latest.read_text().strip() == f"step-{n:09d}", "the run was not killed between its two checkpoints"
    assert status(killed)["state"] == "running"  # what a SIGKILL leaves: no process lived to say otherwise

    p = train(killed, *common, "train.resume=auto", nproc=nproc)
    assert f"at step {n}" in p.stdout, p.stdout
    last = f"step-{2 * n:09d}"
    assert_checkpoints_identical(straight / "checkpoints" / last, killed / "checkpoints" / last)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_75(tmp_path):
    run_dir = tmp_path / "r"
    cmd = train_cmd(run_dir, *SMALL, "train.max_steps=100000", "train.ckpt_every=100000", "train.log_every=5")
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    stopped_at = json.loads(
        (
            run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip() / "manifest.json"
        ).read_text()
    )["step"]
    assert 10 <= stopped_at < 100000 and stopped_at % 5 == 0
    assert f"stopped on signal SIGTERM at step {stopped_at}" in out
    assert status(run_dir) | {"pid": 0, "time": ""} == {
        "state": "stopped",
        "step": stopped_at,
        "exit_code": 75,
        "pid": 0,
        "time": "",
    }
    p = train(run_dir, *SMALL, f"train.max_steps={stopped_at + 5}", "train.resume=auto", "train.ckpt_every=1000")
    assert f"at step {stopped_at}" in p.stdout
    assert status(run_dir)["state"] == "finished" and status(run_dir)["exit_code"] == 0


@pytest.mark.slow
def test_diverged_run_exits_3_from_the_real_entry_point(tmp_path):
    """optim.lr=1e30: the first update throws the weights to ~1e30, the next forward overflows."""
    p = train(
        tmp_path / "r",
        *SMALL,
        "optim.lr=1e30",
        "train.nonfinite=stop",
        "train.log_every=2",
        "train.max_steps=10",
        check=False,
    )
    assert p.returncode == 3, p.stderr[-2000:]
    assert "distgan: Diverged: non-finite gradients by step 2" in p.stderr and "Traceback" not in p.stderr
    assert status(tmp_path / "r")["state"] == "diverged" and status(tmp_path / "r")["exit_code"] == 3
    assert not (tmp_path / "r" / "checkpoints").exists(), "a checkpoint was written from a diverged state"


def test_main_frees_the_trainer_before_it_returns(tmp_path, monkeypatch):
    """The trainer sits in reference cycles; main collects it (and the DDP reducers holding the process group)
    before returning, on a finished run and on an error exit, so no rank's group meets interpreter teardown.
    The collector is off during each run: without main's own collection the trainer would still be alive."""
    from distgan.trainer import Trainer

    built = []
    train_fn = Trainer.train

    def train_and_record(self):
        built.append(weakref.ref(self))
        return train_fn(self)

    monkeypatch.setattr(Trainer, "train", train_and_record)
    runs = [(0, ["train.max_steps=2"]), (3, ["optim.lr=1e30", "train.nonfinite=stop", "train.max_steps=10"])]
    for n, (code, overrides) in enumerate(runs):
        gc.disable()
        try:
            p = train_here(tmp_path / f"r{n}", *SMALL, "train.log_every=2", *overrides, check=False)
        finally:
            gc.enable()
        assert p.returncode == code, p.stderr[-2000:]
        assert len(built) == n + 1 and built[n]() is None, f"run {n}: the trainer outlived main"


@pytest.mark.slow
def test_unexpected_failure_exits_1_and_says_failed(tmp_path):
    p = worker(tmp_path / "r", tmp_path / "o", "train.max_steps=10", probe=["--raise-at", "3"], check=False)
    assert p.returncode == 1 and "RuntimeError: injected failure after step 3" in p.stderr
    assert status(tmp_path / "r") | {"pid": 0, "time": ""} == {
        "state": "failed",
        "step": 3,
        "exit_code": 1,
        "pid": 0,
        "time": "",
    }


@pytest.mark.slow
def test_codes_under_accelerate_launch_collapse_to_1_status_json_keeps_them(tmp_path):
    """What the README promises for multi-process launches: the launcher exits 1 for every failure, the
    message is printed once, and RUN/status.json holds the state and distgan's own code."""
    p = train(
        tmp_path / "d",
        *SMALL,
        "optim.lr=1e30",
        "train.nonfinite=stop",
        "train.log_every=2",
        "train.max_steps=10",
        nproc=2,
        check=False,
    )
    assert p.returncode == 1
    assert p.stderr.count("distgan: Diverged: non-finite gradients by step 2") == 1
    assert status(tmp_path / "d")["state"] == "diverged" and status(tmp_path / "d")["exit_code"] == 3
    bad = train(tmp_path / "b", "train.max_steps=many", nproc=2, check=False)
    assert bad.returncode == 1 and bad.stderr.count("train.max_steps='many' must be an integer") == 1
    assert not (tmp_path / "b").exists()
    # a GPU-only option on CPU ranks: refused on every rank once the process group exists, said once
    sbn = train(tmp_path / "s", "model.sync_batchnorm=true", nproc=2, check=False)
    assert sbn.returncode == 1 and sbn.stderr.count("model.sync_batchnorm=true needs CUDA devices") == 1, sbn.stderr
    # accelerate's one-process launcher (launch/single_gpu.yaml, which runs on the CPU where there is no GPU)
    # turns 2 into 1 as well: why ./launch/train.sh runs one GPU as a plain process
    one = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/single_gpu.yaml"]
    p = run([*one, *train_cmd(tmp_path / "c", "train.max_steps=many")[1:]], check=False)
    assert p.returncode == 1 and "train.max_steps='many' must be an integer" in p.stderr
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------ damage and NaNs
def test_corrupt_checkpoint_auto_falls_back_explicit_fails(small_run, copy_run, tmp_path):
    run_dir = copy_run(small_run)
    bad = run_dir / "checkpoints" / "step-000000020"
    data = bytearray((bad / "G.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "G.safetensors").write_bytes(bytes(data))
    p = train_here(run_dir, *SMALL, f"train.resume={bad}", "train.max_steps=30", check=False)
    assert p.returncode == 2
    assert str(bad / "G.safetensors") in p.stderr and "sha256" in p.stderr
    p = train_here(run_dir, *SMALL, "train.resume=auto", "train.max_steps=25")
    assert "skipping bad checkpoint" in p.stdout and "step-000000010 at step 10" in p.stdout

    trunc = copy_run(small_run) / "checkpoints" / "step-000000020" / "D.safetensors"
    trunc.write_bytes(trunc.read_bytes()[:100])
    p = call("distgan.sample", "--checkpoint", str(trunc.parent), "--out", str(tmp_path / "x.npz"), check=False)
    assert p.returncode == 2 and "truncated" in p.stderr and not (tmp_path / "x.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nan_in_d_loss(tmp_path, policy):
    run_dir = tmp_path / "r"
    p = worker(
        run_dir,
        tmp_path / "o",
        "train.max_steps=12",
        "train.ckpt_every=5",
        "train.log_every=4",
        f"train.nonfinite={policy}",
        probe=["--nan-steps", "6"],
        check=False,
    )
    if policy == "skip":
        assert p.returncode == 0, p.stderr[-2000:]
        out = torch.load(tmp_path / "o" / "rank0.pt", weights_only=True)
        # the skipped update left D, its Adam moments and its step count bitwise as they were
        before, after = out["snapshots"][6], out["snapshots"][7]
        for k, v in before["D"].items():
            assert torch.equal(v, after["D"][k]), k
        assert before["opt_D"]["state"].keys() == after["opt_D"]["state"].keys()
        for pid, st in before["opt_D"]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, after["opt_D"]["state"][pid][k]), f"opt_D[{pid}].{k}"
        assert int(before["opt_D"]["state"][0]["step"]) == 6
        # ... while the step before it and the one after it did update D
        assert any(not torch.equal(v, out["D"][k]) for k, v in after["D"].items())
        rows = [r for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "skipped/D" in (r := json.loads(x))]
        assert rows[-1]["skipped/D"] == 1 and rows[-1]["skipped/G"] == 0
        assert (run_dir / "checkpoints" / "step-000000012").exists()
    else:
        assert p.returncode == 3, p.stderr[-2000:]
        assert "non-finite gradients by step 8" in p.stderr and "step-000000005" in p.stderr
        assert [c.name for c in sorted((run_dir / "checkpoints").glob("step-*"))] == ["step-000000005"]


@pytest.mark.slow
def test_skip_streak_stops_the_run(tmp_path):
    p = worker(
        tmp_path / "r",
        tmp_path / "o",
        "train.max_steps=12",
        "train.log_every=4",
        "train.max_skip_streak=3",
        probe=["--nan-steps", "2,3,4,5,6"],
        check=False,
    )
    assert p.returncode == 3, p.stderr[-2000:]
    assert "stopping: 5 consecutive steps with skipped updates (train.max_skip_streak=3)" in p.stderr


def train_with_file_size_limit(run_dir, limit: int, *overrides) -> subprocess.CompletedProcess:
    """Resume ``run_dir`` under RLIMIT_FSIZE = ``limit`` bytes: a stand-in for a full disk (a write past the
    limit fails with EFBIG after writing what fits, as ENOSPC does)."""

    def limit_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = train_cmd(run_dir, *SMALL, "train.resume=auto", *overrides)
    return subprocess.run(
        cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit_size
    )


@pytest.mark.slow
def test_full_disk_keeps_the_previous_checkpoint(small_run, copy_run):
    """A file-size limit below one checkpoint file: the checkpoint write fails."""
    run_dir = copy_run(small_run)
    ckpts = run_dir / "checkpoints"
    before = {p.name: tree_snapshot(p) for p in ckpts.iterdir() if p.is_dir()}
    # G.safetensors at width 64 is about 280 kB; metrics and status lines are far below
    p = train_with_file_size_limit(run_dir, 200_000, "train.max_steps=30", "train.ckpt_every=10")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "writing checkpoint step-000000030" in p.stderr and "File too large" in p.stderr
    assert "checkpoints/latest still names step-000000020" in p.stderr and "Traceback" not in p.stderr
    assert (ckpts / "latest").read_text().strip() == "step-000000020"
    assert {p.name: tree_snapshot(p) for p in ckpts.iterdir() if p.is_dir()} == before
    assert not list(ckpts.glob(".tmp-*")) and not list(run_dir.glob(".*.tmp-*"))
    assert status(run_dir)["state"] == "failed" and status(run_dir)["exit_code"] == 2


@pytest.mark.slow
def test_full_disk_while_logging_exits_2_and_keeps_whole_lines(small_run, copy_run):
    """The limit falls inside metrics.jsonl's growth (the files written at start stay below it): the run
    stops with exit 2 and one message, metrics.jsonl keeps whole lines, the checkpoints are untouched."""
    run_dir = copy_run(small_run)
    ckpts = run_dir / "checkpoints"
    before = {p.name: tree_snapshot(p) for p in ckpts.iterdir() if p.is_dir()}
    limit = max(f.stat().st_size for f in run_dir.iterdir() if f.is_file()) + 2000
    p = train_with_file_size_limit(run_dir, limit, "train.max_steps=200", "train.log_every=1")
    assert p.returncode == 2, p.stderr[-2000:]
    assert "writing the run dir failed at step" in p.stderr and "File too large" in p.stderr, p.stderr[-2000:]
    assert "checkpoints/latest names step-000000020" in p.stderr and "Traceback" not in p.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]  # every line whole
    assert 20 < steps[-1] < 200 and (run_dir / "metrics.jsonl").stat().st_size <= limit
    assert {p.name: tree_snapshot(p) for p in ckpts.iterdir() if p.is_dir()} == before
    assert status(run_dir)["state"] == "failed" and status(run_dir)["exit_code"] == 2


# ------------------------------------------------------------------------------------ bad input
def _unwritable(tmp_path: Path) -> Path:
    """A directory path that cannot be created: a read-only directory, or (as root, who ignores modes) sysfs."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro / "run"
    return Path("/sys/distgan-test-run")


def _truncated_gz(tmp_path: Path, data_dir: str) -> dict:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    src = Path(data_dir) / "MNIST" / "raw"
    for f in src.iterdir():
        if f.name.startswith(("t10k", "train-labels")):
            (raw / f.name).symlink_to(f)
    blob = gzip.compress((src / "train-images-idx3-ubyte").read_bytes()[:200_000])
    (raw / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    return {"DISTGAN_DATA_DIR": str(tmp_path / "mnist")}


BAD_INPUT = [
    # id, overrides, message
    ("unknown-key", ["train.bogus=1"], "unknown config key train.bogus"),
    ("type", ["train.max_steps=many"], "train.max_steps='many' must be an integer"),
    ("nan", ["optim.lr=nan"], "optim.lr=nan must be a finite number"),
    ("inf", ["ema.halflife_images=inf"], "ema.halflife_images=inf must be a finite number"),
    (
        "too-small-batch",
        ["train.batch_size=1", "train.grad_accum=2"],
        "train.batch_size=1 (global) is smaller than world size 1 x train.grad_accum 2",
    ),
    ("batch", ["train.batch_size=50"], "train.batch_size 100 -> 50"),
    ("k", ["train.d_steps=2"], "train.d_steps 1 -> 2"),
    ("seed", ["train.seed=1"], "train.seed 0 -> 1"),
    ("optimizer", ["optim.name=sgd"], "optim.name 'adam' -> 'sgd'"),
    (
        "model",
        ["model.width=32"],
        "model.width 64 -> 32. Resume with the checkpoint's values, or continue on purpose "
        "with train.allow_changed=model.width",
    ),
    (
        "shape",
        ["model.width=32", "train.allow_changed=model.width"],
        "tensor 'net.0.weight' has shape [64, 100] in the checkpoint but [32, 100]",
    ),
    (
        "class",
        ["model.discriminator=dcgan28", "train.allow_changed=model.discriminator"],
        "does not fit the model of this config: missing ['fc.0.bias'",
    ),
    (
        "data",
        ["data.dataset=webdataset", "data.urls=/nonexistent/s-{0..1}.tar"],
        "data.dataset 'mnist' -> 'webdataset'",
    ),
    ("already", ["train.resume=no"], "already holds a run"),
    ("no-path", ["train.resume=/nonexistent/run"], "checkpoint path /nonexistent/run does not exist"),
]


@pytest.mark.parametrize("overrides, message", [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT])
def test_bad_input_clear_error_nothing_changed(small_run, overrides, message):
    before = tree_snapshot(small_run)
    p = train_here(small_run, *SMALL, "train.resume=auto", *overrides, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr
    assert p.stderr.count("distgan: ") == 1
    assert tree_snapshot(small_run) == before


def test_allowed_optimizer_change_starts_it_fresh(small_run, copy_run):
    """Adam's state cannot be loaded into SGD: an allowed change of optim.name trains on with a fresh SGD."""
    run_dir = copy_run(small_run)
    p = train_here(
        run_dir, *SMALL, "train.resume=auto", "train.max_steps=25", "optim.name=sgd", "train.allow_changed=optim.name"
    )
    assert "accepted on resume (train.allow_changed): optim.name 'adam' -> 'sgd'" in p.stdout
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    state = torch.load(run_dir / "checkpoints" / "step-000000025" / "state.pt", weights_only=True)
    for opt in ("opt_G", "opt_D"):
        assert state[opt]["param_groups"][0]["momentum"] > 0 and "betas" not in state[opt]["param_groups"][0]
        assert all("exp_avg" not in s for s in state[opt]["state"].values())


@pytest.mark.parametrize("damage", ["latest-missing", "manifest-json", "manifest-explicit"])
def test_damaged_run_dir_is_refused(small_run, copy_run, damage):
    run_dir = copy_run(small_run)
    ckpts = run_dir / "checkpoints"
    resume = "auto"
    if damage == "latest-missing":
        shutil.rmtree(ckpts / "step-000000020")
        message = "latest names 'step-000000020', which is not a checkpoint directory (removed?); the newest one"
    else:
        (ckpts / "step-000000020" / "manifest.json").write_text("{not json")
        if damage == "manifest-explicit":
            resume, message = str(ckpts / "step-000000020"), "manifest.json is not valid JSON"
        else:  # auto falls back to the previous good checkpoint, saying so
            message = None
    before = tree_snapshot(run_dir)
    p = train_here(run_dir, *SMALL, f"train.resume={resume}", "train.max_steps=25", check=False)
    if message is None:
        assert p.returncode == 0 and "skipping bad checkpoint" in p.stdout and "at step 10" in p.stdout
        return
    assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
    assert tree_snapshot(run_dir) == before


@pytest.mark.parametrize("case", ["run-dir-is-a-file", "run-dir-unwritable", "truncated-gz", "missing-data"])
def test_bad_environment_clear_error_nothing_written(tmp_path, data_dir, case):
    env, run_dir = {}, tmp_path / "r"
    if case == "run-dir-is-a-file":
        run_dir.write_text("not a directory")
        message = "is a file, not a directory"
    elif case == "run-dir-unwritable":
        run_dir = _unwritable(tmp_path)
        message = "cannot be written"
    elif case == "truncated-gz":
        env = _truncated_gz(tmp_path, data_dir)
        message = "train-images-idx3-ubyte.gz is truncated or not valid gzip"
    else:
        env = {"DISTGAN_DATA_DIR": str(tmp_path / "empty")}
        message = "train-images-idx3-ubyte"
    p = train_here(run_dir, *SMALL, "data.download=false", env=env, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr and p.stderr.count("distgan: ") == 1
    if case == "run-dir-is-a-file":
        assert run_dir.read_text() == "not a directory"
    else:
        assert not run_dir.exists()
