"""The GAN step, split into phases (StyleGAN2-ADA style): the only place GAN maths meets the Accelerator.

Algorithm 1 of Goodfellow et al. 2014: k updates of D, each on a fresh real minibatch and fresh
noise, then one update of G. Synchronisation rules under DDP:

- D's phase: G runs unwrapped under ``no_grad`` (no graph, no all-reduce for G); real and fake go
  through the DDP-wrapped D in one concatenated forward, so DDP sees one forward per backward.
- G's phase: D's parameters have ``requires_grad=False`` and D runs *unwrapped*, so no D gradient is
  computed, accumulated or all-reduced, and DDP needs no ``find_unused_parameters``; gradients still
  flow through D to G's output.
- The batch is global and may split unevenly (100 images on 8 ranks: 13 or 12 each). Micro-batch m
  of rank r holds n_rm images and its mean loss is weighted by ``n_rm * W / B`` before backward:
  DDP's average over the W ranks then gives exactly the mean over the B images of the global batch,
  whatever the split (an even split weighs 1/A per micro-step, as plain accumulation does).
- Gradient accumulation: every micro-step but the last runs under ``no_sync`` of the network being
  trained, so the all-reduce happens once per update.
- fp16: each network has its own GradScaler, stepped and updated once per update of that network.
- Augmentation (``data.augment``, distgan/augment.py): every D forward, in every phase, sees
  ``augment(images)``, one call on the concatenated [real, fake] batch; G's gradient passes through it.
- Relativistic losses (``GANLoss.needs_real_in_g``, rpgan): G's phase also takes this rank's real
  micro-batches (the ones of the last D update) and runs the frozen D on [real, fake] in one forward, so
  each fake is paired with a real of its own micro-batch; the real half carries no gradient.
- R1 and R2 (``d_reg_step``, every ``loss.r1_every`` steps: lazy, or every step with 1): zero-centred
  gradient penalties on the last D update's reals and fakes, one D forward of [real, fake]. Double
  backward through D, so it runs on the plain eager D in fp32, outside DDP, torch.compile and loss
  scaling; the gradients are all-reduced by hand (one all-reduce per update, as StyleGAN2-ADA does),
  weighted ``n_rm * W / B`` like the main loss, so every rank applies the global-batch update.
- Non-finite values: gradients are checked on the device after the all-reduce (so identical on every
  rank) and handed to the fused optimizer as ``found_inf``, which then skips the update inside the
  kernel: parameters, moments and step count stay untouched, and no host sync happens. Under fp16 a
  skip with a finite loss on every rank is the loss scaler calibrating (counted as ``overflow``, its
  scale halves); a non-finite loss is divergence (counted as ``skipped``, and what the guard acts on).
  Counts stay on the device and are read by the trainer at log ticks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from distgan.losses import GANLoss, gradient_penalties
from distgan.runtime import all_reduce_mean_, autocast, found_non_finite
from distgan.torch_private import fused_step_unless

MAX_OVERFLOW_STREAK = 64
"""Consecutive fp16 overflow skips after which the guard calls it divergence: the scale has then halved 64
times (from 65536 to 2**-48), so the gradients are non-finite at every scale, not calibrating."""


@dataclass
class Net:
    """One network's phase record: the module, its two forwards, its optimizer and loss scaler."""

    module: nn.Module
    """The plain module: parameters, buffers, checkpoints, R1, the EMA."""
    fwd_other: nn.Module
    """Its forward in the *other* network's phase (G making fakes for D; D judging G's fakes): compiled
    if enabled, never DDP-wrapped, so it computes no weight gradients and triggers no all-reduce."""
    fwd_own: nn.Module
    """Its forward in its own phase: ``fwd_other`` wrapped in DDP when there are several ranks."""
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    name: str = ""


class Guard:
    """Device-side counts of skipped updates, per network [D, G], read on the host only at log ticks and
    checkpoints: divergence skips and their streak (what ``train.nonfinite`` and ``train.max_skip_streak``
    act on), and fp16 overflow skips and their streak (a scaler calibrating, unless it never ends)."""

    def __init__(self, device):
        z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
        self.skipped, self.overflow = z(2), z(2)
        self.streak, self.max_streak, self._step_found = z(()), z(()), z(())
        self.overflow_streak, self.max_overflow_streak = z(2), z(())

    _FIELDS = ("skipped", "overflow", "streak", "max_streak", "overflow_streak", "max_overflow_streak")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The counts and streaks, for checkpoints: a skip streak that spans a preemption is still one streak."""
        return {k: getattr(self, k).detach().cpu().clone() for k in self._FIELDS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in self._FIELDS:
            getattr(self, k).copy_(state[k])

    def record(self, index: int, diverged: torch.Tensor, overflow: torch.Tensor | None = None) -> None:
        self.skipped[index] += diverged
        torch.maximum(self._step_found, diverged, out=self._step_found)
        if overflow is not None:
            self.overflow[index] += overflow
            streak = self.overflow_streak[index]
            streak.mul_(overflow).add_(overflow)
            torch.maximum(self.max_overflow_streak, streak, out=self.max_overflow_streak)

    def end_step(self) -> None:
        """Count consecutive steps with a divergence skip."""
        self.streak.mul_(self._step_found).add_(self._step_found)
        torch.maximum(self.max_streak, self.streak, out=self.max_streak)
        self._step_found.zero_()

    def state(self) -> torch.Tensor:
        """[skipped D, skipped G, overflow D, overflow G, longest skip streak, longest overflow streak]."""
        return torch.cat([self.skipped, self.overflow, self.max_streak.reshape(1), self.max_overflow_streak.reshape(1)])

    @staticmethod
    def verdict(values: list[float], nonfinite: str, max_skip_streak: int) -> str | None:
        """Why the run must stop (``values`` as ``state()`` read on the host), or None."""
        sk_d, sk_g, _, _, streak, ov_streak = values
        if nonfinite == "stop" and sk_d + sk_g > 0:
            return "train.nonfinite=stop"
        if streak >= max_skip_streak:
            return f"{int(streak)} consecutive steps with skipped updates (train.max_skip_streak={max_skip_streak})"
        if ov_streak >= MAX_OVERFLOW_STREAK:
            return (
                f"the fp16 loss scale backed off {int(ov_streak)} times in a row: the gradients are non-finite "
                f"at every scale"
            )
        return None


class GANStep:
    def __init__(self, accelerator, G: Net, D: Net, loss: GANLoss, precision: str, micro_weights: list[float]):
        self.acc, self.G, self.D, self.loss, self.precision = accelerator, G, D, loss, precision
        self.device = accelerator.device
        self.world = accelerator.num_processes
        self.weights = micro_weights  # n_rm * W / B for this rank's micro-batches m (see the docstring)
        self.guard = Guard(self.device)
        self.keep_fakes = False  # set when R2 is on: d_step keeps its (detached) fakes for d_reg_step
        self.augment = lambda x: x  # distgan.augment.Augment when data.augment is set: what D sees, always
        self.observe = None  # called with D's (real, fake) logits in D's phase: the ADA controller's input
        self.last_fakes: list[torch.Tensor] = []

    @staticmethod
    def _loss_check(bad, loss: torch.Tensor, scaler):
        """fp16 only: count micro-steps with a non-finite loss (what tells divergence from a scaler overflow);
        other precisions treat every non-finite gradient as divergence and skip this."""
        if scaler is None:
            return None
        return _accumulate(bad, (~torch.isfinite(loss.detach())).float())

    def _sync(self, module: nn.Module, last: bool):
        return contextlib.nullcontext() if last else self.acc.no_sync(module)

    def _update(self, n: Net, index: int, bad_loss: torch.Tensor | None, scaled: bool) -> None:
        """Step ``n``'s optimizer unless its gradients are non-finite; count why an update was skipped.

        ``bad_loss``: 1 if this rank's loss was non-finite in any micro-step. ``scaled``: the gradients
        carry the fp16 loss scale (False for R1, which runs unscaled in fp32).
        """
        grads = [p.grad for p in n.module.parameters() if p.grad is not None]
        found = found_non_finite(grads)  # after the all-reduce: the same on every rank
        if scaled and n.scaler is not None:
            n.scaler.step(n.opt)  # skips on its own when found; the scale drops in update()
            n.scaler.update()
            if self.world > 1:  # whether any rank's loss was non-finite (ranks differ before this)
                bad_loss = all_reduce_mean_(bad_loss.clone())
            diverged = torch.minimum(found, (bad_loss > 0).float())
            self.guard.record(index, diverged, found - diverged)
        else:
            if n.opt.defaults.get("fused"):
                fused_step_unless(n.opt, found)  # the fused kernel skips the update when found == 1
            elif not found.item():  # non-fused optimizers cannot skip on device: one host sync per update
                n.opt.step()
            self.guard.record(index, found)

    def end_step(self) -> None:
        self.guard.end_step()

    def _backward(self, loss: torch.Tensor, scaler) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            self.acc.backward(loss)

    def d_step(self, reals: list[torch.Tensor], noises: list[torch.Tensor]) -> torch.Tensor:
        """One D update over this rank's micro-batches. Returns this rank's [loss, D(x), D(G(z))] on device,
        each the mean over its images."""
        G, D = self.G, self.D
        D.module.requires_grad_(True)
        D.opt.zero_grad(set_to_none=True)
        n, total = len(reals), sum(x.shape[0] for x in reals)
        stats = bad = None
        self.last_fakes = []
        for i, (x, z) in enumerate(zip(reals, noises)):
            with self._sync(D.fwd_own, last=i == n - 1):
                with autocast(self.precision, self.device):  # one region for G's and D's forwards
                    with torch.no_grad():
                        fake = G.fwd_other(z)
                    if self.keep_fakes:
                        self.last_fakes.append(fake)
                    logits = D.fwd_own(self.augment(torch.cat([x, fake.to(x.dtype)]))).float()
                    real_l, fake_l = logits.chunk(2)
                    loss = self.loss.d(real_l, fake_l)
                if self.observe is not None:
                    self.observe(real_l, fake_l)
                self._backward(loss * self.weights[i], D.scaler)
            s = torch.stack(
                [loss.detach(), torch.sigmoid(real_l.detach()).mean(), torch.sigmoid(fake_l.detach()).mean()]
            )
            stats = _accumulate(stats, s if n == 1 else s * (x.shape[0] / total))
            bad = self._loss_check(bad, loss, D.scaler)
        self._update(D, 0, bad, scaled=True)
        return stats

    def d_reg_step(
        self,
        reals: list[torch.Tensor],
        fakes: list[torch.Tensor] | None,
        r1_gamma: float,
        r2_gamma: float,
        interval: int,
    ) -> torch.Tensor:
        """One D update on the zero-centred penalties ``interval * (r1_gamma / 2 * E||grad_x D(x)||^2 +
        r2_gamma / 2 * E||grad D(G(z))||^2)``: R1 on ``reals``, R2 on ``fakes`` (the detached fakes of the
        last D update; None when R2 is off). Returns this rank's [R1, R2] (R2 0 when off)."""
        D = self.D
        D.module.requires_grad_(True)
        D.opt.zero_grad(set_to_none=True)
        total = torch.zeros(2, device=self.device)
        n = sum(x.shape[0] for x in reals)
        for i, (x, w) in enumerate(zip(reals, self.weights)):
            fake = fakes[i] if r2_gamma and fakes else None
            with torch.no_grad():  # the penalties are taken at the augmented images D judges
                if fake is None:
                    x = self.augment(x)
                else:
                    x, fake = self.augment(torch.cat([x, fake.to(x.dtype)])).chunk(2)
            r1, r2 = gradient_penalties(D.module, x, fake)
            loss = r1 * (r1_gamma / 2 * interval * w)
            if r2 is not None:
                loss = loss + r2 * (r2_gamma / 2 * interval * w)
            loss.backward()
            pair = torch.stack([r1.detach(), r2.detach() if r2 is not None else torch.zeros_like(r1)])
            total += pair * (x.shape[0] / n)
        if self.world > 1:
            all_reduce_mean_([p.grad for p in D.module.parameters() if p.grad is not None])
        self._update(D, 0, None, scaled=False)  # fp32, unscaled: no loss scale to undo
        return total

    def g_step(self, noises: list[torch.Tensor], reals: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One G update over this rank's micro-batches. ``reals``: this rank's real micro-batches, needed
        (and only read) by relativistic losses. Returns this rank's [loss] on device."""
        G, D = self.G, self.D
        pair = self.loss.needs_real_in_g
        if pair and (reals is None or len(reals) != len(noises)):
            raise ValueError("this loss pairs fakes with reals in G's phase: pass g_step one real batch per noise")
        D.module.requires_grad_(False)
        G.opt.zero_grad(set_to_none=True)
        n, total = len(noises), sum(z.shape[0] for z in noises)
        stats = bad = None
        try:
            for i, z in enumerate(noises):
                with self._sync(G.fwd_own, last=i == n - 1):
                    with autocast(self.precision, self.device):
                        fake = G.fwd_own(z)
                        if pair:  # one D forward of [real, fake]: no gradient to D's weights nor to x
                            x = reals[i].detach()
                            both = self.augment(torch.cat([x, fake.to(x.dtype)]))
                            real_l, fake_l = D.fwd_other(both).float().chunk(2)
                            loss = self.loss.g(fake_l, real_l)
                        else:
                            loss = self.loss.g(D.fwd_other(self.augment(fake)).float(), None)
                    self._backward(loss * self.weights[i], G.scaler)
                s = loss.detach().reshape(1)
                stats = _accumulate(stats, s if n == 1 else s * (z.shape[0] / total))
                bad = self._loss_check(bad, loss, G.scaler)
        finally:
            D.module.requires_grad_(True)
        self._update(G, 1, bad, scaled=True)
        return stats


def _accumulate(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """acc + x, without the zeros tensor and the add of a first micro-step (one kernel each per step)."""
    return x if acc is None else acc + x
