"""Entry point: ``python -m distgan.train`` or ``accelerate launch -m distgan.train``.

    python -m distgan.train --config configs/mnist_paper.yaml --run-dir runs/paper [key=value ...]

Overrides are dotted ``section.key=value`` pairs (``train.max_steps=200 optim.lr=0.05``); they win
over $DISTGAN_DATA_DIR, which wins over the YAML file. ``--dry-run`` prints the resolved config.
Exit codes: 0 done; 2 bad input (config, data, run dir, checkpoint), nothing written; 3 diverged
(non-finite gradients under train.nonfinite=stop, or a streak of skipped updates), the last good
checkpoint kept; 75 stopped by SIGTERM/SIGUSR1 after every rank agreed and a checkpoint was written
(resume with train.resume=auto; the SLURM scripts requeue on it); 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_STOPPED = 75  # EX_TEMPFAIL: try again later


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m distgan.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/mnist_paper.yaml", help="YAML run config (default: %(default)s)")
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from distgan.checkpoint import CheckpointError
    from distgan.config import ConfigError, load
    from distgan.data.mnist import DataError
    from distgan.runtime import LaunchError

    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        print(f"distgan: config error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem).resolve()
    if args.dry_run:
        print(f"# resolved config for run dir {run_dir}")
        print(cfg.to_yaml(), end="")
        return 0

    from distgan.trainer import Diverged, RunDirError, StopRequested, Trainer

    try:
        trainer = Trainer(cfg, run_dir)
    except (ConfigError, DataError, RunDirError, CheckpointError, LaunchError) as e:
        print(f"distgan: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        trainer.train()
    except StopRequested as e:
        trainer.rank0.print(f"[distgan] {e}; exiting with code {EXIT_STOPPED}; resume with train.resume=auto")
        trainer.acc.end_training()
        return EXIT_STOPPED
    except Diverged as e:
        print(f"distgan: Diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    trainer.rank0.print(f"[distgan] finished at step {trainer.step}; checkpoints in {trainer.ckpt_root}")
    trainer.acc.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
