"""``distgan.train.main`` with probes, for the tests that need what only a real run shows.

Launched like the entry point (``python ddp_worker.py`` or ``accelerate launch ddp_worker.py``) and exits
with ``distgan.train.main``'s own code. It plugs in through the hooks docs/testing.md lists: a Trainer subclass
overriding ``real_batch`` and ``noise``, a ``Callback``, the data source's BatchSource interface, DDP's
``register_comm_hook``, and (--equal-weights only) ``GANStep.weights``. Each rank saves
RUN/../out/rankR.pt.

    python ddp_worker.py --out O [probe options] -- --config configs/debug.yaml --run-dir R [key=value ...]
    python ddp_worker.py --batch RUNS.json    # several runs in turn on one process group (see run_batch)

Probe options:
  --inject-noise        per-rank noise = a slice of one global noise tensor per update, so runs at other
                        world sizes or accumulation see the same global noise (equivalence tests)
  --nan-steps 6,7       a NaN in the real batch of these steps (D's loss and gradients become NaN)
  --same-slice          wrong on purpose: every rank trains on rank 0's slice of each global batch
  --equal-weights       wrong on purpose: every rank's loss weighted 1 (DDP's plain average of unequal
                        shares) instead of n_r W / B; sets GANStep.weights, the one probe that does
  --comm-hook H         DDP communication hook on G and D: mean (as DDP), count (mean, counting calls),
                        sum (wrong: all-reduce without averaging), local (wrong: no all-reduce)
  --perturb RANK:STEP   wrong on purpose: add 1e-3 to one D weight on RANK after STEP
  --raise-at STEP       raise RuntimeError after STEP (an unexpected failure)
  --hold-at STEP        after STEP, write OUT/held-rankR and sleep until killed (a SIGKILL at a known point,
                        however fast the machine)
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distgan.callbacks import Callback  # noqa: E402
from distgan.generate import sample_noise, to_float  # noqa: E402
from distgan.train import main  # noqa: E402
from distgan.trainer import Trainer  # noqa: E402


def make_trainer_cls(opts):
    class ProbeTrainer(Trainer):
        """Overrides only the two documented data hooks."""

        def real_batch(self, j, micro):
            if opts.same_slice:
                if not hasattr(self, "rank0_batches"):
                    self.rank0_batches = self.data.for_rank(0)
                idx = self.rank0_batches.indices(j, micro)
                x = to_float(self.rank0_batches.batch(j, micro), self.data_range)
            else:
                idx = self.data.indices(j, micro) if hasattr(self.data, "indices") else None
                x = super().real_batch(j, micro)
            if idx is not None:
                self.probe.consumed.append(idx.cpu())
            if self.step in opts.nan_steps:  # fault injection (inside train_step(s), self.step == s)
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            return x

        def noise(self, n):
            p = self.probe
            if p.last_step != self.step:  # the first noise of this step
                p.calls, p.last_step = 0, self.step
            if not opts.inject_noise:
                z = super().noise(n)
            else:
                t = self.cfg.train
                update, micro = divmod(p.calls, t.grad_accum)
                g = torch.Generator().manual_seed(1_000_003 * self.step + update)
                z_all = sample_noise(t.batch_size, self.cfg.model.z_dim, self.cfg.model.noise, "cpu", g)
                start = self.layout.rank_starts[self.rank] + self.layout.micro_starts[micro]
                z = z_all[start : start + n].to(self.device)
            p.calls += 1
            p.noises.append(z[:2].cpu().clone())
            return z

    return ProbeTrainer


def comm_hook(kind, counter):
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def count(state, bucket):
        counter[0] += 1
        return allreduce_hook(state, bucket)

    def wrong_sum(state, bucket):
        fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    def wrong_local(state, bucket):
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    return {"mean": allreduce_hook, "count": count, "sum": wrong_sum, "local": wrong_local}[kind]


class Probe(Callback):
    def __init__(self, opts):
        self.opts = opts
        self.consumed, self.noises, self.calls, self.last_step = [], [], 0, None
        self.local_stats, self.logged, self.snapshots, self.first = None, None, {}, {}
        self.graphs = []  # torch.compile's count of distinct graphs after each step
        self.allreduce_calls = [0]

    def on_train_start(self, trainer):
        self.start_step = trainer.step
        self.init = {"G": clone(trainer.G.module.state_dict()), "D": clone(trainer.D.module.state_dict())}
        if self.opts.equal_weights:  # negative control: DDP's plain average over unequal rank shares
            trainer.gan.weights = [1.0] * len(trainer.gan.weights)
        if self.opts.comm_hook:
            if trainer.world == 1:
                raise SystemExit("--comm-hook needs a DDP run (2 or more ranks)")
            for net in (trainer.G, trainer.D):
                net.fwd_own.register_comm_hook(None, comm_hook(self.opts.comm_hook, self.allreduce_calls))

    def on_step_end(self, trainer):
        s = trainer.step  # steps done
        if s == self.start_step + 1:  # after one update of each network: what the rounding bounds compare
            self.first = {"G": clone(trainer.G.module.state_dict()), "D": clone(trainer.D.module.state_dict())}
        if trainer.cfg.compile.enabled:
            from torch._dynamo.utils import counters

            self.graphs.append(
                {
                    "unique_graphs": counters["stats"]["unique_graphs"],
                    "frames_ok": counters["frames"]["ok"],
                    "aot_ok": counters["aot_autograd"]["ok"],
                }
            )
        if s in self.opts.nan_steps or s - 1 in self.opts.nan_steps:  # just before and just after a NaN step
            self.snapshots[s] = {"D": clone(trainer.D.module.state_dict()), "opt_D": clone(trainer.D.opt.state_dict())}
        if self.opts.perturb and trainer.rank == self.opts.perturb[0] and s == self.opts.perturb[1]:
            with torch.no_grad():
                next(trainer.D.module.parameters()).view(-1)[0] += 1e-3
        if self.opts.raise_at is not None and s == self.opts.raise_at:
            raise RuntimeError(f"injected failure after step {s}")
        if self.opts.hold_at is not None and s == self.opts.hold_at:
            import time

            out = Path(self.opts.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"held-rank{trainer.rank}").write_text(str(s))
            while True:  # until the test's SIGKILL
                time.sleep(1)
        if s == trainer.cfg.train.max_steps:  # saved before the last checkpoint's replica check can stop the run
            self.save(trainer)

    def on_log(self, trainer, local_stats, metrics):
        self.local_stats, self.logged = local_stats.clone().cpu(), dict(metrics)

    def on_train_end(self, tr):
        self.save(tr)

    def save(self, tr):
        d = tr.data
        epoch0 = (
            torch.cat(
                [d.indices(j, m) for j in range(d.batches_per_epoch) for m in range(tr.cfg.train.grad_accum)]
            ).cpu()
            if hasattr(d, "indices")
            else None
        )
        out = Path(self.opts.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "rank": tr.rank,
                "world": tr.world,
                "start_step": self.start_step,
                "step": tr.step,
                "G": clone(tr.G.module.state_dict()),
                "D": clone(tr.D.module.state_dict()),
                "G_ema": clone(tr.G_ema.state_dict()) if tr.G_ema is not None else {},
                "init": self.init,
                "first": self.first,
                "consumed": self.consumed,
                "epoch0": epoch0,
                "noises": self.noises,
                "local_stats": self.local_stats,
                "logged": self.logged,
                "snapshots": self.snapshots,
                "allreduce_calls": self.allreduce_calls[0],
                "graphs": self.graphs,
            },
            out / f"rank{tr.rank}.pt",
        )


def clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone().cpu()
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone(v) for v in obj)
    return obj


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--inject-noise", action="store_true")
    p.add_argument("--nan-steps", default="")
    p.add_argument("--same-slice", action="store_true")
    p.add_argument("--equal-weights", action="store_true")
    p.add_argument("--comm-hook", choices=["mean", "count", "sum", "local"])
    p.add_argument("--perturb", default="")
    p.add_argument("--raise-at", type=int, default=None)
    p.add_argument("--hold-at", type=int, default=None)
    opts, rest = p.parse_known_args(argv)
    opts.nan_steps = {int(x) for x in opts.nan_steps.split(",") if x}
    opts.perturb = tuple(int(x) for x in opts.perturb.split(":")) if opts.perturb else None
    return opts, [a for a in rest if a != "--"]


def run_batch(runs: list[list[str]]) -> int:
    """Each run (the argument list of a single run, as above) in turn on this one process group: the
    interpreters, imports and group start once for all, which is most of a short run's time on 2 cores.
    Builds the Trainer as ``distgan.train.main`` does but does not end the process group between runs
    (``main`` ends it: ``Accelerator.end_training``); for runs that finish. A run that exits on purpose, or a
    test of exit codes, launches alone through ``main``."""
    from distgan.config import load
    from distgan.runtime import leave_process_group
    from distgan.train import parse_args

    for argv in runs:
        opts, train_argv = parse(argv)
        args = parse_args(train_argv)
        probe = Probe(opts)
        cls = make_trainer_cls(opts)
        cls.probe = probe
        tr = cls(load(args.config, args.overrides), Path(args.run_dir).resolve(), callbacks=[probe])
        tr.train()
        tr.acc.wait_for_everyone()
        del tr
    leave_process_group()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--batch"]:
        import json

        sys.exit(run_batch(json.loads(Path(sys.argv[2]).read_text())))
    opts, train_argv = parse(sys.argv[1:])
    probe = Probe(opts)
    cls = make_trainer_cls(opts)
    cls.probe = probe
    sys.exit(main(train_argv, trainer_cls=cls, callbacks=[probe]))
