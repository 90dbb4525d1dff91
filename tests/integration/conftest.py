"""The short multi-process runs of test_distributed.py and test_rpgan_distributed.py, launched in groups.

A 2-rank launch of a few steps spends most of its time starting interpreters and importing torch (three
processes: the launcher and two ranks, on 2 cores). Runs that are expected to finish are therefore made in
turn on one process group per world size (tests/integration/ddp_worker.py --batch), once per session, and
each test reads the records of the runs it compares. Runs that must exit with a code of their own, or that
test the entry point itself, launch alone (``launch`` in test_distributed.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import WORKER, launch_cmd, run

# A small paper-MLP model keeps every run to seconds; no EMA ramp-up so the EMA moves from step 1.
BASE = [
    "train.progress=false",
    "model.width=64",
    "train.batch_size=40",
    "train.log_every=3",
    "train.sample_every=0",
    "runtime.pg_timeout_s=60",
    "eval.every=0",
]
# No dropout and no BatchNorm (paper-MLP G, the conv D of dcgan28, both narrow), plain SGD without
# momentum so an update is lr x gradient: a wrong reduction shows at full size (Adam would nearly hide a
# sum-instead-of-mean: it divides the gradient's scale out). Noise: slices of one global tensor per update.
EQUIV = [
    "model.discriminator=dcgan28",
    "model.width=8",
    "ema.enabled=false",
    "optim.name=sgd",
    "optim.lr=0.1",
    "optim.momentum=0",
    "optim.final_momentum=0",
]
STEPS = ["train.max_steps=2", "train.ckpt_every=2"]
R3 = [*EQUIV, "loss.name=rpgan", "loss.r1_gamma=0.5", "loss.r2_gamma=0.5", "loss.r1_every=1"]
NOISE = ["--inject-noise"]
SIGKILL_AT = 8  # test_faults.py: checkpoints at steps 8 and 16; the killed run dies between them
SIGKILL = [f"train.max_steps={2 * SIGKILL_AT}", f"train.ckpt_every={SIGKILL_AT}", "train.keep_last=5"]

# name: (ranks, overrides after BASE, probe options)
RUNS = {
    # test_distributed.py
    "reference": (1, [*EQUIV, *STEPS, "train.grad_accum=2"], NOISE),
    "two_rank": (2, ["train.max_steps=6", "train.ckpt_every=6", "train.d_steps=2"], []),
    "two_ranks": (2, [*EQUIV, *STEPS], [*NOISE, "--comm-hook", "count"]),
    "neg_sum": (2, [*EQUIV, *STEPS], [*NOISE, "--comm-hook", "sum"]),
    "neg_same_slice": (2, [*EQUIV, *STEPS], [*NOISE, "--same-slice"]),
    "accumulating": (2, [*EQUIV, *STEPS, "train.grad_accum=2"], [*NOISE, "--comm-hook", "count"]),
    "neg_accumulating": (2, [*EQUIV, *STEPS, "train.grad_accum=2"], [*NOISE, "--comm-hook", "sum"]),
    "batchnorm": (
        2,
        [
            "model.generator=dcgan28",
            "model.discriminator=dcgan28",
            "model.noise=normal",
            "model.width=8",
            "train.max_steps=4",
            "train.ckpt_every=4",
            "train.consistency_every=2",
        ],
        [],
    ),
    "compiled": (2, [*EQUIV, *STEPS, "compile.enabled=true"], NOISE),  # its group's only compiled run: the counters
    "uneven": (3, [*EQUIV, *STEPS], NOISE),
    "neg_uneven": (3, [*EQUIV, *STEPS], [*NOISE, "--equal-weights"]),
    # test_rpgan_distributed.py
    "r3_reference": (1, [*R3, *STEPS, "train.grad_accum=2"], NOISE),
    "r3_two_ranks": (2, [*R3, *STEPS], NOISE),
    "r3_uneven": (3, [*R3, *STEPS], NOISE),
    "r3_neg_uneven": (3, [*R3, *STEPS], [*NOISE, "--equal-weights"]),
    # test_faults.py: the uninterrupted runs that a killed and resumed run must equal bit for bit
    "sigkill_straight_1": (1, SIGKILL, []),
    "sigkill_straight_2": (2, SIGKILL, []),
}


class Group:
    """The runs of one world size, launched together on first use: ``records(name)`` is every rank's record
    of that run (ddp_worker's rankR.pt), ``dir(name)`` holds its ``run`` and ``out``; ``stdout`` is the
    launch's."""

    def __init__(self, nproc: int, root: Path):
        self.names = [n for n, (w, _, _) in RUNS.items() if w == nproc]
        self.root, self.nproc = root, nproc
        runs = []
        for n in self.names:
            probe = RUNS[n][2]
            d = root / n
            argv = [
                "--out",
                str(d / "out"),
                *probe,
                "--",
                "--config",
                "configs/debug.yaml",
                "--run-dir",
                str(d / "run"),
            ]
            runs.append([*argv, *self.overrides(n)])
        (root / "runs.json").write_text(json.dumps(runs))
        self.proc = run(launch_cmd(nproc, WORKER, "--batch", str(root / "runs.json")), timeout=600)
        self.stdout = self.proc.stdout

    @staticmethod
    def overrides(name: str) -> list[str]:
        """The config overrides run ``name`` was made with (BASE, then its own)."""
        return [*BASE, *RUNS[name][1]]

    def dir(self, name: str) -> Path:
        return self.root / name

    def records(self, name: str) -> list[dict]:
        return [torch.load(self.dir(name) / "out" / f"rank{r}.pt", weights_only=True) for r in range(self.nproc)]


@pytest.fixture(scope="session")
def ranks_1(tmp_path_factory) -> Group:
    return Group(1, tmp_path_factory.mktemp("group1"))


@pytest.fixture(scope="session")
def ranks_2(tmp_path_factory) -> Group:
    return Group(2, tmp_path_factory.mktemp("group2"))


@pytest.fixture(scope="session")
def ranks_3(tmp_path_factory) -> Group:
    return Group(3, tmp_path_factory.mktemp("group3"))
