"""Differentiable augmentation for D (DiffAugment, Zhao et al. 2020): pure functions of images and a generator.

D sees only augmented images, real and generated alike, in every phase: D's update, G's update (the gradient
reaches G through the augmentation, which is why every operation here is differentiable in the pixels) and
the R1/R2 penalties (taken at the augmented images). Choices:

- One call per D forward, on the concatenated [real, fake] batch: the same policies for both halves, with
  parameters drawn per image (not the same draw for real i and fake i): D cannot tell real from fake by
  the augmentation, and every image gets its own.
- Parameters come from this module's own generator on the device, reseeded every step from (seed, rank,
  step) with its own salt (:meth:`Augment.reseed`): the noise stream is untouched, ranks draw differently,
  and a resumed run draws exactly what the uninterrupted one did.
- Policies (DiffAugment's): ``color`` (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5], for
  images in [-1, 1]; saturation is a no-op on 1 channel), ``translation`` (up to 1/8 of the size, zero
  padded), ``cutout`` (a zeroed square of half the size).
- Probability (``data.augment_p``, StyleGAN2-ADA's p): each policy is applied to each image with
  probability p, drawn from the same generator; p = 1 (the default, DiffAugment) draws no masks.
- Adaptive p (``data.ada_target``, :class:`AdaptiveP`): StyleGAN2-ADA's controller. Every
  ``data.ada_interval`` steps it reads r_t = E[sign(D(x))] over the reals D judged since the last
  adjustment (all ranks), and moves p by +-(images since then) / ``data.ada_images`` towards r_t =
  target: p rises while D is too sure of the training images (overfitting), falls when it is not. For a
  relativistic loss (rpgan) D's level is arbitrary (the loss is unchanged by adding a constant to D), so
  the sign is taken of D(x) - D(G(z)) over the pairs it judged: the share of pairs D ranks right, 2 acc - 1.
  p and the running sums are training state: checkpointed, so a resumed run adjusts exactly as the
  uninterrupted one.
"""

from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")
AUGMENT_SALT = 0xA06


def parse(spec: str) -> tuple[str, ...]:
    """``"translation,cutout"`` -> the policies in the order given; ValueError naming an unknown one."""
    names = tuple(p.strip() for p in spec.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; choose from {list(POLICIES)}")
    return names


def _uniform(n: int, lo: float, hi: float, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, device=x.device, generator=g, dtype=x.dtype) * (hi - lo) + lo


def color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    x = x + _uniform(n, -0.5, 0.5, x, g)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _uniform(n, 0.0, 2.0, x, g) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(n, 0.5, 1.5, x, g) + mean


def translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels (up to ``ratio`` of its size each way), zeros shifted in."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device, generator=g)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device, generator=g)
    iy = torch.arange(h, device=x.device).view(1, h, 1) + dy + 1  # +1: the zero border of the padded image
    ix = torch.arange(w, device=x.device).view(1, 1, w) + dx + 1
    iy, ix = iy.clamp(0, h + 1), ix.clamp(0, w + 1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # out-of-range reads land on the zero border
    b = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[b, iy, ix].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` of the size at a random place in each image (it may leave the edge)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device, generator=g)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device, generator=g)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - ch // 2, cx - cw // 2
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


FUNCTIONS = {"color": color, "translation": translation, "cutout": cutout}


class Augment:
    """The policies of ``data.augment`` with their generator; ``__call__`` augments a batch. ``p``: the
    probability of each policy per image; ``masked=False`` (p fixed at 1) skips the draws of the masks."""

    def __init__(self, policies: tuple[str, ...], device: torch.device, p: float = 1.0, masked: bool = False):
        self.policies = policies
        self.generator = torch.Generator(device=device)
        self.p = torch.tensor(float(p), device=device)  # a device tensor: the controller moves it with no host sync
        self.masked = masked or p < 1.0

    def reseed(self, seed: int) -> None:
        """Called once per step with runtime.step_seed(seed, rank, step, AUGMENT_SALT)."""
        self.generator.manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.policies:
            y = FUNCTIONS[name](x, self.generator)
            if self.masked:
                draw = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=self.generator)
                y = torch.where(draw < self.p, y, x)
            x = y
        return x


class AdaptiveP:
    """StyleGAN2-ADA's adaptive augmentation probability (see the module docstring): ``observe`` after each
    of D's forwards on [real, fake] in D's phase, ``adjust`` every ``interval`` steps on every rank (one
    all-reduce of two numbers). Everything stays on the device: no host sync until the log reads it."""

    def __init__(
        self,
        augment: Augment,
        target: float,
        interval: int,
        images: int,
        images_per_step: int,
        relativistic: bool = False,
    ):
        self.augment, self.target, self.interval = augment, target, interval
        self.relativistic = relativistic  # rpgan: the sign of D(x) - D(G(z)), D having no level of its own
        self.step_size = images_per_step * interval / images  # p's change per adjustment: +-1 over `images`
        device = augment.p.device
        self.sums = torch.zeros(2, device=device)  # [sum of signs, images] since the last adjustment
        self.rt = torch.zeros((), device=device)  # the r_t of the last adjustment (a logged figure)

    def observe(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        d = (real_logits - fake_logits if self.relativistic else real_logits).detach().float()
        self.sums[0] += torch.sign(d).sum()
        self.sums[1] += d.numel()

    def adjust(self) -> None:
        """Move p one step towards r_t = target (a collective under DDP: every rank calls it at the same step)."""
        from distgan.runtime import all_reduce_sum_  # (lazy: distgan.config imports this module)

        sums = all_reduce_sum_(self.sums.clone())
        self.rt = sums[0] / sums[1].clamp_min(1)
        move = torch.sign(self.rt - self.target) * self.step_size * (sums[1] > 0)
        self.augment.p.copy_((self.augment.p + move).clamp(0.0, 1.0))
        self.sums.zero_()

    def figures(self) -> torch.Tensor:
        """[p, r_t] on the device."""
        return torch.stack([self.augment.p, self.rt])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in (("p", self.augment.p), ("sums", self.sums), ("rt", self.rt))}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.augment.p.copy_(state["p"])
        self.sums.copy_(state["sums"])
        self.rt.copy_(state["rt"])
