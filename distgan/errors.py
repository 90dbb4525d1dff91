"""Every error distgan reports to a user, and the exit code each one ends ``distgan.train`` with.

    0   finished
    1   anything else (a bug, a replica mismatch, a crash in a library): the traceback or message says what
    2   bad input: config, data, run dir, checkpoint, launch; one message naming the problem, nothing changed
    3   diverged: non-finite gradients under train.nonfinite=stop, or a streak of skipped updates
    75  stopped by SIGTERM/SIGUSR1 after every rank agreed and a checkpoint was written (EX_TEMPFAIL: resume)

``accelerate launch`` (with any number of processes, one included) and torchrun exit 1 for every non-zero
code of their workers; ``RUN/status.json`` records the state and the code (docs/reliability.md).
"""

from __future__ import annotations

import errno
import signal

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_STOPPED = 0, 1, 2, 3, 75
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""errno values of a write that failed for lack of room (or a file system gone read-only): bad input, exit 2."""


class BadInput(RuntimeError):
    """Base of the errors that mean "fix the input": exit code 2, nothing written or changed."""


class ConfigError(BadInput, ValueError):
    """A config value is unknown, mistyped or impossible. The message names the key."""


class DataError(BadInput):
    """Data is missing or unreadable; the message says where it was looked for and what to do."""


class CheckpointError(BadInput):
    """A checkpoint is missing, incomplete, corrupted, does not fit the model, or could not be written."""


class RunDirError(BadInput):
    """The run dir holds another run, cannot be written, or does not fit the config."""


class LaunchError(BadInput):
    """The processes that were started do not form the group the launcher asked for."""


class Diverged(RuntimeError):
    """Non-finite gradients under train.nonfinite=stop, or too long a streak of skipped updates."""


class ReplicaMismatch(RuntimeError):
    """Ranks hold different weights: a synchronisation bug, not bad input (exit code 1)."""


class StopRequested(Exception):
    """A stop signal arrived; every rank agreed, and a checkpoint was written."""

    def __init__(self, signum: int, step: int, path):
        super().__init__(f"stopped on signal {signal.Signals(signum).name} at step {step}; checkpoint {path}")
        self.signum, self.step, self.path = signum, step, path

    def __reduce__(self):  # picklable with its three fields (it crosses ranks)
        return (StopRequested, (self.signum, self.step, self.path))


def exit_code(exc: BaseException | None) -> int:
    """The exit code of ``distgan.train`` for an exception raised by training (None: finished)."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, StopRequested):
        return EXIT_STOPPED
    if isinstance(exc, Diverged):
        return EXIT_DIVERGED
    if isinstance(exc, BadInput):
        return EXIT_BAD_INPUT
    return EXIT_FAILED
