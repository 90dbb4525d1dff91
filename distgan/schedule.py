"""Learning rates, SGD momentum, Adam beta2 and the R1/R2 weights as pure functions of the step (unit-tested
in tests/unit/test_schedule.py).

- learning rate: ``lr`` (D) and ``lr_g`` (G, default ``lr``), divided by ``lr_decay ** step`` (the paper's
  per-step decay) and, from ``linear_decay_start``, scaled down linearly towards 0 at ``max_steps``; then
  floored at ``min_lr``; during the first ``warmup_steps`` ramped up linearly from 1/warmup;
- SGD momentum: from ``momentum`` to ``final_momentum`` linearly by ``momentum_saturate_epochs`` epochs,
  where an epoch is a pass over the training split at the global batch (k D updates per step count k);
- cosine schedules over images seen (R3GAN's): the base learning rates (``lr_end``), Adam's beta2
  (``beta2_end``) and the R1/R2 weights (``loss.gamma_end``) follow :func:`cosine` from their start to
  their end value over ``optim.cosine_images`` images (0: the whole run), then hold it. An end value of 0
  leaves that quantity constant, so the defaults keep every other schedule as it was.
"""

from __future__ import annotations

import math

from distgan.config import LossConfig, OptimConfig


def cosine(start: float, end: float, images: float, span: float) -> float:
    """Half a cosine from ``start`` (0 images) to ``end`` (``span`` images and after)."""
    t = min(1.0, max(0.0, images / span)) if span > 0 else 1.0
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_span(o: OptimConfig, max_steps: int, images_per_step: int) -> int:
    """Images over which the cosine schedules run: ``optim.cosine_images``, else the whole run."""
    return o.cosine_images or max_steps * images_per_step


def gammas_at(loss: LossConfig, images: float, span: float) -> tuple[float, float]:
    """(R1 weight, R2 weight) after ``images`` images: constant, or on the cosine to ``loss.gamma_end``
    (R1's end value; R2 keeps its ratio to R1, or decays by the same factor when R1 is off)."""
    if not loss.gamma_end:
        return loss.r1_gamma, loss.r2_gamma
    start = loss.r1_gamma or loss.r2_gamma
    factor = cosine(1.0, loss.gamma_end / start, images, span)
    return loss.r1_gamma * factor, loss.r2_gamma * factor


def schedule_at(step: int, o: OptimConfig, max_steps: int, epochs: float, images_per_step: int = 0) -> dict[str, float]:
    """{"lr/D", "lr/G"[, "momentum"][, "beta2"]} at ``step``; ``epochs``: passes over the data completed by
    then; ``images_per_step``: global batch x d_steps (what the cosine schedules count)."""
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    decay = o.lr_decay ** (-step) if o.lr_decay != 1.0 else 1.0
    images, span = step * images_per_step, cosine_span(o, max_steps, images_per_step)
    if o.lr_end:
        decay *= cosine(o.lr, o.lr_end, images, span) / o.lr
    if o.linear_decay_start and step >= o.linear_decay_start:
        span = max(1, max_steps - o.linear_decay_start)
        decay *= max(0.0, 1.0 - (step - o.linear_decay_start) / span)
    out = {"lr/D": max(o.lr * decay, o.min_lr) * warm, "lr/G": max((o.lr_g or o.lr) * decay, o.min_lr) * warm}
    if o.name == "sgd":
        out["momentum"] = o.momentum + (o.final_momentum - o.momentum) * min(1.0, epochs / o.momentum_saturate_epochs)
    if o.beta2_end:
        out["beta2"] = cosine(o.betas[1], o.beta2_end, images, span)
    return out


def apply(values: dict[str, float], opt_d, opt_g) -> None:
    """Set the scheduled learning rates (and momentum for SGD, beta2 for Adam) on both optimizers."""
    for opt, lr in ((opt_d, values["lr/D"]), (opt_g, values["lr/G"])):
        for group in opt.param_groups:
            group["lr"] = lr
            if "momentum" in values:
                group["momentum"] = values["momentum"]
            if "beta2" in values:
                group["betas"] = (group["betas"][0], values["beta2"])
