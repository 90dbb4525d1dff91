import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(600)
def test_bench_quick_prints_its_table():
    p = subprocess.run([sys.executable, "-m", "distgan.bench", "--config", "configs/debug.yaml", "--quick",
                        "--compile", "off", "model.width=64"], cwd=REPO, capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert any(l.startswith("textbook eager") for l in lines) and any(l.startswith("trainer  eager") for l in lines)
    assert "MFLOP/img" in p.stdout and "GFLOP/s on this device" in p.stdout
