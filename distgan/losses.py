"""GAN losses on discriminator logits (D(x) = sigmoid(logit)). Pure functions returning mean losses.

All three are written so the quantity each network *minimises* is returned:
- ``minimax``: Algorithm 1 of Goodfellow et al. 2014. D ascends log D(x) + log(1 - D(G(z))), so
  its loss is the negative; G descends log(1 - D(G(z))).
- ``nonsaturating``: as minimax for D; G ascends log D(G(z)) instead (paper section 3).
- ``hinge``: D: relu(1 - r) + relu(1 + f); G: -f (Lim & Ye 2017, Miyato et al. 2018).
softplus keeps the logs finite where the sigmoid saturates: log sigmoid(t) = -softplus(-t) and
log(1 - sigmoid(t)) = -softplus(t).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class GANLoss(NamedTuple):
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(real_logits, fake_logits) -> D's loss (mean over the batch)."""
    g: Callable[[torch.Tensor], torch.Tensor]
    """fake_logits -> G's loss (mean over the batch)."""


def d_logistic(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-(log D(x) + log(1 - D(G(z)))), averaged."""
    return (F.softplus(-real) + F.softplus(fake)).mean()


def g_minimax(fake: torch.Tensor) -> torch.Tensor:
    """log(1 - D(G(z))), averaged: the quantity G minimises in Algorithm 1."""
    return (-F.softplus(fake)).mean()


def g_nonsaturating(fake: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)), averaged."""
    return F.softplus(-fake).mean()


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return (F.relu(1 - real) + F.relu(1 + fake)).mean()


def g_hinge(fake: torch.Tensor) -> torch.Tensor:
    return (-fake).mean()


LOSSES: dict[str, GANLoss] = {
    "minimax": GANLoss(d_logistic, g_minimax),
    "nonsaturating": GANLoss(d_logistic, g_nonsaturating),
    "hinge": GANLoss(d_hinge, g_hinge),
}
