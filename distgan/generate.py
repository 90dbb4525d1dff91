"""Noise, image conversion and the one way to turn noise into images. Below the trainer: ``sample``,
``evaluate`` and the trainer's grids and scores all generate through :func:`generate`."""

from __future__ import annotations

import math

import torch
from torch import nn


def sample_noise(n: int, z_dim: int, kind: str, device="cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform in [-sqrt(3), sqrt(3)] (unit variance, the paper's) or standard normal noise."""
    if kind == "uniform":
        return (torch.rand(n, z_dim, device=device, generator=generator) * 2.0 - 1.0) * math.sqrt(3.0)
    return torch.randn(n, z_dim, device=device, generator=generator)


def fixed_noise(n: int, z_dim: int, kind: str, seed: int) -> torch.Tensor:
    """``n`` noise vectors on the CPU from a generator seeded with ``seed``: the same on every machine and
    rank, whatever the global RNG state, so sample i of a seed is the same wherever it is generated."""
    return sample_noise(n, z_dim, kind, "cpu", torch.Generator().manual_seed(seed))


def to_float(images_u8: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """uint8 pixels -> floats in the generator's ``data_range``."""
    lo, hi = data_range
    return images_u8.float() * ((hi - lo) / 255.0) + lo


def to_uint8(images: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """Floats in ``data_range`` -> uint8 pixels (rounded, clamped)."""
    lo, hi = data_range
    return ((images.float() - lo) * (255.0 / (hi - lo))).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, device="cpu", batch_size: int = 500) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` on the CPU from noise ``z``, in eval mode (the net's mode is restored after),
    ``batch_size`` vectors at a time."""
    was_training = G.training
    G.eval()
    try:
        out = [
            to_uint8(G(z[i : i + batch_size].to(device)), G.data_range).cpu() for i in range(0, z.shape[0], batch_size)
        ]
    finally:
        G.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)
