import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_bench_quick_prints_its_table():
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "distgan.bench",
            "--config",
            "configs/debug.yaml",
            "--quick",
            "--compile",
            "off",
            "model.width=64",
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert any(x.startswith("textbook eager") for x in lines) and any(x.startswith("trainer  eager") for x in lines)
    assert "MFLOP/img" in p.stdout and "GFLOP/s here" in p.stdout and "launch-bound ceiling" in p.stdout
    trainer = next(line for line in lines if line.startswith("trainer  eager"))
    assert int(trainer.split()[6]) > 50  # kernels per step: counted, not a placeholder


@pytest.mark.timeout(600)
def test_bench_stream_and_data_only_print_their_tables(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(g.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "distgan.data.make_shards",
            "--from",
            str(folder),
            "--out",
            str(tmp_path / "s"),
            "--size",
            "32",
            "--shard-size",
            "10",
            "--no-progress",
        ],
        cwd=REPO,
        env=child_env(),
        check=True,
        timeout=120,
    )
    common = [
        "--config",
        "configs/webdataset_64.yaml",
        "--quick",
        f"data.urls={tmp_path}/s/train-{{000000..000003}}.tar",
        "data.image_size=32",
        "model.width=8",
        "train.batch_size=8",
        "data.workers=1",
        "data.shuffle_buffer=8",
    ]
    p = subprocess.run(
        [sys.executable, "-m", "distgan.bench", "--stream", *common],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "trainer  memory" in p.stdout and "trainer  stream" in p.stdout and "% of the in-memory" in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "distgan.bench", "--data-only", *common],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "workers=0" in p.stdout and "workers=1" in p.stdout
