"""GAN losses on discriminator logits (D(x) = sigmoid(logit)). Pure functions returning mean losses.

Each is written so the quantity each network *minimises* is returned:
- ``minimax``: Algorithm 1 of Goodfellow et al. 2014. D ascends log D(x) + log(1 - D(G(z))), so
  its loss is the negative; G descends log(1 - D(G(z))).
- ``nonsaturating``: as minimax for D; G ascends log D(G(z)) instead (paper section 3).
- ``hinge``: D: relu(1 - r) + relu(1 + f); G: -f (Lim & Ye 2017, Miyato et al. 2018).
- ``rpgan``: the relativistic pairing GAN (Jolicoeur-Martineau 2019; the loss of R3GAN, Huang et al. 2024):
  D minimises softplus(-(D(x_i) - D(G(z_i)))), G minimises softplus(-(D(G(z_i)) - D(x_i))), image i of the
  real half paired with image i of the fake half of the same micro-batch. G's loss needs D(x), so
  ``needs_real_in_g`` is set and phases.g_step runs D on [real, fake] in one forward (docs/config.md).
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
    g: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    """(fake_logits, real_logits) -> G's loss (mean over the batch); real_logits is None unless
    ``needs_real_in_g`` (losses that do not pair ignore it)."""
    needs_real_in_g: bool = False
    """G's phase must judge this rank's real micro-batch too (relativistic losses): one D forward of
    [real, fake], real logits without gradient."""


def d_logistic(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-(log D(x) + log(1 - D(G(z)))), averaged."""
    return (F.softplus(-real) + F.softplus(fake)).mean()


def g_minimax(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """log(1 - D(G(z))), averaged: the quantity G minimises in Algorithm 1."""
    return (-F.softplus(fake)).mean()


def g_nonsaturating(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """-log D(G(z)), averaged."""
    return F.softplus(-fake).mean()


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return (F.relu(1 - real) + F.relu(1 + fake)).mean()


def g_hinge(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    return (-fake).mean()


def d_rpgan(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """softplus(-(D(x_i) - D(G(z_i)))), averaged over the pairs i (= -log sigmoid of the logit gap)."""
    return F.softplus(fake - real).mean()


def g_rpgan(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """softplus(-(D(G(z_i)) - D(x_i))), averaged over the pairs i."""
    if real is None or real.shape != fake.shape:
        raise ValueError("rpgan's G loss pairs each fake with a real logit of the same micro-batch")
    return F.softplus(real - fake).mean()


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Detached, in fp32 (fp64 stays fp64: the finite-difference tests run in it)."""
    return t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def gradient_penalties(
    D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zero-centred gradient penalties (Mescheder et al. 2018; R3GAN): R1 = E||grad_x D(x)||^2 on reals and
    R2 = E||grad_y D(y)||^2 on fakes y (None without ``fake``), per-image squared norms averaged. One fp32
    forward of D on [real, fake]; the graph is kept (create_graph) so the penalties can be minimised."""
    x = _at_least_fp32(real).requires_grad_(True)
    if fake is None:
        (gx,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        return gx.square().flatten(1).sum(1).mean(), None
    y = _at_least_fp32(fake).requires_grad_(True)
    gx, gy = torch.autograd.grad(D(torch.cat([x, y])).sum(), [x, y], create_graph=True)
    return gx.square().flatten(1).sum(1).mean(), gy.square().flatten(1).sum(1).mean()


LOSSES: dict[str, GANLoss] = {
    "minimax": GANLoss(d_logistic, g_minimax),
    "nonsaturating": GANLoss(d_logistic, g_nonsaturating),
    "hinge": GANLoss(d_hinge, g_hinge),
    "rpgan": GANLoss(d_rpgan, g_rpgan, needs_real_in_g=True),
}
