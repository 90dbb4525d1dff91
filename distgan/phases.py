"""The GAN step, split into phases (StyleGAN2-ADA style): the only place GAN maths meets the Accelerator.

Algorithm 1 of Goodfellow et al. 2014: k updates of D, each on a fresh real minibatch and fresh
noise, then one update of G. Synchronisation rules under DDP:

- D's phase: G runs unwrapped under ``no_grad`` (no graph, no all-reduce for G); real and fake go
  through the DDP-wrapped D in one concatenated forward, so DDP sees one forward per backward.
- G's phase: D's parameters have ``requires_grad=False`` and D runs *unwrapped*, so no D gradient is
  computed, accumulated or all-reduced, and DDP needs no ``find_unused_parameters``; gradients still
  flow through D to G's output.
- Gradient accumulation: every micro-step but the last runs under ``no_sync`` of the network being
  trained, so the all-reduce happens once per update.
- fp16: each network has its own GradScaler, stepped and updated once per update of that network.
- R1 (``d_reg_step``, lazy, every ``loss.r1_every`` steps): double backward through D, so it runs on
  the plain eager D in fp32, outside DDP and torch.compile; the gradients are all-reduced by hand
  (as StyleGAN2-ADA does), so every rank applies the same update.
- Non-finite gradients: checked on the device after the all-reduce (so identical on every rank) and
  handed to the fused optimizer as ``found_inf``, which then skips the update inside the kernel:
  parameters, moments and step count stay untouched, and no host sync happens. Counts are kept on
  the device and read by the trainer every few steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from distgan.losses import GANLoss
from distgan.runtime import autocast


@dataclass
class Net:
    """One network's phase record."""

    net: nn.Module
    """The plain module (parameters, checkpoints)."""
    fwd: nn.Module
    """The forward used while the *other* network trains: compiled if enabled, never DDP-wrapped."""
    train_fwd: nn.Module
    """The forward used while this network trains: DDP-wrapped when distributed."""
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    name: str = ""


class GANStep:
    def __init__(self, accelerator, G: Net, D: Net, loss: GANLoss, precision: str):
        self.acc, self.G, self.D, self.loss, self.precision = accelerator, G, D, loss, precision
        self.device = accelerator.device
        self._one = torch.ones((), device=self.device)
        # device-side guard state: skipped updates per network, current and longest streak of steps with a skip
        self.skipped = torch.zeros(2, device=self.device)
        self.streak = torch.zeros((), device=self.device)
        self.max_streak = torch.zeros((), device=self.device)
        self._step_found = torch.zeros((), device=self.device)

    def _sync(self, module: nn.Module, last: bool):
        return contextlib.nullcontext() if last else self.acc.no_sync(module)

    def _backward(self, loss: torch.Tensor, scaler) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            self.acc.backward(loss)

    def _update(self, n: Net, index: int) -> None:
        grads = [p.grad for p in n.net.parameters() if p.grad is not None]
        found = torch.zeros((), device=self.device)
        # the op GradScaler uses: sets found=1 if any gradient is inf/nan (multiplying by 1 is exact)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self._one)
        if n.scaler is not None:
            n.scaler.step(n.opt)  # the scaler's own skip on overflow; its scale drops in update()
            n.scaler.update()
        elif n.opt.defaults.get("fused"):
            n.opt.grad_scale, n.opt.found_inf = None, found
            n.opt.step()  # the fused kernel skips the update when found_inf == 1
        elif not found.item():  # non-fused optimizers cannot skip on device: one host sync per update
            n.opt.step()
        self.skipped[index] += found
        torch.maximum(self._step_found, found, out=self._step_found)

    def end_step(self) -> None:
        """Count consecutive steps with a skipped update (device-side; read by the trainer's guard)."""
        self.streak.mul_(self._step_found).add_(self._step_found)
        torch.maximum(self.max_streak, self.streak, out=self.max_streak)
        self._step_found.zero_()

    def d_step(self, reals: list[torch.Tensor], noises: list[torch.Tensor]) -> torch.Tensor:
        """One D update over ``len(reals)`` micro-batches. Returns [loss, D(x), D(G(z))] on device."""
        G, D = self.G, self.D
        D.net.requires_grad_(True)
        D.opt.zero_grad(set_to_none=True)
        n = len(reals)
        stats = torch.zeros(3, device=self.device)
        for i, (x, z) in enumerate(zip(reals, noises)):
            with self._sync(D.train_fwd, last=i == n - 1):
                with torch.no_grad(), autocast(self.precision, self.device):
                    fake = G.fwd(z)
                with autocast(self.precision, self.device):
                    logits = D.train_fwd(torch.cat([x, fake.to(x.dtype)])).float()
                    real_l, fake_l = logits.chunk(2)
                    loss = self.loss.d(real_l, fake_l)
                self._backward(loss / n, D.scaler)
            stats += torch.stack([loss.detach(), torch.sigmoid(real_l.detach()).mean(),
                                  torch.sigmoid(fake_l.detach()).mean()]) / n
        self._update(D, 0)
        return stats

    def d_reg_step(self, reals: list[torch.Tensor], gamma: float, interval: int) -> torch.Tensor:
        """One lazy R1 update of D: ``interval * gamma / 2 * E||grad_x D(x)||^2`` on real images. Returns [penalty]."""
        D = self.D
        D.net.requires_grad_(True)
        D.opt.zero_grad(set_to_none=True)
        n = len(reals)
        total = torch.zeros((), device=self.device)
        for x in reals:
            x = x.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(D.net(x).sum(), x, create_graph=True)
            penalty = grad.square().flatten(1).sum(1).mean()
            (penalty * (gamma / 2 * interval / n)).backward()
            total += penalty.detach() / n
        if self.acc.num_processes > 1:
            import torch.distributed as dist

            grads = [p.grad for p in D.net.parameters() if p.grad is not None]
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat /= self.acc.num_processes
            for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(f)
        scaler, D.scaler = D.scaler, None  # the penalty ran in fp32: no loss scale to undo
        try:
            self._update(D, 0)
        finally:
            D.scaler = scaler
        return total.unsqueeze(0)

    def g_step(self, noises: list[torch.Tensor]) -> torch.Tensor:
        """One G update over ``len(noises)`` micro-batches. Returns [loss] on device."""
        G, D = self.G, self.D
        D.net.requires_grad_(False)
        G.opt.zero_grad(set_to_none=True)
        n = len(noises)
        stats = torch.zeros(1, device=self.device)
        try:
            for i, z in enumerate(noises):
                with self._sync(G.train_fwd, last=i == n - 1):
                    with autocast(self.precision, self.device):
                        loss = self.loss.g(D.fwd(G.train_fwd(z)).float())
                    self._backward(loss / n, G.scaler)
                stats += loss.detach() / n
        finally:
            D.net.requires_grad_(True)
        self._update(G, 1)
        return stats
