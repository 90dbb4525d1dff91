"""A stop signal (SIGTERM, or SLURM's SIGUSR1 before a time limit) is acted on at a log tick, decided from the
flag that the tick's all-reduce summed over the ranks: every rank decides alike. A real signal, sent to this
process at a chosen point of the tick."""

import os
import signal

import pytest

from distgan.callbacks import Callback
from distgan.config import load
from distgan.errors import StopRequested
from distgan.trainer import Trainer
from tests.helpers import QUIET, REPO


class SignalDuringTick(Callback):
    """SIGUSR1 to this process from inside the log tick of ``step``: after the tick's all-reduce and before
    its decision, as a signal that lands on one rank while the ranks reduce."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, trainer, local_stats, metrics):
        if trainer.step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_signal_during_a_log_tick_stops_the_run_at_the_next_tick(tmp_path, data_dir):
    """A rank that read its own flag again after the all-reduce stopped at this tick while the ranks whose sum
    did not hold the signal trained on, and the group hung (seen under SLURM: rank 0 stopped and gathered
    for the replica check, rank 1 waited in D's all-reduce until the gloo timeout). The signal must wait for
    the next tick, where it is in every rank's sum. Step 4 here (the bug) against step 6."""
    overrides = [*QUIET, "model.width=16", "train.batch_size=20", "train.max_steps=20", "train.log_every=2"]
    cfg = load(REPO / "configs" / "debug.yaml", [*overrides, "wandb.mode=disabled"], env={"DISTGAN_DATA_DIR": data_dir})
    tr = Trainer(cfg, tmp_path / "run", callbacks=[SignalDuringTick(4)])
    with pytest.raises(StopRequested) as stopped:
        tr.train()
    assert stopped.value.signum == signal.SIGUSR1 and stopped.value.step == 6
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000000006"
