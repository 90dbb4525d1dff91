"""Builds everything from a Config and runs the loop. The hot part is ``Trainer.train``."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distgan import checkpoint as ckpt_lib
from distgan.callbacks import Callback
from distgan.config import Config, ConfigError
from distgan.data.mnist import ensure_mnist, load_split
from distgan.data.sampler import BatchLayout, ShardedBatches
from distgan.ema import ema_beta, make_ema, recalibrate_batchnorm, update_ema
from distgan.errors import Diverged, ReplicaMismatch, StopRequested, exit_code
from distgan.generate import generate, sample_noise, to_float
from distgan.losses import LOSSES
from distgan.networks import build_networks
from distgan.phases import GANStep, Net
from distgan.rundir import RunDir, check_usable
from distgan.runtime import (RankZero, build_accelerator, make_scaler, maybe_compile, resolve_precision, seed_step,
                             step_seed)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def build_optimizer(cfg: Config, params, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    # Fused kernels (CPU and CUDA): one pass over all tensors, and they skip an update on device when
    # handed found_inf (the divergence guard in phases.py). Elsewhere foreach kernels.
    from distgan.torch_private import fused_optimizer_devices

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


_CHECKSUM_WEIGHTS: dict = {}


def param_checksums(modules: dict[str, nn.Module], device) -> tuple[list[str], torch.Tensor]:
    """An int64 checksum of the raw bits of every parameter and buffer: any bit flip changes it, and so does
    a swap of two elements (each position has its own weight)."""
    tensors = {f"{m}.{k}": t for m, mod in modules.items() for k, t in (*mod.named_parameters(), *mod.named_buffers())}
    n = max(t.numel() for t in tensors.values())
    w = _CHECKSUM_WEIGHTS.get(device)
    if w is None or w.numel() < n:  # computed once per run: the modulo over millions of int64 is the costly part
        w = _CHECKSUM_WEIGHTS[device] = torch.arange(1, n + 1, device=device, dtype=torch.int64) % 1_000_003
    sums = []
    for t in tensors.values():
        t = t.detach().contiguous().reshape(-1)  # 1-d, so 0-d buffers (num_batches_tracked) can be viewed too
        bits = t.view(torch.int32) if t.element_size() == 4 else t.view(torch.uint8).to(torch.int32)
        sums.append((bits.to(torch.int64) * w[:bits.numel()].to(bits.device)).sum())  # (integer dot: not on CUDA)
    return list(tensors), torch.stack(sums).to(device)


def _meta_count(urls: list[str]) -> int:
    """Samples per pass from the ``*-meta.json`` that make_shards writes beside local shards (0 if none)."""
    from distgan.data.stream import shard_meta

    meta = shard_meta(urls)
    return int(meta.get("samples", 0)) if meta else 0


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | os.PathLike, accelerator=None, callbacks=()):
        self.cfg = cfg
        self.rundir = RunDir(run_dir, cfg)
        self.run_dir = self.rundir.path
        self.ckpt_root = self.rundir.ckpt_root
        check_usable(self.run_dir)  # before anything is built
        self.callbacks: list[Callback] = list(callbacks)
        self.acc = accelerator or build_accelerator(cfg)
        self.rank0 = RankZero(self.acc)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device
        t = cfg.train
        # the global batch, cut over ranks and micro-steps (unevenly where it must: 100 on 8 ranks)
        self.layout = BatchLayout(t.batch_size, self.rank, self.world, t.grad_accum)
        self.micro_sizes = self.layout.micro_sizes
        self.precision, self._precision_why = resolve_precision(cfg.runtime.precision, self.device,
                                                                cfg.runtime.allow_cpu_fp16)
        self.step = 0
        self.best: dict | None = None  # {"metric", "value", "step"} of checkpoints/best
        self.r1_last: torch.Tensor | None = None
        self._ema_bn_step: int | None = None  # the step at which G_ema's BatchNorm statistics were recomputed
        self._replicas_checked: int | None = None  # the step of the last replica check
        self._setup()

    # ------------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg, acc = self.cfg, self.acc
        # Rank 0 chooses (and hashes) the checkpoint; every rank loads that one, so replicas cannot start
        # from different files. It fails before anything is built or written.
        resume_from, changes, start = self.rank0.collective(self._resume_choice)

        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        G, D = build_networks(cfg)
        self.data_range = G.data_range
        self.data = self._make_data(G, start)
        if cfg.model.sync_batchnorm and self.world > 1 and self.device.type != "cuda":
            raise ConfigError("model.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm is GPU-only); on "
                              "CPUs leave it false: BatchNorm statistics are then rank 0's, broadcast by DDP")
        if cfg.model.sync_batchnorm and self.world > 1:
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
            D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        G, D = G.to(self.device), D.to(self.device)
        if self.device.type == "cuda":  # NHWC convolutions use tensor cores without layout transposes
            G, D = (m.to(memory_format=torch.channels_last) if any(isinstance(x, nn.Conv2d | nn.ConvTranspose2d)
                    for x in m.modules()) else m for m in (G, D))
        self.G_ema = make_ema(G) if cfg.ema.enabled else None

        lr_g = cfg.optim.lr_g or cfg.optim.lr
        opt_g = build_optimizer(cfg, G.parameters(), lr_g)
        opt_d = build_optimizer(cfg, D.parameters(), cfg.optim.lr)
        G_fwd, D_fwd = maybe_compile(G, cfg, self.device), maybe_compile(D, cfg, self.device)
        G_train, D_train = acc.prepare(G_fwd, D_fwd) if self.world > 1 else (G_fwd, D_fwd)
        scale = cfg.runtime.fp16_init_scale
        self.G = Net(G, G_fwd, G_train, opt_g, make_scaler(self.precision, self.device, scale), "G")
        self.D = Net(D, D_fwd, D_train, opt_d, make_scaler(self.precision, self.device, scale), "D")
        self.gan = GANStep(acc, self.G, self.D, LOSSES[cfg.loss.name], self.precision, self.layout.loss_weights)
        g = torch.Generator().manual_seed(cfg.train.seed + 0xF1C5)
        self.fixed_noise = sample_noise(64, cfg.model.z_dim, cfg.model.noise, "cpu", g)

        if resume_from is not None:
            self._load(resume_from)
        self.rank0.print(
            f"[distgan] world size {self.world} | backend {self._backend()} | device {self.device} | "
            f"precision {self.precision} ({self._precision_why}) | compile {cfg.compile.enabled} | global batch "
            f"{cfg.train.batch_size} = {self.layout.describe()} | "
            + (f"resumed from {resume_from} at step {self.step}" if resume_from else "fresh start"))
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in G.modules())
        if self.world > 1 and has_bn and not cfg.model.sync_batchnorm:
            self.rank0.print(f"[distgan] note: BatchNorm normalises each rank's {min(self.layout.rank_sizes)}-"
                             f"{max(self.layout.rank_sizes)} images, not the global batch of {cfg.train.batch_size}: "
                             f"not the 1-process recipe. On GPUs, model.sync_batchnorm=true keeps it.")
        if changes:
            self.rank0.print("[distgan] accepted on resume (train.allow_changed): " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        meta = {"world_size": self.world, "precision": self.precision, "device": str(self.device),
                "resumed_at_step": self.step if resume_from else None, "resumed_from": str(resume_from or "") or None,
                "changed_on_resume": {k: list(v) for k, v in changes.items()} or None}
        self.rank0.collective(self.rundir.write_start, meta)

    def _resume_choice(self) -> tuple[Path | None, dict, int]:
        """(checkpoint or None, accepted identity changes, its step); run on rank 0 (it verifies hashes)."""
        path, changes = self.rundir.resume_target(warn=print)
        step = ckpt_lib.verify(path)["step"] if path is not None else 0
        return path, changes, step

    def _make_data(self, G, start_step: int):
        """In-memory MNIST sharded per rank, or a resampled WebDataset stream (see distgan.data.stream)."""
        cfg = self.cfg
        if cfg.data.dataset == "webdataset":
            from distgan.data.stream import StreamBatches, check_urls, expand_urls

            urls = expand_urls(cfg.data.urls)
            check_urls(urls, cfg.data.image_shape)
            if cfg.data.in_memory:  # rank 0 reads every shard once and broadcasts: one reader, not W
                images = self._broadcast_from_rank0(lambda: self._read_shards(urls))
                return ShardedBatches(images, cfg.train.batch_size, self.rank, self.world, cfg.train.seed,
                                      cfg.train.grad_accum)
            per_epoch = cfg.data.samples_per_epoch or _meta_count(urls)
            return StreamBatches(urls, self.layout, cfg.data.image_shape, cfg.train.seed, cfg.data.workers,
                                 cfg.data.shuffle_buffer, self.device, start_step=start_step,
                                 samples_per_epoch=per_epoch)
        # rank 0 downloads (if it must) before anyone reads: W processes must not write one folder at once
        self.rank0.collective(ensure_mnist, cfg.data.root, cfg.data.download)
        images, _ = load_split(cfg.data.root, "train", download=False)
        if hasattr(G, "init_output_bias"):
            G.init_output_bias(images.float().mean(0) / 255.0)
        return ShardedBatches(images.to(self.device), cfg.train.batch_size, self.rank, self.world,
                              cfg.train.seed, cfg.train.grad_accum)

    def _read_shards(self, urls) -> torch.Tensor:
        from distgan.data.stream import read_all

        cfg = self.cfg
        images, _, skipped = read_all(urls, cfg.data.image_shape, workers=min(cfg.data.workers, len(urls)))
        if skipped:
            print(f"[distgan] skipped {skipped} unreadable samples while loading {cfg.data.urls}", flush=True)
        return images

    def _broadcast_from_rank0(self, read) -> torch.Tensor:
        """A tensor that rank 0 reads, on every rank's device (its read errors raised on every rank)."""
        held = {}

        def shape():
            held["t"] = read()
            return tuple(held["t"].shape), held["t"].dtype

        shp, dtype = self.rank0.collective(shape)
        t = held["t"].to(self.device) if self.rank == 0 else torch.empty(shp, dtype=dtype, device=self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(t, src=0)
        return t

    def _backend(self) -> str:
        import torch.distributed as dist

        return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"

    # --------------------------------------------------------------------- test hooks / data / noise
    def real_batch(self, global_batch_index: int, micro: int) -> torch.Tensor:
        """This rank's real micro-batch as floats in the generator's data range (tests may override)."""
        return to_float(self.data.batch(global_batch_index, micro), self.data_range)

    def noise(self, n: int) -> torch.Tensor:
        """Noise from the global generator, which is reseeded from (seed, rank, step) every step."""
        return sample_noise(n, self.cfg.model.z_dim, self.cfg.model.noise, self.device)

    # -------------------------------------------------------------------------------- schedule
    def apply_schedule(self, step: int) -> dict[str, float]:
        o = self.cfg.optim
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        decay = o.lr_decay ** (-step) if o.lr_decay != 1.0 else 1.0
        if o.linear_decay_start and step >= o.linear_decay_start:
            span = max(1, self.cfg.train.max_steps - o.linear_decay_start)
            decay *= max(0.0, 1.0 - (step - o.linear_decay_start) / span)
        lr_d = max(o.lr * decay, o.min_lr) * warm
        lr_g = max((o.lr_g or o.lr) * decay, o.min_lr) * warm
        out = {"lr/D": lr_d, "lr/G": lr_g}
        epoch = step * self.cfg.train.d_steps / self.data.batches_per_epoch
        mom = o.momentum + (o.final_momentum - o.momentum) * min(1.0, epoch / o.momentum_saturate_epochs)
        for net, lr in ((self.D, lr_d), (self.G, lr_g)):
            for group in net.opt.param_groups:
                group["lr"] = lr
                if o.name == "sgd":
                    group["momentum"] = mom
        if o.name == "sgd":
            out["momentum"] = mom
        return out

    # ------------------------------------------------------------------------------------ loop
    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 1: k D updates on fresh real batches and noise, then one G update."""
        cfg = self.cfg
        seed_step(self.device, step_seed(cfg.train.seed, self.rank, step))  # noise and dropout of this step
        accum, k = cfg.train.grad_accum, cfg.train.d_steps
        d_stats = 0
        for i in range(k):
            j = step * k + i
            reals = [self.real_batch(j, m) for m in range(accum)]
            noises = [self.noise(n) for n in self.micro_sizes]
            d_stats = d_stats + self.gan.d_step(reals, noises) / k
        if cfg.loss.r1_gamma and step % cfg.loss.r1_every == 0:  # lazy R1 on the last real batch
            self.r1_last = self.gan.d_reg_step(reals, cfg.loss.r1_gamma, cfg.loss.r1_every)
        g_stats = self.gan.g_step([self.noise(n) for n in self.micro_sizes])
        self.gan.end_step()
        if self.G_ema is not None:
            b = cfg.train.batch_size
            beta = ema_beta(b, cfg.ema.halflife_images, (step + 1) * b, cfg.ema.rampup)
            update_ema(self.G_ema, self.G.net, beta)
        return d_stats, g_stats

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum  # acted on at the next agreement point, by every rank together

    def _guard_state(self) -> torch.Tensor:
        g = self.gan
        return torch.cat([g.skipped, g.overflow, g.max_streak.reshape(1), g.max_overflow_streak.reshape(1)])

    def check_guard(self, values: list[float] | None = None) -> dict:
        """The divergence counters (read from the device unless ``values`` were read with other figures);
        raise Diverged per the policy. Identical on every rank: they count decisions made after all-reduces."""
        t = self.cfg.train
        sk_d, sk_g, ov_d, ov_g, streak, ov_streak = values if values is not None else self._guard_state().tolist()
        from distgan.phases import MAX_OVERFLOW_STREAK

        why = None
        if t.nonfinite == "stop" and sk_d + sk_g > 0:
            why = "train.nonfinite=stop"
        elif streak >= t.max_skip_streak:
            why = f"{int(streak)} consecutive steps with skipped updates (train.max_skip_streak={t.max_skip_streak})"
        elif ov_streak >= MAX_OVERFLOW_STREAK:
            why = (f"the fp16 loss scale backed off {int(ov_streak)} times in a row: the gradients are non-finite at "
                   f"every scale")
        if why:
            latest = self.ckpt_root / "latest"
            last = self.ckpt_root / latest.read_text().strip() if latest.is_file() else None
            raise Diverged(f"non-finite gradients by step {self.step} (skipped updates: D {int(sk_d)}, G {int(sk_g)}); "
                           f"stopping: {why}. The last good checkpoint is {last or 'none yet'}; lower the learning "
                           f"rates or use train.nonfinite=skip, then resume with train.resume=auto")
        out = {"skipped/D": sk_d, "skipped/G": sk_g}
        if self.G.scaler is not None:  # fp16: the scalers' own skips are calibration, counted apart
            out.update({"amp/overflow/D": ov_d, "amp/overflow/G": ov_g, "amp/scale/D": self.D.scaler.get_scale(),
                        "amp/scale/G": self.G.scaler.get_scale()})
        return out

    def train(self) -> dict:
        """Run to ``train.max_steps``. RUN/status.json records how it ended (with the exit code) before the
        tracker closes: a job scheduler that kills the processes right after the first one exits still
        finds the final state."""
        cfg, t = self.cfg, self.cfg.train
        self._signal = 0
        main_thread = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS} if main_thread else {}
        self.rank0.run(self.rundir.write_status, "running", self.step)
        tracker = self._make_tracker()  # a no-op tracker on ranks other than 0
        error: BaseException | None = None
        try:
            for cb in self.callbacks:
                cb.on_train_start(self)
            out = self._train(cfg, t, tracker)
            for cb in self.callbacks:
                cb.on_train_end(self)
            return out
        except BaseException as e:
            error = e
            raise
        finally:
            code = exit_code(error) if not isinstance(error, KeyboardInterrupt) else 130
            state = {0: "finished", 75: "stopped", 3: "diverged"}.get(code, "failed")
            try:
                self.rank0.run(self.rundir.write_status, state, self.step, code)
            finally:
                tracker.close()
                for s, h in previous.items():
                    signal.signal(s, h)

    def _train(self, cfg, t, tracker) -> dict:
        acc_stats = torch.zeros(4, device=self.device)  # summed on device, read once per log tick
        n_acc, t_last, step_last = 0, time.perf_counter(), self.step
        last_logged: dict = {}
        while self.step < t.max_steps:
            sched = self.apply_schedule(self.step)
            d_stats, g_stats = self.train_step(self.step)
            acc_stats += torch.cat([d_stats, g_stats])
            n_acc += 1
            self.step += 1
            tracker.advance()
            for cb in self.callbacks:
                cb.on_step_end(self)
            done = self.step == t.max_steps
            signum = 0
            if self.step % t.log_every == 0 or done:
                now = time.perf_counter()
                # this rank's real images per second; summed over ranks in _log_tick
                ips = (self.step - step_last) * self.layout.per_rank * t.d_steps / max(now - t_last, 1e-9)
                last_logged, signum = self._log_tick(tracker, acc_stats / n_acc, sched, ips)
                acc_stats.zero_(); n_acc = 0; t_last, step_last = now, self.step
            if t.sample_every and self.step % t.sample_every == 0 or done:
                self._grid(tracker)
            if t.consistency_every and self.step % t.consistency_every == 0:
                self.check_replicas()
            if cfg.eval.every and (self.step % cfg.eval.every == 0 or done):
                self._eval_tick(tracker)
            saved = self.save_checkpoint() if self.step % t.ckpt_every == 0 or done else None
            if signum and not done:
                raise StopRequested(signum, self.step, saved or self.save_checkpoint())
        return last_logged

    def _make_tracker(self):
        from distgan.tracking import NullTracker, Tracker

        if not self.acc.is_main_process:
            return NullTracker()
        return Tracker(self.cfg, self.run_dir, self.cfg.train.max_steps, self.step)

    def _log_tick(self, tracker, stats: torch.Tensor, sched: dict, ips_local: float) -> tuple[dict, int]:
        """Reduce and log the figures since the last tick, with one all-reduce and one host read; every rank
        also learns here whether any rank got a stop signal. Returns (metrics, signal number or 0)."""
        local = stats
        share = self.layout.per_rank / self.cfg.train.batch_size  # summed over ranks: the global batch's mean
        skipped = float(self.data.skipped) if hasattr(self.data, "skipped") else 0.0
        pack = torch.cat([stats * share, torch.tensor([ips_local, skipped, float(self._signal)], device=self.device)])
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(pack)  # signal numbers only add up to non-zero
        v = torch.cat([pack, self._guard_state()]).tolist()  # the one host sync per tick
        guard = self.check_guard(v[7:])
        metrics = {**guard, "loss/D": v[0], "D(x)": v[1], "D(G(z))": v[2], "loss/G": v[3], "img/s": v[4],
                   "images_seen": self.step * self.cfg.train.batch_size * self.cfg.train.d_steps, **sched}
        if self.r1_last is not None:
            metrics["loss/R1"] = self.r1_last.item()
        if hasattr(self.data, "skipped"):  # bad samples skipped by the stream, all ranks
            metrics["data/skipped"] = v[5]
        tracker.log(self.step, metrics)
        for cb in self.callbacks:
            cb.on_log(self, local, metrics)
        return metrics, (self._signal or (int(signal.SIGTERM) if v[6] else 0))

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict:
        """Score the EMA generator (else G) on ``eval.num`` fixed-noise samples; every rank gets the figures.

        Each rank generates its blocks and their classifier features; they are gathered, rank 0 computes
        the metrics and broadcasts them, so a best-checkpoint decision is the same on every rank. The
        reference is MNIST's validation split, train[50000:60000]: model selection never sees the test set,
        which is kept for the final report of ``distgan.evaluate``.
        """
        from distgan.evaluate import assemble, gather_blocks, generate_blocks
        from distgan.metrics import suite

        e = self.cfg.eval
        metrics = suite.parse_metrics(e.metrics)
        self._refresh_ema_bn()
        G = self.G_ema if self.G_ema is not None else self.G.net
        blocks = generate_blocks(G, self.cfg, e.num, e.seed, self.rank, self.world, e.block, self.device,
                                 features=bool(suite.FEATURE_METRICS & set(metrics)))
        blocks = gather_blocks(blocks, self.world)

        def score():
            images, feats, probs = assemble(blocks)
            return suite.compute(images, metrics, self.cfg.data.root, feats, probs, reference="valid")

        return self.rank0.collective(score)

    def _eval_tick(self, tracker) -> None:
        t0 = time.perf_counter()
        res = self.evaluate()
        figures = {k: v for k, v in res.items() if isinstance(v, (int, float))}
        key = self.cfg.eval.best_metric
        improved = False
        if key:
            from distgan.metrics.suite import LOWER_IS_BETTER

            value = float(figures[key])
            sign = -1.0 if key in LOWER_IS_BETTER else 1.0
            improved = self.best is None or sign * value > sign * self.best["value"]
            if improved:
                self.best = {"metric": key, "value": value, "step": self.step}
        if improved:
            self.save_checkpoint(name="best")
        tracker.log(self.step, {**{f"eval/{k}": v for k, v in figures.items()},
                                "eval/seconds": time.perf_counter() - t0})
        shown = " | ".join(f"{k} {v:.4g}" for k, v in figures.items() if k in (
            "fd", "cs", "mode_kl", "precision", "recall", "parzen_ll", "stacked_modes", "stacked_kl"))
        if "modes" in figures:
            shown += f" | modes {figures['modes']}/{figures['modes_total']}"
        best = f" | best {key} {self.best['value']:.4g} at step {self.best['step']}" if self.best else ""
        tracker.write(f"[distgan] eval step {self.step}: {shown}{best} ({time.perf_counter() - t0:.1f} s)")

    def generate(self, z: torch.Tensor, weights: str = "ema") -> torch.Tensor:
        """uint8 images of the EMA generator (``weights="ema"``, if kept) or of G from noise ``z``."""
        net = self.G_ema if weights == "ema" and self.G_ema is not None else self.G.net
        return generate(net, z, self.device)

    def _refresh_ema_bn(self) -> None:
        """Recompute G_ema's BatchNorm statistics from ``ema.bn_batches`` fixed-noise batches, at most once per
        step, before G_ema is sampled, scored or saved. Rank 0 computes them and the others receive them
        (with SyncBatchNorm every rank takes part, on the same noise). Training never reads them: the next EMA
        update copies G's again."""
        n = self.cfg.ema.bn_batches
        if self.G_ema is None or not n or self._ema_bn_step == self.step:
            return
        m = self.cfg.model
        g = torch.Generator().manual_seed(self.cfg.train.seed + 0xB17)
        noise = (sample_noise(self.cfg.train.batch_size, m.z_dim, m.noise, "cpu", g) for _ in range(n))
        if self.rank == 0 or self.cfg.model.sync_batchnorm:
            recalibrate_batchnorm(self.G_ema, noise, self.device)
        if self.world > 1 and not self.cfg.model.sync_batchnorm:
            import torch.distributed as dist

            for b in self.G_ema.buffers():
                dist.broadcast(b, src=0)
        self._ema_bn_step = self.step
        self._replicas_checked = None

    def _grid(self, tracker) -> None:
        self._refresh_ema_bn()
        if tracker.active:
            tracker.grid(self.step, self.generate(self.fixed_noise).cpu())

    # ------------------------------------------------------------------- replicas and checkpoints
    def _modules(self) -> dict[str, nn.Module]:
        mods = {"G": self.G.net, "D": self.D.net}
        if self.G_ema is not None:
            mods["G_ema"] = self.G_ema
        return mods

    def _sync_buffers(self) -> None:
        """BatchNorm statistics differ per rank between DDP forwards; take rank 0's, as DDP's next forward would."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for m in self._modules().values():
            for b in m.buffers():
                dist.broadcast(b, src=0)

    def check_replicas(self) -> None:
        """Every rank compares checksums of G, D and EMA parameters and buffers; a mismatch stops the run.
        Once per step: a second call at the same step (a checkpoint after the periodic check, `best` after the
        step's checkpoint) finds what the first found, unless the EMA's statistics were recomputed since."""
        if self.world == 1 or self._replicas_checked == self.step:
            return
        self._sync_buffers()
        names, sums = param_checksums(self._modules(), self.device)
        gathered = self.acc.gather(sums.unsqueeze(0)).reshape(self.world, -1)
        bad = (gathered != gathered[0]).any(0).nonzero().flatten().tolist()
        if bad:
            ranks = (gathered[:, bad[0]] != gathered[0, bad[0]]).nonzero().flatten().tolist()
            raise ReplicaMismatch(
                f"replicas diverged at step {self.step}: tensor {names[bad[0]]!r} differs between rank 0 and "
                f"rank(s) {ranks} ({len(bad)} tensors in all); this is a bug in synchronisation, not your data. "
                f"The last good checkpoint is kept; please report it with RUN/runs.jsonl")
        self._replicas_checked = self.step

    @staticmethod
    def rng_state() -> dict:
        """This process's RNG states as tensors and lists (loadable with weights_only=True)."""
        st = np.random.get_state()
        py = random.getstate()
        return {"torch": torch.get_rng_state(), "python": [py[0], list(py[1]), py[2]],
                "numpy": torch.from_numpy(st[1].astype(np.int64)), "numpy_pos": int(st[2]),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0, dtype=torch.uint8)}

    @staticmethod
    def set_rng_state(r: dict) -> None:
        torch.set_rng_state(r["torch"])
        random.setstate((r["python"][0], tuple(r["python"][1]), r["python"][2]))
        np.random.set_state(("MT19937", r["numpy"].numpy().astype(np.uint32), r["numpy_pos"], 0, 0.0))
        if torch.cuda.is_available() and r["cuda"].numel():
            torch.cuda.set_rng_state(r["cuda"])

    def _gather_rng(self) -> list[dict]:
        """Every rank's RNG states, in rank order (a collective)."""
        if self.world == 1:
            return [self.rng_state()]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, self.rng_state())
        return out

    def training_state(self, rng_per_rank: list[dict]) -> dict:
        return {"step": self.step, "images_seen": self.step * self.cfg.train.batch_size * self.cfg.train.d_steps,
                "opt_G": self.G.opt.state_dict(), "opt_D": self.D.opt.state_dict(),
                "scaler_G": self.G.scaler.state_dict() if self.G.scaler else {},
                "scaler_D": self.D.scaler.state_dict() if self.D.scaler else {},
                # Noise, dropout and data order are reseeded from (seed, rank, step) every step, so these
                # are not needed for an exact resume; they are restored when the world size is unchanged.
                "rng_per_rank": rng_per_rank, "best": self.best}

    def save_checkpoint(self, name: str | None = None) -> Path:
        """A collective: every rank calls it. ``name="best"`` writes checkpoints/best (see checkpoint.save).
        Rank 0 writes; a failure (disk full) raises CheckpointError on every rank, previous checkpoints intact."""
        self.check_guard()  # never write a checkpoint from a diverged state
        self._refresh_ema_bn()
        self.check_replicas()
        self._sync_buffers()
        rng = self._gather_rng()

        def write() -> Path:
            weights = {"G.safetensors": ckpt_lib.plain_state_dict(self.G.net),
                       "D.safetensors": ckpt_lib.plain_state_dict(self.D.net)}
            if self.G_ema is not None:
                weights["G_ema.safetensors"] = ckpt_lib.plain_state_dict(self.G_ema)
            extra_best = {"best": self.best} if name else {}
            j = self.step * self.cfg.train.d_steps
            epoch, offset = self.data.position(j)
            extra = {"images_seen": j * self.cfg.train.batch_size, "world_size": self.world,
                     "data": {"global_batches": j, "epoch": epoch, "batch_in_epoch": offset},
                     "config": self.cfg.to_dict(), **extra_best}
            return ckpt_lib.save(self.ckpt_root, self.step, weights, self.training_state(rng), extra,
                                 self.cfg.train.keep_last, name=name)

        return self.rank0.collective(write)

    def _load(self, path: Path) -> None:
        ckpt_lib.load_weights(path, "G.safetensors", self.G.net)
        ckpt_lib.load_weights(path, "D.safetensors", self.D.net)
        if self.G_ema is not None:
            name = "G_ema.safetensors" if (path / "G_ema.safetensors").exists() else "G.safetensors"
            ckpt_lib.load_weights(path, name, self.G_ema)
        state = ckpt_lib.load_state(path)
        self.G.opt.load_state_dict(state["opt_G"])
        self.D.opt.load_state_dict(state["opt_D"])
        for net, key in ((self.G, "scaler_G"), (self.D, "scaler_D")):
            if net.scaler is not None and state.get(key):
                net.scaler.load_state_dict(state[key])
        self.step = int(state["step"])
        self.best = state.get("best")
        if self.best is not None and self.best.get("metric") != self.cfg.eval.best_metric:
            self.best = None  # another figure selects from now on; the next evaluation starts a new best
        rngs = state.get("rng_per_rank") or []
        if len(rngs) == self.world:
            self.set_rng_state(rngs[self.rank])
        if self.step > self.cfg.train.max_steps:
            raise ConfigError(f"checkpoint {path} is at step {self.step}, beyond train.max_steps="
                              f"{self.cfg.train.max_steps}; raise train.max_steps to continue")
