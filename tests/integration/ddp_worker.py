"""Launched by the distributed tests under `accelerate launch` (or plain python for 1 rank).

Runs the real Trainer for a few steps and saves, per rank, what only a real run shows: final
parameters, the dataset indices it consumed, its noise, its local and logged metrics.
``--inject-noise`` replaces the per-rank noise by slices of one global noise tensor per update, so
runs at different world sizes / accumulation see the same global noise (the equivalence tests).

    python ddp_worker.py --config configs/debug.yaml --run-dir R --out O [--inject-noise] [key=value ...]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distgan.config import load  # noqa: E402
from distgan.trainer import Diverged, Trainer, sample_noise  # noqa: E402


class ProbeTrainer(Trainer):
    inject_noise = False
    nan_steps: set = set()

    def _setup(self):
        self.consumed, self.noises, self.local_stats = [], [], None
        super()._setup()

    def train_step(self, step):
        self._calls, self._step = 0, step
        return super().train_step(step)

    def real_batch(self, j, micro):
        self.consumed.append(self.data.indices(j, micro).cpu())
        x = super().real_batch(j, micro)
        if self._step in self.nan_steps:  # fault injection: D's loss and gradients become NaN
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        return x

    def noise(self, n):
        if not self.inject_noise:
            z = super().noise(n)
        else:
            t = self.cfg.train
            update, micro = divmod(self._calls, t.grad_accum)
            g = torch.Generator().manual_seed(1_000_003 * self._step + update)
            z_all = sample_noise(t.batch_size, self.cfg.model.z_dim, self.cfg.model.noise, "cpu", g)
            start = self.rank * (t.batch_size // self.world) + micro * n
            z = z_all[start:start + n].to(self.device)
        self._calls += 1
        self.noises.append(z[:2].cpu().clone())
        return z

    def _log_tick(self, tracker, stats, sched, ips):
        self.local_stats = stats.clone().cpu()
        return super()._log_tick(tracker, stats, sched, ips)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/debug.yaml")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--inject-noise", action="store_true")
    p.add_argument("--nan-steps", default="", help="comma list of steps whose real batch holds a NaN")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    cfg = load(a.config, a.overrides)
    ProbeTrainer.inject_noise = a.inject_noise
    ProbeTrainer.nan_steps = {int(x) for x in a.nan_steps.split(",") if x}
    tr = ProbeTrainer(cfg, a.run_dir)
    start = tr.step
    try:
        logged = tr.train()
    except Diverged as e:
        print(f"Diverged: {e}", file=sys.stderr)
        sys.exit(3)
    epoch0 = torch.cat([tr.data.indices(j, m) for j in range(tr.data.batches_per_epoch)
                        for m in range(cfg.train.grad_accum)]).cpu()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"rank": tr.rank, "world": tr.world, "start_step": start, "step": tr.step,
                "G": tr.G.net.state_dict(), "D": tr.D.net.state_dict(),
                "G_ema": tr.G_ema.state_dict() if tr.G_ema is not None else {},
                "consumed": tr.consumed, "epoch0": epoch0, "noises": tr.noises,
                "local_stats": tr.local_stats, "logged": logged}, out / f"rank{tr.rank}.pt")
    tr.acc.end_training()


if __name__ == "__main__":
    main()
