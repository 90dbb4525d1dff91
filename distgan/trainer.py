"""The Trainer: builds a run from a Config, then ``train()`` runs Algorithm 1 and hands the upkeep to the
components that own it.

    RunDir          provenance, status, the resume choice                 rundir.py
    BatchSource     this rank's share of every global batch               data/
    GANStep, Guard  the D and G updates, skipped-update counts            phases.py
    Augment         differentiable augmentation of what D sees            augment.py
    AdaptiveP       ADA's augmentation probability, moved by sign(D(x))   augment.py
    schedule_at     learning rates, momentum, beta2, R1/R2 weights per step schedule.py
    GeneratorAverage the EMA generator and its BatchNorm statistics       ema.py
    InTrainingEval  scores on the validation split, the best checkpoint   evaluate.py
    checkpoint      the files of a checkpoint, written atomically         checkpoint.py
    runtime         precision, compile, seeds and every collective        runtime.py
    Tracker         metrics.jsonl, grids, progress, W&B (rank 0)          tracking.py

The Trainer's own state is ``state_dict()`` / ``load_state_dict()``: what a checkpoint holds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from distgan import augment, schedule
from distgan import checkpoint as ckpt_lib
from distgan.augment import AdaptiveP, Augment
from distgan.callbacks import Callback
from distgan.config import Config, ConfigError
from distgan.data.sampler import BatchLayout
from distgan.data.source import build_source
from distgan.ema import GeneratorAverage
from distgan.errors import DISK_FULL, CheckpointError, Diverged, RunDirError, StopRequested, exit_code
from distgan.evaluate import InTrainingEval
from distgan.generate import generate, sample_noise, to_float
from distgan.losses import LOSSES
from distgan.networks import build_networks
from distgan.phases import GANStep, Guard, Net
from distgan.rundir import RunDir, check_usable
from distgan.runtime import (
    RankZero,
    StopSignals,
    all_reduce_sum_,
    backend,
    broadcast_,
    build_accelerator,
    check_replicas,
    convert_sync_batchnorm,
    gather_objects,
    make_scaler,
    maybe_compile,
    on_every_rank,
    preferred_memory_format,
    resolve_precision,
    rng_state,
    seed_step,
    set_rng_state,
    step_seed,
    to_memory_format,
    wrap_ddp,
)
from distgan.torch_private import fused_optimizer_devices, is_batchnorm
from distgan.tracking import NullTracker, Tracker


def build_optimizer(cfg: Config, params, lr: float) -> torch.optim.Optimizer:
    """Fused Adam or SGD where torch has fused kernels (CPU and CUDA: one pass over all tensors, and an
    on-device skip when handed found_inf, which the divergence guard uses); foreach kernels elsewhere."""
    o = cfg.optim
    params = list(params)
    kind = {"fused": True} if params[0].device.type in fused_optimizer_devices() else {"foreach": True}
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **kind)
    opt = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, **kind)
    # Fused SGD allocates its momentum buffers with empty_like on its first step; if that step is skipped
    # (found_inf) they stay uninitialised and the next step starts from garbage. Zeros from the start are
    # the same maths: buf = momentum * 0 + grad = grad, torch's own first step (dampening 0).
    for p in params:
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return opt


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | os.PathLike, accelerator=None, callbacks=()):
        self.cfg = cfg
        self.rundir = RunDir(run_dir, cfg)
        self.run_dir, self.ckpt_root = self.rundir.path, self.rundir.ckpt_root
        check_usable(self.run_dir)  # before anything is built
        self.callbacks: list[Callback] = list(callbacks)
        self.acc = accelerator or build_accelerator(cfg)
        self.rank0 = RankZero(self.acc)
        self.rank, self.world, self.device = self.acc.process_index, self.acc.num_processes, self.acc.device
        # the global batch, cut over ranks and micro-steps (unevenly where it must: 100 on 8 ranks)
        self.layout = BatchLayout(cfg.train.batch_size, self.rank, self.world, cfg.train.grad_accum)
        self.micro_sizes = self.layout.micro_sizes
        self.images_per_step = cfg.train.batch_size * cfg.train.d_steps
        self.cosine_span = schedule.cosine_span(cfg.optim, cfg.train.max_steps, self.images_per_step)
        self.precision, self._precision_why = resolve_precision(
            cfg.runtime.precision, self.device, cfg.runtime.allow_cpu_fp16
        )
        self.step = 0
        self.r1_last: torch.Tensor | None = None
        self.signals = StopSignals()
        self._replicas_checked: int | None = None  # the step of the last replica check
        self._build()

    # ------------------------------------------------------------------------------------ set-up
    def _build(self) -> None:
        cfg, acc = self.cfg, self.acc
        # Rank 0 chooses (and hashes) the checkpoint; every rank loads that one, so replicas cannot start
        # from different files. It fails before anything is built or written.
        resume_from, changes, start = self.rank0.collective(self._resume_choice)

        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        G, D = build_networks(cfg)
        self.data_range = G.data_range
        self.data = build_source(cfg, self.layout, self.device, self.rank0, start)
        if hasattr(G, "init_output_bias") and hasattr(self.data, "pixel_mean"):
            G.init_output_bias(self.data.pixel_mean())
        G, D = convert_sync_batchnorm([G, D], self.device, self.world, cfg.model.sync_batchnorm)
        # channels_last on CUDA (runtime.channels_last=false keeps NCHW, so the bench can measure both)
        layout = preferred_memory_format(self.device) if cfg.runtime.channels_last else torch.contiguous_format
        G, D = (to_memory_format(m.to(self.device), layout) for m in (G, D))
        self.ema = None
        if cfg.ema.enabled:
            m = cfg.model
            self.ema = GeneratorAverage(
                G,
                cfg.ema.halflife_images,
                cfg.ema.rampup,
                cfg.ema.bn_batches,
                cfg.train.batch_size,
                cfg.train.seed,
                lambda n, g: sample_noise(n, m.z_dim, m.noise, "cpu", g),
                self.rank,
                self.world,
                cfg.model.sync_batchnorm,
            )
        self.G_ema = self.ema.module if self.ema else None

        nets = {}
        for name, module, lr in (("G", G, cfg.optim.lr_g or cfg.optim.lr), ("D", D, cfg.optim.lr)):
            compiled = maybe_compile(module, cfg, self.device)
            wrapped = wrap_ddp(acc, compiled, self.device) if self.world > 1 else compiled
            nets[name] = Net(
                module,
                compiled,
                wrapped,
                build_optimizer(cfg, module.parameters(), lr),
                make_scaler(self.precision, self.device, cfg.runtime.fp16_init_scale),
                name,
            )
        self.G, self.D = nets["G"], nets["D"]
        self.gan = GANStep(acc, self.G, self.D, LOSSES[cfg.loss.name], self.precision, self.layout.loss_weights)
        self.gan.keep_fakes = cfg.loss.r2_gamma > 0  # R2 judges the fakes of the last D update
        self.augment = self.ada = None
        if cfg.data.augment:
            d = cfg.data
            self.augment = Augment(augment.parse(d.augment), self.device, d.augment_p, d.ada_target > 0)
            self.gan.augment = self.augment
            if d.ada_target:
                self.ada = AdaptiveP(
                    self.augment,
                    d.ada_target,
                    d.ada_interval,
                    d.ada_images,
                    self.images_per_step,
                    relativistic=self.gan.loss.needs_real_in_g,
                )
                self.gan.observe = self.ada.observe

        self.evaluator = InTrainingEval(cfg, self.rank0, self.rank, self.world, self.device)
        g = torch.Generator().manual_seed(cfg.train.seed + 0xF1C5)
        self.fixed_noise = sample_noise(64, cfg.model.z_dim, cfg.model.noise, "cpu", g)

        if resume_from is not None:  # every rank reads it; one that cannot stops them all
            state = on_every_rank(
                lambda: ckpt_lib.load_trainer_state(resume_from, self._modules()), self.world, CheckpointError
            )
            self.load_state_dict(state, resume_from, optimizers="optim.name" not in changes)
        self._announce(resume_from, changes, G)
        meta = {
            "world_size": self.world,
            "precision": self.precision,
            "device": str(self.device),
            "resumed_at_step": self.step if resume_from else None,
            "resumed_from": str(resume_from or "") or None,
            "changed_on_resume": {k: list(v) for k, v in changes.items()} or None,
        }
        self.rank0.collective(self.rundir.write_start, meta)

    def _resume_choice(self) -> tuple[Path | None, dict, int]:
        """(checkpoint or None, accepted identity changes, its step); run on rank 0 (it verifies hashes)."""
        path, changes, manifest = self.rundir.resume_target(warn=print)
        return path, changes, manifest["step"] if manifest else 0

    def _announce(self, resume_from, changes: dict, G) -> None:
        cfg = self.cfg
        self.rank0.print(
            f"[distgan] world size {self.world} | backend {backend()} | device {self.device} | "
            f"precision {self.precision} ({self._precision_why}) | compile {cfg.compile.enabled} | global batch "
            f"{cfg.train.batch_size} = {self.layout.describe()} | "
            + (f"resumed from {resume_from} at step {self.step}" if resume_from else "fresh start")
        )
        if changes:
            self.rank0.print(
                "[distgan] accepted on resume (train.allow_changed): "
                + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            )
        if self.world > 1 and any(is_batchnorm(m) for m in G.modules()) and not cfg.model.sync_batchnorm:
            sizes = self.layout.rank_sizes
            self.rank0.print(
                f"[distgan] note: BatchNorm normalises each rank's {min(sizes)}-{max(sizes)} images, not "
                f"the global batch of {cfg.train.batch_size}: not the 1-process recipe. On GPUs, "
                f"model.sync_batchnorm=true keeps it."
            )

    # ----------------------------------------------------------------------- documented data hooks
    def real_batch(self, global_batch_index: int, micro_index: int) -> torch.Tensor:
        """This rank's real micro-batch as floats in the generator's data range (subclasses may override)."""
        return to_float(self.data.batch(global_batch_index, micro_index), self.data_range)

    def noise(self, n: int) -> torch.Tensor:
        """Noise from this device's generator, reseeded from (seed, rank, step) every step (may be overridden)."""
        return sample_noise(n, self.cfg.model.z_dim, self.cfg.model.noise, self.device)

    # ------------------------------------------------------------------------------------ the loop
    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1: k D updates on fresh real batches and noise, then one G update; then the EMA."""
        cfg = self.cfg
        seed_step(self.device, step_seed(cfg.train.seed, self.rank, step))  # noise and dropout of this step
        if self.augment:  # its own generator: the noise stream is the same with augmentation on or off
            self.augment.reseed(step_seed(cfg.train.seed, self.rank, step, augment.AUGMENT_SALT))
        k = cfg.train.d_steps
        d_stats = 0
        for i in range(k):
            reals = [self.real_batch(step * k + i, m) for m in range(len(self.micro_sizes))]
            d_stats = d_stats + self.gan.d_step(reals, [self.noise(n) for n in self.micro_sizes]) / k
        if (cfg.loss.r1_gamma or cfg.loss.r2_gamma) and step % cfg.loss.r1_every == 0:  # on the last D batch
            r1, r2 = schedule.gammas_at(cfg.loss, step * self.images_per_step, self.cosine_span)
            self.r1_last = self.gan.d_reg_step(reals, self.gan.last_fakes, r1, r2, cfg.loss.r1_every)
        pair = reals if self.gan.loss.needs_real_in_g else None  # rpgan: the last D update's reals again
        g_stats = self.gan.g_step([self.noise(n) for n in self.micro_sizes], pair)
        self.gan.end_step()
        if self.ema:
            self.ema.update(self.G.module, step)
        if self.ada and (step + 1) % self.ada.interval == 0:
            self.ada.adjust()
        return d_stats, g_stats

    def schedule(self, step: int) -> dict[str, float]:
        """Set and return the learning rates (and SGD momentum) of ``step``."""
        epochs = step * self.cfg.train.d_steps / self.data.batches_per_epoch
        values = schedule.schedule_at(step, self.cfg.optim, self.cfg.train.max_steps, epochs, self.images_per_step)
        schedule.apply(values, self.D.opt, self.G.opt)
        if self.cfg.loss.gamma_end:
            values["gamma/R1"], values["gamma/R2"] = schedule.gammas_at(
                self.cfg.loss, step * self.images_per_step, self.cosine_span
            )
        return values

    def train(self) -> dict:
        """Run to ``train.max_steps``; return the last logged metrics. RUN/status.json records how the run
        ended, with its exit code, before the tracker closes (see _finish)."""
        cfg, t = self.cfg, self.cfg.train
        tracker = self._make_tracker()  # a no-op tracker on ranks other than 0
        self.rank0.run(self.rundir.write_status, "running", self.step)
        logged, error = {}, None
        try:
            with self.signals:
                for cb in self.callbacks:
                    cb.on_train_start(self)
                acc_stats, since = torch.zeros(4, device=self.device), (time.perf_counter(), self.step)
                while self.step < t.max_steps:
                    sched = self.schedule(self.step)
                    acc_stats += torch.cat(self.train_step(self.step))
                    self.step += 1
                    tracker.advance()
                    for cb in self.callbacks:
                        cb.on_step_end(self)
                    done = self.step == t.max_steps
                    # once-per-tick upkeep, each at its own interval
                    stop = 0
                    if self.step % t.log_every == 0 or done:
                        logged, stop = self._log_tick(tracker, acc_stats / (self.step - since[1]), sched, since)
                        acc_stats.zero_()
                        since = (time.perf_counter(), self.step)
                    if t.sample_every and self.step % t.sample_every == 0 or done:
                        self._grid(tracker)
                    if t.consistency_every and self.step % t.consistency_every == 0:
                        self.check_replicas()
                    if cfg.eval.every and (self.step % cfg.eval.every == 0 or done):
                        self._eval_tick(tracker)
                    saved = self.save_checkpoint() if self.step % t.ckpt_every == 0 or done else None
                    if stop and not done:
                        raise StopRequested(stop, self.step, saved or self.save_checkpoint())
                for cb in self.callbacks:
                    cb.on_train_end(self)
            return logged
        except BaseException as e:
            error = e
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                # metrics, grids and evaluation files (a checkpoint's own write failure is a CheckpointError)
                kept = ckpt_lib.latest_name(self.ckpt_root) or "none yet"
                error = RunDirError(
                    f"writing the run dir failed at step {self.step}: {e}. Checkpoints are untouched "
                    f"(checkpoints/latest names {kept}); free space and resume with train.resume=auto"
                )
                raise error from e
            raise
        finally:
            self._finish(tracker, error)

    def _finish(self, tracker, error: BaseException | None) -> None:
        """status.json (state and exit code) first, then the tracker: a job scheduler that kills the
        processes as soon as one exits still finds the final state (slurm/run.sh reads it)."""
        code = 130 if isinstance(error, KeyboardInterrupt) else exit_code(error)
        state = {0: "finished", 75: "stopped", 3: "diverged"}.get(code, "failed")
        try:
            self.rank0.run(self.rundir.write_status, state, self.step, code)
        except OSError as e:  # a full disk: the error being reported matters more than the status file
            print(f"[distgan] warning: could not write {self.run_dir / 'status.json'}: {e}", file=sys.stderr)
        finally:
            if hasattr(self.data, "close"):  # data loader workers: see StreamBatches.close
                self.data.close()
            tracker.close()

    # --------------------------------------------------------------------------- once-per-tick upkeep
    def _make_tracker(self):

        if not self.acc.is_main_process:
            return NullTracker()
        return Tracker(self.cfg, self.run_dir, self.cfg.train.max_steps, self.step)

    def _log_tick(self, tracker, stats: torch.Tensor, sched: dict, since: tuple[float, int]) -> tuple[dict, int]:
        """Reduce and log the figures since the last tick with one all-reduce and one host read; every rank
        also learns here whether any rank got a stop signal. Returns (metrics, signal number or 0)."""
        t = self.cfg.train
        images = (self.step - since[1]) * self.layout.per_rank * t.d_steps  # this rank's real images since then
        share = self.layout.per_rank / t.batch_size  # summed over ranks: the mean over the global batch
        # Read once: a signal that lands after this read (during the all-reduce, say) waits for the next tick.
        # Deciding from a second read would stop this rank alone while the others train on (and hang).
        received = self.signals.received
        extra = [images / max(time.perf_counter() - since[0], 1e-9), float(self.data.skipped), float(received)]
        reg = self.r1_last * share if self.r1_last is not None else torch.zeros(2, device=self.device)
        pack = all_reduce_sum_(torch.cat([stats * share, torch.tensor(extra, device=self.device), reg]))
        v = torch.cat([pack, self.gan.guard.state()]).tolist()  # the one host sync per tick
        metrics = {
            **self.check_guard(v[9:]),
            "loss/D": v[0],
            "D(x)": v[1],
            "D(G(z))": v[2],
            "loss/G": v[3],
            "img/s": v[4],
            "images_seen": self.step * t.batch_size * t.d_steps,
            **sched,
        }
        if self.r1_last is not None:  # the last R1 and R2 penalties, means over the global batch
            metrics["loss/R1"] = v[7]
            if self.cfg.loss.r2_gamma:
                metrics["loss/R2"] = v[8]
        if self.ada:  # p and the r_t of the last adjustment: the same on every rank
            metrics["aug/p"], metrics["aug/rt"] = self.ada.figures().tolist()
        if self.cfg.data.dataset == "webdataset" and not self.cfg.data.in_memory:
            metrics["data/skipped"] = v[5]  # bad samples the streams skipped, all ranks
        tracker.log(self.step, metrics)
        for cb in self.callbacks:
            cb.on_log(self, stats, metrics)
        # the reduced flag alone decides, so every rank decides alike; the signal's name is this rank's own, or
        # SIGTERM for another rank's
        return metrics, ((received or int(signal.SIGTERM)) if v[6] else 0)

    def check_guard(self, values: list[float] | None = None) -> dict:
        """The skipped-update counts (read from the device unless ``values`` came with other figures); raise
        Diverged per train.nonfinite and train.max_skip_streak. Alike on every rank: the counts are of
        decisions made after all-reduces."""
        values = values if values is not None else self.gan.guard.state().tolist()
        why = Guard.verdict(values, self.cfg.train.nonfinite, self.cfg.train.max_skip_streak)
        if why:
            name = ckpt_lib.latest_name(self.ckpt_root)
            last = self.ckpt_root / name if name else None
            raise Diverged(
                f"non-finite gradients by step {self.step} (skipped updates: D {int(values[0])}, G "
                f"{int(values[1])}); stopping: {why}. The last good checkpoint is {last or 'none yet'}; "
                f"lower the learning rates or use train.nonfinite=skip, then resume with train.resume=auto"
            )
        out = {"skipped/D": values[0], "skipped/G": values[1]}
        if self.G.scaler is not None:  # fp16: the scalers' own skips are calibration, counted apart
            out.update(
                {
                    "amp/overflow/D": values[2],
                    "amp/overflow/G": values[3],
                    "amp/scale/D": self.D.scaler.get_scale(),
                    "amp/scale/G": self.G.scaler.get_scale(),
                }
            )
        return out

    def _eval_tick(self, tracker) -> None:
        t0 = time.perf_counter()
        figures = self.evaluate()
        if self.evaluator.best.update(self.step, figures):
            self.save_checkpoint(name="best")
        tracker.log(
            self.step, {**{f"eval/{k}": v for k, v in figures.items()}, "eval/seconds": time.perf_counter() - t0}
        )
        tracker.write(self.evaluator.summary(self.step, figures, time.perf_counter() - t0))

    def _grid(self, tracker) -> None:
        self._refresh_ema_bn()
        if tracker.active:
            tracker.grid(self.step, self.generate(self.fixed_noise))

    def _refresh_ema_bn(self) -> None:
        """Before the EMA generator is sampled, scored or saved (see ema.GeneratorAverage)."""
        if self.ema and self.ema.refresh_batchnorm(self.step, self.device):
            self._replicas_checked = None  # its buffers changed since the last check

    # ------------------------------------------------------------------------------ what a user calls
    def evaluate(self) -> dict:
        """Score the EMA generator (else G) on the validation split; every rank gets the figures."""
        self._refresh_ema_bn()
        G = self.G_ema if self.G_ema is not None else self.G.module
        return self.evaluator.score(G, D=self.D.module, G_train=self.G.module)

    def generate(self, z: torch.Tensor, weights: str = "ema") -> torch.Tensor:
        """uint8 images of the EMA generator (``weights="ema"``, if kept) or of G from noise ``z``."""
        net = self.G_ema if weights == "ema" and self.G_ema is not None else self.G.module
        return generate(net, z, self.device)

    def check_replicas(self) -> None:
        """Every rank compares checksums of G, D and EMA parameters and buffers; a mismatch stops the run.
        Once per step: a second call at the same step finds what the first found, unless the EMA's
        statistics were recomputed since."""
        if self.world == 1 or self._replicas_checked == self.step:
            return
        self._sync_buffers()
        check_replicas(self.acc, self._modules(), self.step)
        self._replicas_checked = self.step

    def save_checkpoint(self, name: str | None = None) -> Path:
        """A collective: every rank calls it. ``name="best"`` writes checkpoints/best (see checkpoint.save).
        Rank 0 writes; a failure (disk full) raises CheckpointError on every rank, previous checkpoints intact."""
        self.check_guard()  # never write a checkpoint from a diverged state
        self._refresh_ema_bn()
        self.check_replicas()
        self._sync_buffers()
        state = self.state_dict()
        j = self.step * self.cfg.train.d_steps
        epoch, offset = self.data.position(j)
        manifest = {
            "images_seen": j * self.cfg.train.batch_size,
            "world_size": self.world,
            "data": {"global_batches": j, "epoch": epoch, "batch_in_epoch": offset},
            "config": self.cfg.to_dict(),
            **({"best": self.evaluator.best.best} if name else {}),
        }
        return self.rank0.collective(
            ckpt_lib.save_trainer_state, self.ckpt_root, state, manifest, self.cfg.train.keep_last, name
        )

    # ------------------------------------------------------------------------------------ state
    def _modules(self) -> dict[str, nn.Module]:
        mods = {"G": self.G.module, "D": self.D.module}
        if self.G_ema is not None:
            mods["G_ema"] = self.G_ema
        return mods

    def _sync_buffers(self) -> None:
        """BatchNorm statistics differ per rank between DDP forwards; take rank 0's, as DDP's next forward would."""
        for m in self._modules().values():
            broadcast_(list(m.buffers()))

    def state_dict(self) -> dict:
        """What a checkpoint holds: ``{"networks": {G, D[, G_ema]: state dicts}, "training": {step, images
        seen, optimizers, loss scalers, every rank's RNG states, the best evaluation}}``. A collective under
        DDP (the RNG states are gathered)."""
        t = self.cfg.train
        return {
            "networks": {k: m.state_dict() for k, m in self._modules().items()},
            "training": {
                "step": self.step,
                "images_seen": self.step * t.batch_size * t.d_steps,
                "opt_G": self.G.opt.state_dict(),
                "opt_D": self.D.opt.state_dict(),
                "scaler_G": self.G.scaler.state_dict() if self.G.scaler else {},
                "scaler_D": self.D.scaler.state_dict() if self.D.scaler else {},
                # noise, dropout and data order are reseeded from (seed, rank, step) every step, so
                # these are not needed for an exact resume; restored when the world size is unchanged
                "rng_per_rank": gather_objects(rng_state(), self.world),
                "guard": self.gan.guard.state_dict(),  # a skip streak that spans a preemption stays one streak
                **({"ada": self.ada.state_dict()} if self.ada else {}),  # p and the sums since its last move
                "best": self.evaluator.best.best,
            },
        }

    def load_state_dict(self, state: dict, source: Path | str = "the checkpoint", optimizers: bool = True) -> None:
        """Restore ``state_dict()``'s output (networks already checked to fit by checkpoint.load_trainer_state);
        ``optimizers=False`` keeps the optimizers fresh (another optimizer's state cannot be loaded)."""
        for k, m in self._modules().items():
            m.load_state_dict(state["networks"][k])
        tr = state["training"]
        if optimizers:
            self.G.opt.load_state_dict(tr["opt_G"])
            self.D.opt.load_state_dict(tr["opt_D"])
        for net, key in ((self.G, "scaler_G"), (self.D, "scaler_D")):
            if net.scaler is not None and tr.get(key):
                net.scaler.load_state_dict(tr[key])
        self.step = int(tr["step"])
        self.evaluator.best.restore(tr.get("best"))
        if tr.get("guard"):  # (checkpoints written before the guard was saved have none)
            self.gan.guard.load_state_dict(tr["guard"])
        if self.ada and tr.get("ada"):  # (none when ADA was off: p starts at data.augment_p)
            self.ada.load_state_dict(tr["ada"])
        rngs = tr.get("rng_per_rank") or []
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank])
        if self.step > self.cfg.train.max_steps:
            raise ConfigError(
                f"checkpoint {source} is at step {self.step}, beyond train.max_steps="
                f"{self.cfg.train.max_steps}; raise train.max_steps to continue"
            )
