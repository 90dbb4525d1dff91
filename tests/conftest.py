"""Shared set-up. The suite is hermetic: every cache a test run fills (distgan's reference features, W&B,
torch.compile, matplotlib) goes to one session directory that is removed at the end, and W&B is disabled
except in the tests about W&B, which turn offline mode on for themselves."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("DISTGAN_DATA_DIR", str(REPO.parent / "shared" / "data"))
# absolute: a relative one (DISTGAN_DATA_DIR=../shared/data) would name another folder for a child process
# started elsewhere and for the symlinks tests make to the MNIST files
os.environ["DISTGAN_DATA_DIR"] = str(Path(os.environ["DISTGAN_DATA_DIR"]).resolve())
# Not setdefault: CI exports WANDB_MODE=offline for the W&B tests, and every other test must not start a run.
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
_SESSION = Path(tempfile.mkdtemp(prefix="distgan-tests-"))
for var, sub in (
    ("DISTGAN_CACHE_DIR", "distgan"),
    ("WANDB_DIR", "wandb"),
    ("WANDB_CACHE_DIR", "wandb-cache"),
    ("WANDB_CONFIG_DIR", "wandb-config"),
    ("WANDB_DATA_DIR", "wandb-data"),
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ("TRITON_CACHE_DIR", "triton"),
    ("MPLCONFIGDIR", "matplotlib"),
    ("XDG_CACHE_HOME", "xdg-cache"),
    ("DISTGAN_TEST_TMPDIR", "tmp"),
):  # TMPDIR of child processes (torchelastic, wandb leave files)
    os.environ[var] = str(_SESSION / sub)
(_SESSION / "tmp").mkdir()


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> str:
    d = os.environ["DISTGAN_DATA_DIR"]
    if not (Path(d) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found under DISTGAN_DATA_DIR={d}; point it at the folder holding MNIST/raw")
    return d


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory, data_dir):
    """configs/debug.yaml as a user runs it (W&B offline, in-training eval, 40 steps), trained once per
    session. Tests that change a run copy it first (``copy_run``)."""
    from tests.helpers import module

    run_dir = tmp_path_factory.mktemp("debug") / "dbg"
    p = module(
        "distgan.train",
        "--config",
        "configs/debug.yaml",
        "--run-dir",
        str(run_dir),
        "train.progress=false",
        env={"WANDB_MODE": "offline"},
    )
    return run_dir, p


@pytest.fixture
def copy_run(tmp_path):
    made = []

    def copy(run_dir: Path) -> Path:
        made.append(run_dir)
        dst = tmp_path / f"copy{len(made)}" / run_dir.name
        shutil.copytree(run_dir, dst)
        return dst

    return copy
