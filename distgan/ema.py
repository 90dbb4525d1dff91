"""Exponential moving average of the generator's weights, with a half-life counted in images."""

from __future__ import annotations

import copy

import torch
from torch import nn

from distgan.runtime import broadcast_
from distgan.torch_private import copy_, is_batchnorm, lerp_


def ema_beta(batch_images: int, halflife_images: float, images_seen: int = 0, rampup: float = 0.0) -> float:
    """Per-update decay so that a weight's influence halves every ``halflife_images`` images.

    With ``rampup`` the half-life is capped at ``rampup * images_seen`` (StyleGAN2-ADA), so the average
    does not remember the random initialisation for long at the start of a run.
    """
    h = halflife_images
    if rampup > 0:
        h = min(h, max(images_seen, batch_images) * rampup)
    return 0.5 ** (batch_images / max(h, 1e-8))


def make_ema(generator: nn.Module) -> nn.Module:
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters; buffers (BatchNorm statistics) are copied."""
    lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - beta)
    e_bufs, m_bufs = list(ema.buffers()), list(model.buffers())
    if e_bufs:
        copy_(e_bufs, m_bufs)  # one kernel for all BatchNorm statistics, not one per buffer


def recalibrate_batchnorm(net: nn.Module, noise_batches, device=None) -> bool:
    """Re-estimate every BatchNorm layer's running mean and variance as the plain average over
    ``noise_batches`` (an iterable of inputs, moved to ``device``) of the net's own batch statistics, with
    ``torch.optim.swa_utils.update_bn``. Returns False (and changes nothing) when the net has no BatchNorm.

    An EMA of weights paired with the live net's running statistics is a mismatch: the averaged weights
    produce other activations. Averaging the statistics does not fix it; recomputing them does.
    """
    if not any(is_batchnorm(m) for m in net.modules()):
        return False
    torch.optim.swa_utils.update_bn(noise_batches, net, device)
    return True


class GeneratorAverage:
    """The EMA generator a run samples, scores and saves (``module``), with its upkeep: the update after
    every step, and the BatchNorm statistics recomputed before it is used (at most once per step).

    ``bn_batches`` batches of ``batch`` fixed noise vectors; rank 0 computes the statistics and the other
    ranks receive them (with SyncBatchNorm every rank takes part, on the same noise)."""

    def __init__(
        self,
        G: nn.Module,
        halflife_images: float,
        rampup: float,
        bn_batches: int,
        batch: int,
        seed: int,
        noise_fn,
        rank: int = 0,
        world: int = 1,
        sync_batchnorm: bool = False,
    ):
        self.module = make_ema(G)
        self.halflife, self.rampup, self.bn_batches, self.batch, self.seed = (
            halflife_images,
            rampup,
            bn_batches,
            batch,
            seed,
        )
        self.noise_fn, self.rank, self.world, self.sync_bn = noise_fn, rank, world, sync_batchnorm
        self._bn_step: int | None = None

    def update(self, G: nn.Module, step: int) -> None:
        """After step ``step`` (0-based) of a global batch of ``batch`` images."""
        beta = ema_beta(self.batch, self.halflife, (step + 1) * self.batch, self.rampup)
        update_ema(self.module, G, beta)

    def refresh_batchnorm(self, step: int, device) -> bool:
        """Recompute the BatchNorm statistics for the averaged weights, unless done at this step already.
        Training never reads them (the next update copies G's again). True if they were recomputed."""
        if not self.bn_batches or self._bn_step == step:
            return False
        g = torch.Generator().manual_seed(self.seed + 0xB17)
        noise = (self.noise_fn(self.batch, g) for _ in range(self.bn_batches))
        if self.rank == 0 or self.sync_bn:
            recalibrate_batchnorm(self.module, noise, device)
        if self.world > 1 and not self.sync_bn:
            broadcast_(list(self.module.buffers()))
        self._bn_step = step
        return True
