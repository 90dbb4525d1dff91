"""Learning rates and SGD momentum as pure functions of the step (unit-tested in tests/unit/test_schedule.py).

- learning rate: ``lr`` (D) and ``lr_g`` (G, default ``lr``), divided by ``lr_decay ** step`` (the paper's
  per-step decay) and, from ``linear_decay_start``, scaled down linearly towards 0 at ``max_steps``; then
  floored at ``min_lr``; during the first ``warmup_steps`` ramped up linearly from 1/warmup;
- SGD momentum: from ``momentum`` to ``final_momentum`` linearly by ``momentum_saturate_epochs`` epochs,
  where an epoch is a pass over the training split at the global batch (k D updates per step count k).
"""

from __future__ import annotations

from distgan.config import OptimConfig


def schedule_at(step: int, o: OptimConfig, max_steps: int, epochs: float) -> dict[str, float]:
    """{"lr/D", "lr/G"[, "momentum"]} at ``step``; ``epochs``: passes over the data completed by then."""
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    decay = o.lr_decay ** (-step) if o.lr_decay != 1.0 else 1.0
    if o.linear_decay_start and step >= o.linear_decay_start:
        span = max(1, max_steps - o.linear_decay_start)
        decay *= max(0.0, 1.0 - (step - o.linear_decay_start) / span)
    out = {"lr/D": max(o.lr * decay, o.min_lr) * warm, "lr/G": max((o.lr_g or o.lr) * decay, o.min_lr) * warm}
    if o.name == "sgd":
        out["momentum"] = o.momentum + (o.final_momentum - o.momentum) * min(1.0, epochs / o.momentum_saturate_epochs)
    return out


def apply(values: dict[str, float], opt_d, opt_g) -> None:
    """Set the scheduled learning rates (and momentum, for SGD) on both optimizers."""
    for opt, lr in ((opt_d, values["lr/D"]), (opt_g, values["lr/G"])):
        for group in opt.param_groups:
            group["lr"] = lr
            if "momentum" in values:
                group["momentum"] = values["momentum"]
