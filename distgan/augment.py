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
    """The policies of ``data.augment`` with their generator; ``__call__`` augments a batch."""

    def __init__(self, policies: tuple[str, ...], device: torch.device):
        self.policies = policies
        self.generator = torch.Generator(device=device)

    def reseed(self, seed: int) -> None:
        """Called once per step with runtime.step_seed(seed, rank, step, AUGMENT_SALT)."""
        self.generator.manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for p in self.policies:
            x = FUNCTIONS[p](x, self.generator)
        return x
