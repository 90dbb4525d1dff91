"""Exponential moving average of the generator's weights, with a half-life counted in images."""

from __future__ import annotations

import copy

import torch
from torch import nn


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
    e_params = [p for p in ema.parameters()]
    m_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e_params, m_params, 1.0 - beta)
    e_bufs, m_bufs = list(ema.buffers()), list(model.buffers())
    if e_bufs:
        torch._foreach_copy_(e_bufs, m_bufs)  # one kernel for all BatchNorm statistics, not one per buffer


def recalibrate_batchnorm(net: nn.Module, noise_batches, device=None) -> bool:
    """Re-estimate every BatchNorm layer's running mean and variance as the plain average over
    ``noise_batches`` (an iterable of inputs, moved to ``device``) of the net's own batch statistics, with
    ``torch.optim.swa_utils.update_bn``. Returns False (and changes nothing) when the net has no BatchNorm.

    An EMA of weights paired with the live net's running statistics is a mismatch: the averaged weights
    produce other activations. Averaging the statistics does not fix it; recomputing them does.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return False
    torch.optim.swa_utils.update_bn(noise_batches, net, device)
    return True
