"""Entry point: ``python -m distgan.train`` or ``accelerate launch -m distgan.train``.

    python -m distgan.train --config configs/mnist_paper.yaml --run-dir runs/paper [key=value ...]

Overrides are dotted ``section.key=value`` pairs (``train.max_steps=200 optim.lr=0.05``); they win
over the environment ($DISTGAN_DATA_DIR, $WANDB_MODE), which wins over the YAML file. ``--dry-run``
prints the resolved config.

The exit code is distgan's own (0, 1, 2, 3, 75: ``distgan.errors`` says what each means); under a launcher
it is also in RUN/status.json.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import os
import sys
from pathlib import Path

from distgan.errors import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    BadInput,
    DataError,
    Diverged,
    ReplicaMismatch,
    StopRequested,
    exit_code,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m distgan.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/mnist_paper.yaml", help="YAML run config (default: %(default)s)")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="print every config key (docs/config.md) and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p.parse_args(argv)


def _error(e: BaseException, every_rank: bool = False) -> None:
    """One message per node (LOCAL_RANK 0, or the only process), not one per rank: the ranks of a node fail
    alike at start and on collective decisions; ``every_rank`` for errors only some ranks may hit."""
    if every_rank or int(os.environ.get("LOCAL_RANK", "0") or 0) == 0:
        print(f"distgan: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def main(argv=None, *, trainer_cls=None, callbacks=()) -> int:
    """Parse, build, train; return the exit code. ``trainer_cls`` (a Trainer subclass overriding the
    documented data hooks) and ``callbacks`` (``distgan.callbacks.Callback``) are for embedding and tests."""
    args = parse_args(argv)
    # a crash in native code (a segfault, an abort in a communication library) prints every thread's Python
    # stack: in a job log of many ranks, the only clue to where one died
    with contextlib.suppress(OSError, ValueError, AttributeError):  # a stderr without a file (embedded)
        faulthandler.enable()
    from distgan.config import load, reference

    if args.help_config:
        print(reference())
        return EXIT_OK
    try:
        cfg = load(args.config, args.overrides)
    except BadInput as e:
        _error(e)
        return EXIT_BAD_INPUT
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem).resolve()
    if args.dry_run:
        print(f"# resolved config for run dir {run_dir}")
        print(cfg.to_yaml(), end="")
        return EXIT_OK

    from distgan.runtime import leave_process_group
    from distgan.trainer import Trainer

    try:
        trainer = (trainer_cls or Trainer)(cfg, run_dir, callbacks=callbacks)
    except BadInput as e:
        _error(e)
        leave_process_group()
        return EXIT_BAD_INPUT
    code, together = EXIT_OK, True
    try:
        trainer.train()
    except StopRequested as e:
        code = exit_code(e)
        trainer.rank0.print(f"[distgan] {e}; exiting with code {code}; resume with train.resume=auto")
    except (BadInput, Diverged, ReplicaMismatch) as e:
        # a stream's DataError can hit one rank alone; the others are collective decisions
        _error(e, every_rank=isinstance(e, DataError))
        leave_process_group()  # no barrier first: a DataError may be one rank's alone
        code, together = exit_code(e), False
    else:
        trainer.rank0.print(f"[distgan] finished at step {trainer.step}; checkpoints in {trainer.ckpt_root}")
    if together:
        trainer.acc.wait_for_everyone()  # nobody leaves before the final status and checkpoint are written
        trainer.acc.end_training()
    # The trainer sits in reference cycles, so returning does not free it. Free it now, with the DDP reducers
    # and the gloo group they still hold after the group's destruction: left to the collection at
    # interpreter exit, the group's C++ threads run into the interpreter's teardown: rarely, a rank that had
    # finished aborted there ("terminate called without an active exception", exit -6).
    del trainer
    gc.collect()
    return code


if __name__ == "__main__":
    sys.exit(main())
