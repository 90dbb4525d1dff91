"""Typed run configuration: dataclasses, YAML loading, environment and dotted command-line overrides.

Precedence, lowest to highest: dataclass defaults < YAML file < environment (``DISTGAN_DATA_DIR``,
``WANDB_MODE``) < command line (``train.max_steps=200``). Unknown keys, wrong types and impossible values fail at
load time with a :class:`ConfigError` that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distgan.augment import parse as parse_augment
from distgan.errors import ConfigError  # noqa: F401 - re-exported: ``from distgan.config import ConfigError``
from distgan.losses import LOSSES
from distgan.metrics.suite import (
    RGB_METRICS,
    classifier_metrics,
    figures_of,
    metrics_at_28px,
    needs_inception,
    parse_metrics,
)
from distgan.networks import DISCRIMINATORS, GENERATORS, RESNET_DEFAULT_WIDTH, RESNETS, SPECTRAL_NORM
from distgan.networks.r3gan import SIZES as R3GAN_SIZES
from distgan.networks.r3gan import stage_widths as r3gan_stage_widths

IDENTITY_KEYS = (
    "train.batch_size",
    "train.d_steps",
    "train.seed",
    "optim.name",
    "model.*",
    "data.dataset",
    "data.urls",
    "data.image_size",
    "data.channels",
    "data.holdout_shards",
)
"""Config keys that define *what* is trained. A resume that changes one of them is refused unless the key
is named in ``train.allow_changed`` (``model.*`` stands for every key of the model section). An allowed
change of ``optim.name`` starts the new optimizer fresh: another optimizer's state does not carry over."""


def _choices(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {sorted(allowed)}")


def _positive(name: str, value, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{name}={value!r} must be {'>= 0' if zero_ok else '> 0'}")


@dataclass
class ModelConfig:
    generator: str = "paper_mlp"
    """Generator architecture, a key of ``distgan.networks.GENERATORS``."""
    discriminator: str = "paper_maxout"
    """Discriminator architecture, a key of ``distgan.networks.DISCRIMINATORS``."""
    z_dim: int = 100
    """Dimension of the noise vector z."""
    noise: Literal["uniform", "normal"] = "uniform"
    """Noise distribution: ``uniform`` in [-sqrt(3), sqrt(3)] (unit variance, the paper's) or ``normal``."""
    width: int = 0
    """Architecture-specific width (hidden units or base channels); 0 keeps the architecture's default."""
    sync_batchnorm: bool = False
    """Convert BatchNorm layers to SyncBatchNorm under DDP (conv nets)."""
    d_spectral_norm: bool = False
    """Spectral normalisation on every layer of D (``dcgan``); pair it with ``loss.name=hinge``."""
    blocks: int = 0
    """``r3gan``: residual blocks per resolution stage (0: the architecture's default, 2)."""
    cardinality: int = 0
    """``r3gan``: groups of each block's 3x3 convolution (ResNeXt cardinality); the block's inner width,
    2 x ``width`` (2 x each of ``widths``), must divide by it (0: the architecture's default, 8)."""
    widths: tuple[int, ...] = ()
    """``r3gan``: channels of each resolution stage, lowest resolution first (28 px: 7, 14, 28; 32 px: 4 to
    32; 64 px: 4 to 64), e.g. ``[256, 128, 64]``; in place of ``width``, which every stage has when empty.
    A channel at half the resolution costs a quarter as much, so widening the low stages buys capacity cheaply."""

    def __post_init__(self):

        _choices("model.generator", self.generator, GENERATORS)
        _choices("model.discriminator", self.discriminator, DISCRIMINATORS)
        _choices("model.noise", self.noise, {"uniform", "normal"})
        _positive("model.z_dim", self.z_dim)
        _positive("model.width", self.width, zero_ok=True)
        _positive("model.blocks", self.blocks, zero_ok=True)
        _positive("model.cardinality", self.cardinality, zero_ok=True)
        for i, w in enumerate(self.widths):
            _positive(f"model.widths[{i}]", w)
        uses = [n for n in ("generator", "discriminator") if getattr(self, n) in RESNETS]
        if (self.blocks or self.cardinality or self.widths) and not uses:
            raise ConfigError(
                f"model.blocks, model.cardinality and model.widths apply to the residual networks "
                f"{sorted(RESNETS)}; model.generator={self.generator!r} and "
                f"model.discriminator={self.discriminator!r} take none of them"
            )
        if uses and self.cardinality:
            for w, key in [(w, "model.widths") for w in self.widths] or [(self.width, "model.width")]:
                inner = 2 * (w or RESNET_DEFAULT_WIDTH)
                if inner % self.cardinality:
                    raise ConfigError(
                        f"model.cardinality={self.cardinality} must divide the blocks' inner width 2 x {key} = "
                        f"{inner}; choose a divisor of {inner}"
                    )


@dataclass
class DataConfig:
    dataset: Literal["mnist", "webdataset"] = "mnist"
    """``mnist``: train[0:50000] for training (train[50000:60000] is validation), held on the device.
    ``webdataset``: images streamed from tar shards (``data.urls``), see ``distgan.data.stream``."""
    root: str = "data"
    """Directory holding ``MNIST/raw/*-idx?-ubyte`` (torchvision layout); overridden by $DISTGAN_DATA_DIR.
    Also where the MNIST-based metrics find the test set."""
    download: bool = True
    """Download MNIST into ``root`` when the files are missing (needs internet)."""
    urls: str = ""
    """webdataset: shard URLs in brace notation, e.g. ``shards/train-{000000..000099}.tar``; local paths,
    ``pipe:curl -s -L https://...`` or ``pipe:aws s3 cp s3://... -``."""
    image_size: int = 28
    """webdataset: square image size in pixels (32 or 64 for the ``dcgan`` networks)."""
    channels: int = 1
    """webdataset: 1 (grayscale) or 3 (RGB)."""
    workers: int = 2
    """webdataset: DataLoader worker processes per rank that read and decode shards (0: in the training process)."""
    shuffle_buffer: int = 1000
    """webdataset: samples held per worker for shuffling across shards."""
    in_memory: bool = False
    """webdataset: read every shard once at start into a device tensor and sample like MNIST (small
    datasets; also the reference row of ``distgan.bench --stream``)."""
    samples_per_epoch: int = 0
    """webdataset: samples in one pass over the shards, for epoch-based schedules and logging (0: read
    ``{prefix}-meta.json`` beside the first local shard if there is one)."""
    augment: str = ""
    """Differentiable augmentation of every image D sees (DiffAugment; distgan/augment.py): a comma list of
    ``color``, ``translation``, ``cutout``, applied to reals and fakes alike in D's and G's phases and before
    R1/R2, drawn per image from (seed, rank, step). Empty: off."""
    augment_p: float = 1.0
    """Probability of each ``data.augment`` policy per image (StyleGAN2-ADA's p); 1: always (DiffAugment).
    With ``data.ada_target`` set, p starts here and the controller moves it."""
    ada_target: float = 0.0
    """Adaptive augmentation (StyleGAN2-ADA): the target of r_t = E[sign(D(x))] on the training reals (for
    rpgan, of sign(D(x) - D(G(z))) over its pairs); 0.6 is ADA's. p rises while r_t is above it (D
    overfitting) and falls below it. 0: p fixed at ``data.augment_p``. Logged as aug/p and aug/rt."""
    ada_interval: int = 4
    """Adaptive augmentation: steps between adjustments of p (one all-reduce of two numbers each)."""
    ada_images: int = 500_000
    """Adaptive augmentation: images over which p can move from 0 to 1 (ADA's 500k)."""
    val_urls: str = ""
    """webdataset: held-out shards (same notation as ``urls``) that in-training Inception metrics
    (``eval.metrics=fid,...``) compare against; never trained on."""
    holdout_shards: int = 0
    """webdataset: hold the last this many shards of ``urls`` out of training and use them as ``val_urls``
    (0: none). Changes which images train: an identity key."""

    def __post_init__(self):
        _choices("data.dataset", self.dataset, {"mnist", "webdataset"})
        _choices("data.channels", self.channels, {1, 3})
        _positive("data.image_size", self.image_size)
        _positive("data.workers", self.workers, zero_ok=True)
        _positive("data.shuffle_buffer", self.shuffle_buffer, zero_ok=True)
        _positive("data.samples_per_epoch", self.samples_per_epoch, zero_ok=True)
        try:
            parse_augment(self.augment)
        except ValueError as e:
            raise ConfigError(f"data.augment={self.augment!r}: {e}") from None
        if not 0.0 <= self.augment_p <= 1.0:
            raise ConfigError(f"data.augment_p={self.augment_p} is a probability: choose a value in [0, 1]")
        if not 0.0 <= self.ada_target < 1.0:
            raise ConfigError(
                f"data.ada_target={self.ada_target}: a target for E[sign(D(x))] in (0, 1) (ADA uses 0.6), or 0 for off"
            )
        if self.ada_target and not self.augment.strip():
            raise ConfigError(
                "data.ada_target adapts the probability of data.augment's policies, and data.augment is empty; "
                "set data.augment (e.g. data.augment=translation,cutout,color)"
            )
        _positive("data.ada_interval", self.ada_interval)
        _positive("data.ada_images", self.ada_images)
        _positive("data.holdout_shards", self.holdout_shards, zero_ok=True)
        if self.val_urls.strip() and self.holdout_shards:
            raise ConfigError("data.val_urls and data.holdout_shards both name validation shards; set one of them")
        if (self.val_urls.strip() or self.holdout_shards) and self.dataset != "webdataset":
            raise ConfigError(
                "data.val_urls and data.holdout_shards are for data.dataset=webdataset; MNIST runs validate on "
                "train[50000:60000]"
            )
        if self.dataset == "webdataset" and not self.urls.strip():
            raise ConfigError(
                "data.dataset=webdataset needs data.urls, e.g. data.urls='shards/train-{000000..000009}.tar' "
                "(write shards with `python -m distgan.data.make_shards`)"
            )
        if self.dataset == "mnist" and (self.image_size, self.channels) != (28, 1):
            raise ConfigError(
                f"data.dataset=mnist is 28x28x1; data.image_size={self.image_size} and data.channels="
                f"{self.channels} need data.dataset=webdataset (make_shards --from mnist --size N)"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


@dataclass
class LossConfig:
    name: str = "nonsaturating"
    """GAN loss, a key of ``distgan.losses.LOSSES``: minimax (Algorithm 1), nonsaturating (paper s.3), hinge,
    rpgan (relativistic pairing, R3GAN). rpgan's G step needs real images: it judges this rank's real
    micro-batch of the last D update again (no extra data read), one D forward of [real, fake], so D's
    forward and input-backward in G's phase cover twice the images of the other losses."""
    r1_gamma: float = 0.0
    """R1 penalty weight (Mescheder et al. 2018): gamma/2 E||grad_x D(x)||^2 on real images (0: off)."""
    r2_gamma: float = 0.0
    """R2 penalty weight: gamma/2 E||grad D(G(z))||^2 on the fakes of the last D update (0: off). With R1
    and rpgan it is the R3GAN objective; R1 and R2 share one D forward and one update (d_reg_step)."""
    r1_every: int = 16
    """Apply R1 and R2 every this many steps, scaled by the interval: lazy regularisation (StyleGAN2) for
    more than 1, every step (R3GAN) for 1. A second D update after the main one, eager fp32, outside
    torch.compile (double backward does not compile)."""
    gamma_end: float = 0.0
    """R1 and R2 weights at the end of the cosine schedule over ``optim.cosine_images`` images; both follow
    the same curve, R2 in proportion to R1 (R3GAN decays gamma 10x). 0: constant weights."""

    def __post_init__(self):

        _choices("loss.name", self.name, LOSSES)
        _positive("loss.r1_gamma", self.r1_gamma, zero_ok=True)
        _positive("loss.r2_gamma", self.r2_gamma, zero_ok=True)
        _positive("loss.r1_every", self.r1_every)
        _positive("loss.gamma_end", self.gamma_end, zero_ok=True)
        if self.gamma_end and not (self.r1_gamma or self.r2_gamma):
            raise ConfigError(
                f"loss.gamma_end={self.gamma_end} schedules the R1/R2 weights, but loss.r1_gamma and "
                f"loss.r2_gamma are 0; set one of them or leave loss.gamma_end=0"
            )


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam"] = "adam"
    """Optimizer for both networks: ``sgd`` (with momentum, the paper's) or ``adam``."""
    lr: float = 2e-4
    """Learning rate of D (and of G unless ``lr_g`` is set)."""
    lr_g: float = 0.0
    """Learning rate of G; 0 means the same as ``lr``."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam betas."""
    momentum: float = 0.5
    """SGD momentum at step 0."""
    final_momentum: float = 0.5
    """SGD momentum reached linearly at ``momentum_saturate_epochs``."""
    momentum_saturate_epochs: float = 250.0
    """Epoch (of the training split at the global batch size) where momentum reaches ``final_momentum``."""
    lr_decay: float = 1.0
    """Per-step exponential decay: lr_t = lr / lr_decay**t (the paper: 1.000004)."""
    min_lr: float = 0.0
    """Floor of the decayed learning rate (the paper: 1e-6)."""
    linear_decay_start: int = 0
    """From this step on, both learning rates fall linearly to 0 at ``train.max_steps`` (SNGAN's
    schedule; the EMA then averages ever smaller moves). 0: off."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many steps (0: none)."""
    lr_end: float = 0.0
    """Cosine schedule over images seen (R3GAN): D's learning rate goes from ``lr`` to this along half a
    cosine over ``cosine_images`` images, G's in proportion. 0: no cosine on the learning rate."""
    beta2_end: float = 0.0
    """Cosine schedule of Adam's beta2 from ``betas[1]`` to this over ``cosine_images`` images (R3GAN: 0.9 to
    0.99). 0: constant beta2."""
    cosine_images: int = 0
    """Images (global batch x d_steps per step) over which the cosine schedules of ``lr_end``,
    ``beta2_end`` and ``loss.gamma_end`` run, then hold their end values. 0: the whole run (max_steps)."""
    weight_decay: float = 0.0
    """L2 weight decay for both networks."""

    def __post_init__(self):
        _choices("optim.name", self.name, {"sgd", "adam"})
        _positive("optim.lr", self.lr)
        _positive("optim.lr_g", self.lr_g, zero_ok=True)
        _positive("optim.min_lr", self.min_lr, zero_ok=True)
        _positive("optim.warmup_steps", self.warmup_steps, zero_ok=True)
        _positive("optim.linear_decay_start", self.linear_decay_start, zero_ok=True)
        _positive("optim.weight_decay", self.weight_decay, zero_ok=True)
        _positive("optim.lr_end", self.lr_end, zero_ok=True)
        _positive("optim.cosine_images", self.cosine_images, zero_ok=True)
        if not 0.0 <= self.beta2_end < 1.0:
            raise ConfigError(f"optim.beta2_end={self.beta2_end} must be in [0, 1) (0: constant beta2)")
        if self.beta2_end and self.name != "adam":
            raise ConfigError(f"optim.beta2_end schedules Adam's beta2; optim.name={self.name!r} has none")
        if self.lr_decay < 1.0:
            raise ConfigError(f"optim.lr_decay={self.lr_decay} must be >= 1 (lr_t = lr / lr_decay**t)")
        for name in ("momentum", "final_momentum"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"optim.{name}={v} must be in [0, 1)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")


@dataclass
class EMAConfig:
    enabled: bool = True
    """Keep an exponential moving average of G's weights (used for sampling by default)."""
    halflife_images: float = 10_000.0
    """Half-life of the EMA in training images: beta = 0.5 ** (global_batch / halflife_images)."""
    rampup: float = 0.05
    """Cap the half-life at ``rampup`` x images seen, so early averages do not remember the init (0: off)."""
    bn_batches: int = 40
    """Before the EMA generator is sampled, scored or saved, re-estimate its BatchNorm statistics from this
    many batches of its own forward passes (fixed noise): G's running statistics belong to G's weights, not
    the average's. 0: copy G's statistics. No effect on networks without BatchNorm."""

    def __post_init__(self):
        _positive("ema.halflife_images", self.halflife_images)
        _positive("ema.rampup", self.rampup, zero_ok=True)
        _positive("ema.bn_batches", self.bn_batches, zero_ok=True)


@dataclass
class TrainConfig:
    max_steps: int = 10_000
    """Number of steps; one step = k D updates followed by one G update."""
    batch_size: int = 100
    """Global batch size (all ranks together) for every D and G update."""
    d_steps: int = 1
    """k: discriminator updates per generator update (Algorithm 1), each on fresh data and noise."""
    grad_accum: int = 1
    """Micro-batches per update (per-rank batch = batch_size / (world_size x grad_accum))."""
    seed: int = 0
    """Seed; noise, dropout and data order derive from (seed, rank, step)."""
    ckpt_every: int = 1000
    """Write a checkpoint every this many steps (and at the end)."""
    keep_last: int = 3
    """Keep this many recent checkpoints (older ones are deleted after a new one is complete)."""
    resume: str = "no"
    """``no`` (refuse a run dir that has checkpoints), ``auto`` (latest good checkpoint, fresh if none) or a path."""
    allow_changed: str = ""
    """Comma list of identity keys (``distgan.config.IDENTITY_KEYS``: batch size, k, seed, optimizer, model,
    data) that may differ from the resumed checkpoint's config; any other change is refused. Accepted changes
    are recorded in ``RUN/runs.jsonl``; a changed optimizer starts fresh."""
    log_every: int = 50
    """Read, reduce and log metrics every this many steps (no host sync in between). Ranks also agree here
    whether a stop signal (SIGTERM, SIGUSR1) arrived on any of them: a stop takes effect within this many
    steps."""
    sample_every: int = 1000
    """Log a grid of the EMA generator on fixed noise every this many steps (0: only at the end)."""
    consistency_every: int = 0
    """Compare replica checksums of G, D and EMA every this many steps (0: only at checkpoints)."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    nonfinite: Literal["skip", "stop"] = "skip"
    """Non-finite gradients (checked on device after the all-reduce, so every rank decides alike):
    ``skip`` the update (parameters and optimizer state untouched), or ``stop`` the run (exit code 3)
    keeping the last good checkpoint. Checked on the host every log_every steps and before checkpoints."""
    max_skip_streak: int = 20
    """Stop (exit code 3) after this many consecutive steps with an update skipped for non-finite gradients."""

    def __post_init__(self):
        _choices("train.nonfinite", self.nonfinite, {"skip", "stop"})
        _positive("train.max_skip_streak", self.max_skip_streak)
        for name in ("max_steps", "batch_size", "d_steps", "grad_accum", "ckpt_every", "keep_last", "log_every"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("sample_every", "consistency_every"):
            _positive(f"train.{name}", getattr(self, name), zero_ok=True)
        if self.resume not in ("no", "auto") and not self.resume:
            raise ConfigError("train.resume must be 'no', 'auto' or a checkpoint path")
        for k in (x.strip() for x in self.allow_changed.split(",") if x.strip()):
            if k not in IDENTITY_KEYS and not (k.startswith("model.") and "model.*" in IDENTITY_KEYS):
                raise ConfigError(
                    f"train.allow_changed: {k!r} is not an identity key; name keys from "
                    f"{list(IDENTITY_KEYS)} (model.* or one model key such as model.width)"
                )


@dataclass
class RuntimeConfig:
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision: ``auto`` = bf16 on a GPU with native bf16, else fp32; ``fp16`` uses one loss scaler
    per network."""
    cpu: bool = False
    """Force the CPU even when a GPU is present."""
    tf32: bool = True
    """Allow TF32 matmuls on GPUs."""
    threads: int = 0
    """torch intra-op threads per process on the CPU; 0 leaves torch's default."""
    pg_timeout_s: int = 600
    """Process-group timeout in seconds: a desynchronised collective fails after this long."""
    expected_world_size: int = 0
    """Fail at start unless the world size equals this (0: accept any); the launcher's own figure is also checked."""
    fp16_init_scale: float = 65536.0
    """fp16: the loss scalers' initial scale (torch's default, 2**16); they halve it on every overflow."""
    channels_last: bool = True
    """On CUDA, hold conv nets' weights and activations channels-last (NHWC: tensor-core convolutions without
    layout transposes). A switch so ``distgan.bench`` can measure it on each GPU (grouped convolutions may
    prefer NCHW); no effect on the CPU."""
    keep_host_memory: bool = True
    """On Linux (glibc), keep freed host memory for the next step instead of handing large blocks back to the
    kernel at every free (see runtime.keep_freed_host_memory: 2x on a CPU R3GAN step). The process then keeps
    its peak memory."""
    allow_cpu_fp16: bool = False
    """Test-only: allow runtime.precision=fp16 on the CPU (float16 autocast and GradScaler("cpu") exist there,
    slowly), so every loss-scaler path runs in CI. Refused otherwise."""

    def __post_init__(self):
        _choices("runtime.precision", self.precision, {"auto", "no", "bf16", "fp16"})
        _positive("runtime.threads", self.threads, zero_ok=True)
        _positive("runtime.pg_timeout_s", self.pg_timeout_s)
        _positive("runtime.fp16_init_scale", self.fp16_init_scale)
        if self.precision == "fp16" and self.cpu and not self.allow_cpu_fp16:
            raise ConfigError(
                "runtime.precision=fp16 needs a GPU; on the CPU use 'no' or 'bf16' "
                "(runtime.allow_cpu_fp16=true is for tests)"
            )


@dataclass
class CompileConfig:
    enabled: bool = False
    """torch.compile the G and D forward/backward (before DDP wrapping; see runtime.maybe_compile)."""
    mode: Literal["default", "max-autotune", "reduce-overhead"] = "default"
    """torch.compile mode; ``reduce-overhead`` uses CUDA graphs on a GPU."""
    fallback_random: bool = False
    """Inductor draws random numbers (dropout) as eager does; slower, for comparing compiled and eager runs."""

    def __post_init__(self):
        _choices("compile.mode", self.mode, {"default", "max-autotune", "reduce-overhead"})


@dataclass
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """``auto``: online when an API key is set, else offline. $WANDB_MODE sets it at the environment's level
    (a command-line ``wandb.mode=...`` still wins)."""
    project: str = "distgan"
    """W&B project."""
    entity: str = ""
    """W&B entity (team or user); empty for the default."""
    name: str = ""
    """Run name; empty uses the run dir's name."""

    def __post_init__(self):
        _choices("wandb.mode", self.mode, {"auto", "online", "offline", "disabled"})


@dataclass
class EvalConfig:
    every: int = 0
    """Score the (EMA) generator every this many steps and at the end (0: never); see ``distgan.metrics``."""
    num: int = 5_000
    """Samples generated for each in-training evaluation, split over the ranks in blocks."""
    metrics: str = "fd,cs,modes"
    """Comma list of metrics (``distgan.metrics.suite.METRICS``); fd, cs and modes take seconds. ``overfit``
    (any data): D's mean logit on training reals, held-out reals and fakes, and ``d_overfit``, how far
    held-out reals have moved towards fakes (StyleGAN2-ADA's overfitting measure; ``metrics/overfit.py``)."""
    best_metric: str = "fd"
    """Keep the checkpoint with the best value of this figure as ``checkpoints/best`` (empty: no best).
    Lower is better for fd, mode_kl and memorised_share; higher for the others."""
    seed: int = 12345
    """Seed of the evaluation noise: the same samples every time, so figures compare across steps."""
    block: int = 500
    """Samples per generation block (the unit of work per rank)."""
    inception_weights: str = ""
    """Inception-v3 weights for fid, kid, is and ipr (torch-fidelity's file); empty: $DISTGAN_INCEPTION_WEIGHTS,
    else torch-fidelity's own cache. Never downloaded at run time (``distgan.metrics.inception``)."""
    classifier: str = ""
    """A classifier file of ``python -m distgan.metrics.train_classifier --shards`` (your labelled shards): fd,
    cs, modes and pr in its features against the held-out shards, for any image size; empty: the shipped
    MNIST classifier (28x28 data)."""
    reference_num: int = 0
    """Validation images the Inception reference statistics are made of (0: all of them). Cached by the
    data's content hash and the weights (``$DISTGAN_CACHE_DIR/inception``)."""

    def __post_init__(self):

        _positive("eval.every", self.every, zero_ok=True)
        _positive("eval.num", self.num)
        _positive("eval.block", self.block)
        _positive("eval.reference_num", self.reference_num, zero_ok=True)
        try:
            names = parse_metrics(self.metrics)
        except ValueError as e:
            raise ConfigError(f"eval.metrics={self.metrics!r}: {e}") from None
        if self.best_metric:
            allowed = figures_of(names)
            if self.best_metric not in allowed:
                raise ConfigError(
                    f"eval.best_metric={self.best_metric!r} is not a figure of eval.metrics="
                    f"{self.metrics!r}; choose one of {sorted(allowed)} or '' for no best checkpoint"
                )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):

        c, h, w = self.data.image_shape
        m = self.model
        if "dcgan28" in (m.generator, m.discriminator) and (h, w) != (28, 28):
            raise ConfigError(
                f"model dcgan28 makes 28x28 images but the data are {h}x{w}; use model.generator=dcgan "
                f"and model.discriminator=dcgan for 32 or 64 px"
            )
        if "dcgan" in (m.generator, m.discriminator) and h not in (32, 64):
            raise ConfigError(
                f"model dcgan makes 32x32 or 64x64 images but data.image_size={h}; use 32 or 64 (or dcgan28 for 28)"
            )
        if "r3gan" in (m.generator, m.discriminator) and (h not in R3GAN_SIZES or h != w):
            raise ConfigError(
                f"model r3gan makes {sorted(R3GAN_SIZES)} px square images but the data are {h}x{w}; set "
                f"data.image_size to one of them"
            )
        if m.widths:
            try:
                r3gan_stage_widths(h, m.width, m.widths)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if m.d_spectral_norm and m.discriminator not in SPECTRAL_NORM:
            raise ConfigError(
                f"model.d_spectral_norm=true is available for discriminators {sorted(SPECTRAL_NORM)}, "
                f"not {m.discriminator!r}"
            )
        if self.eval.every:
            metrics = parse_metrics(self.eval.metrics)
            mnist_like = classifier_metrics(metrics)
            if self.eval.classifier:
                wrong = [x for x in mnist_like if x not in ("fd", "cs", "modes", "pr")]
                if wrong:
                    raise ConfigError(
                        f"eval.metrics: {wrong} need MNIST; with eval.classifier use fd, cs, modes, pr (and fid, kid, "
                        f"is, ipr)"
                    )
            elif (at_28px := metrics_at_28px(metrics)) and (h, w) != (28, 28):
                raise ConfigError(
                    f"eval.metrics={self.eval.metrics!r}: {at_28px} use an MNIST classifier and need 28x28 images; "
                    f"the data are {c}x{h}x{w}. Use the Inception metrics (eval.metrics=fid,kid "
                    f"and eval.best_metric=fid), a classifier of your labelled shards (eval.classifier, made by "
                    f"python -m distgan.metrics.train_classifier --shards), or eval.every=0"
                )
            d = self.data
            held_out = needs_inception(metrics) or (self.eval.classifier and mnist_like) or "overfit" in metrics
            if held_out and d.dataset == "webdataset" and not (d.val_urls.strip() or d.holdout_shards):
                raise ConfigError(
                    f"eval.metrics={self.eval.metrics!r} compares against held-out images: set data.val_urls "
                    f"(shards never trained on) or data.holdout_shards=N (the last N shards of data.urls)"
                )
            wrong = [m for m in mnist_like if (m in RGB_METRICS) != (c == 3) and not self.eval.classifier]
            if wrong:
                raise ConfigError(
                    f"eval.metrics: {wrong} do not apply to {c}-channel data; use 'stacked' for "
                    f"3-channel Stacked MNIST and fd,cs,modes,pr,nn,parzen for MNIST"
                )

    def to_dict(self) -> dict:
        def conv(v):
            if isinstance(v, tuple):
                return list(v)
            return v

        return {
            s.name: {k: conv(v) for k, v in dataclasses.asdict(getattr(self, s.name)).items()}
            for s in dataclasses.fields(self)
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------- loading


def _coerce(key: str, value: Any, tp) -> Any:
    """Check ``value`` against the annotation ``tp``; parse strings from the command line."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}={value!r} must be a list, e.g. [256, 128, 64] (or [] for none)")
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must be a list of {len(args)} values, e.g. [0.5, 0.999]")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation for {key}")
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be a boolean (true or false)")
    if tp is int:
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{key}={value!r} must be an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer, got {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r} must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):  # nan passes every comparison, inf every lower bound
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list, bool)):
            raise ConfigError(f'{key}={value!r} must be a string (quote it in YAML: "no", not no)')
        return str(value)
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _section_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set(raw: dict, dotted: str, value: Any) -> None:
    section, _, name = dotted.partition(".")
    if not name or "." in name:
        raise ConfigError(f"override {dotted!r} must look like section.key=value, e.g. train.max_steps=200")
    raw.setdefault(section, {})[name] = value


def build(raw: dict) -> Config:
    """Turn a nested dict into a validated :class:`Config`; unknown sections and keys are errors."""
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping of sections (model, data, train, ...)")
    top = _section_types(Config)
    sections = {}
    for sname, values in raw.items():
        if sname not in top:
            raise ConfigError(f"unknown config section {sname!r}; allowed: {sorted(top)}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section {sname!r} must be a mapping of keys, got {values!r}")
        cls = top[sname]
        hints = _section_types(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"unknown config key {sname}.{key}; allowed keys in {sname}: {sorted(hints)}")
            kwargs[key] = _coerce(f"{sname}.{key}", value, hints[key])
        sections[sname] = cls(**kwargs)
    return Config(**sections)


def load(path: str | os.PathLike | None, overrides: list[str] = (), env: dict | None = None) -> Config:
    """Load a YAML config, apply environment and ``key=value`` overrides, validate, resolve paths."""
    env = os.environ if env is None else env
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pick one from configs/")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
        raw = {k: dict(v or {}) if isinstance(v, dict) or v is None else v for k, v in raw.items()}
    if env.get("DISTGAN_DATA_DIR"):
        _set(raw, "data.root", env["DISTGAN_DATA_DIR"])
    if env.get("WANDB_MODE"):  # W&B's own variable, at the environment's level: wandb.mode=... still wins
        mode = {"dryrun": "offline", "run": "online"}.get(env["WANDB_MODE"], env["WANDB_MODE"])
        if mode not in ("online", "offline", "disabled"):
            raise ConfigError(f"WANDB_MODE={env['WANDB_MODE']!r} is not a W&B mode; use online, offline or disabled")
        _set(raw, "wandb.mode", mode)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.max_steps=200")
        key, _, value = item.partition("=")
        _set(raw, key.strip(), value)  # a string; _coerce parses it by the field's type
    cfg = build(raw)
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.train.resume not in ("no", "auto"):
        cfg.train.resume = str(Path(cfg.train.resume).expanduser().resolve())
    return cfg


# ------------------------------------------------------------------------------------ reference
def field_docs(cls) -> dict[str, str]:
    """{field: its docstring} from the source (the string literal under each field)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            out[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return out


def reference() -> str:
    """Every config key with its type, default and docstring, as Markdown (docs/config.md;
    ``python -m distgan.train --help-config``)."""
    lines = [
        "# Config reference",
        "",
        "Generated from the docstrings in `distgan/config.py` by `python -m distgan.train --help-config`; a test",
        "keeps this file in sync. Set keys in a YAML file (`section:` then `key: value`) or on the command line",
        "(`section.key=value`); the command line wins over the environment (`DISTGAN_DATA_DIR`, `WANDB_MODE`),",
        "which wins over the file. Unknown keys, wrong types and impossible values are errors at load time.",
        "",
    ]
    defaults = Config()
    for sec in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[sec.name]
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        lines += [f"## {sec.name}", "", "| key | type | default | what |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            tname = (
                " \\| ".join(repr(a) for a in typing.get_args(tp))
                if typing.get_origin(tp) is Literal
                else f"list of {typing.get_args(tp)[0].__name__}"
                if typing.get_args(tp)[1:] == (Ellipsis,)
                else getattr(tp, "__name__", str(tp)).replace("|", "\\|")
            )
            default = getattr(getattr(defaults, sec.name), f.name)
            default = list(default) if isinstance(default, tuple) else default
            doc = docs.get(f.name, "").replace("``", "`").replace("|", "\\|")
            lines.append(f"| `{sec.name}.{f.name}` | {tname} | `{default!r}` | {doc} |")
        lines.append("")
    return "\n".join(lines)
