import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("DISTGAN_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))
# Tests that are not about W&B run without it; the W&B test turns offline mode on for itself.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def data_dir() -> str:
    d = os.environ["DISTGAN_DATA_DIR"]
    if not (Path(d) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found under DISTGAN_DATA_DIR={d}; point it at the folder holding MNIST/raw")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python() -> str:
    return sys.executable


def accelerate_bin() -> str:
    return str(Path(sys.executable).parent / "accelerate")
