"""Normalisation-free residual networks after R3GAN (Huang et al., "The GAN is dead; long live the GAN!",
NeurIPS 2024), for 28, 32 and 64 px and 1 or 3 channels.

- Every block is ``x + conv1x1(act(conv3x3_grouped(act(conv1x1(x)))))``: a ResNeXt bottleneck that widens
  to 2 x ``width`` inside, with ``cardinality`` groups in the 3x3 convolution, and leaky ReLU (0.2).
- No normalisation layers: each image's output depends on that image alone, so real and fake can share a
  forward (phases.py) and any world size trains the same recipe (no BatchNorm statistics per rank).
- Fix-up initialisation (Zhang et al. 2019), which lets such a net train without normalisation: the last
  convolution of every residual branch starts at zero (each block is the identity at init) and the others
  take He's initialisation scaled by ``M ** (-1 / (2 (L - 1)))``, M the network's blocks, L = 3 layers per
  branch, so the sum of M branches has the variance of one.
- Resampling through a [1, 2, 1] low-pass filter (per channel, separable): up by inserting zeros then
  filtering (linear interpolation), down by filtering then taking every other pixel, so neither aliases.
- Stages: G starts from a learned 4x4 (7x7 at 28 px) basis scaled per channel by a linear map of z, then
  one stage per resolution (up-sample, blocks), then a 1x1 convolution to the image; D mirrors it and ends
  with a per-channel convolution over the whole 4x4 (7x7) map and a linear layer to one logit. Every stage
  has ``width`` channels, or ``widths[s]`` (lowest resolution first): a channel costs 4x less at each
  halving of the resolution, so the low stages can be wide. Where two stages differ, a 1x1 convolution
  changes the width at the lower resolution of the two (G: before up-sampling; D: after down-sampling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_WIDTH = 64
DEFAULT_BLOCKS = 2
DEFAULT_CARDINALITY = 8
EXPANSION = 2  # a block's inner width is EXPANSION x width
SIZES = {28: 7, 32: 4, 64: 4}
"""Image size -> resolution of the basis (the lowest stage)."""


def _base(size: int) -> int:
    if size not in SIZES:
        raise ValueError(f"the 'r3gan' networks make {sorted(SIZES)} px images; the config asks for {size}x{size}")
    return SIZES[size]


def _he(conv: nn.Conv2d, scale: float = 1.0) -> None:
    """He (MSR) initialisation for a leaky-ReLU(0.2) input, times ``scale``; zero bias."""
    fan_in = conv.weight[0].numel()
    gain = math.sqrt(2.0 / (1.0 + 0.2**2))
    nn.init.normal_(conv.weight, 0.0, scale * gain / math.sqrt(fan_in))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _lowpass() -> torch.Tensor:
    f = torch.tensor([1.0, 2.0, 1.0])
    return torch.outer(f, f) / 16.0  # sums to 1


class Resample(nn.Module):
    """x2 up or down with the [1, 2, 1] filter, one depthwise convolution per call."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.up, self.channels = up, channels
        k = _lowpass() * (4.0 if up else 1.0)  # up: each input pixel spreads over 4 outputs, the mean kept
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(x.dtype)
        if self.up:
            return F.conv_transpose2d(x, k, stride=2, padding=1, output_padding=1, groups=self.channels)
        return F.conv2d(x, k, stride=2, padding=1, groups=self.channels)


class Bottleneck(nn.Module):
    """x + conv1x1(act(grouped conv3x3(act(conv1x1(x))))), fix-up initialised (see the module docstring)."""

    def __init__(self, width: int, cardinality: int, total_blocks: int):
        super().__init__()
        inner = EXPANSION * width
        self.conv1 = nn.Conv2d(width, inner, 1)
        self.conv2 = nn.Conv2d(inner, inner, 3, padding=1, groups=cardinality)
        self.conv3 = nn.Conv2d(inner, width, 1)
        self.act = nn.LeakyReLU(0.2)
        scale = total_blocks ** (-1.0 / (2 * (3 - 1)))
        _he(self.conv1, scale)
        _he(self.conv2, scale)
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


def stages(size: int) -> int:
    """Resolution stages of the r3gan networks at ``size`` px: 28: 7, 14, 28; 32: 4 .. 32; 64: 4 .. 64."""
    return int(math.log2(size // _base(size))) + 1


def stage_widths(size: int, width: int, widths=None) -> list[int]:
    """Channels of each stage, lowest resolution first: ``widths`` if given (one per stage), else ``width``."""
    n = stages(size)
    if not widths:
        return [width] * n
    if len(widths) != n:
        raise ValueError(
            f"model.widths={list(widths)} needs one width per resolution stage: {n} at {size} px "
            f"({', '.join(str(_base(size) * 2**s) for s in range(n))}), lowest resolution first"
        )
    return list(widths)


def _transition(c_in: int, c_out: int) -> nn.Conv2d:
    """1x1 convolution between stages of different widths, variance-preserving (its input is the residual
    stream, not an activation)."""
    conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, 1.0 / math.sqrt(c_in))
    return conv


class R3GANGenerator(nn.Module):
    """z -> basis (4x4 or 7x7) -> [blocks, up-sample] per stage -> blocks -> 1x1 conv to C channels.
    The output is not squashed (R3GAN's); images are read in [-1, 1] and clamped when converted."""

    data_range = (-1.0, 1.0)

    def __init__(
        self,
        z_dim: int = 64,
        image_shape=(3, 32, 32),
        width: int = DEFAULT_WIDTH,
        blocks: int = DEFAULT_BLOCKS,
        cardinality: int = DEFAULT_CARDINALITY,
        widths=None,
    ):
        super().__init__()
        c, h, w = image_shape
        assert h == w, f"r3gan makes square images, the config asks for {h}x{w}"
        base, ws = _base(h), stage_widths(h, width, widths)
        n = len(ws)
        self.z_dim, self.image_shape, self.width = z_dim, tuple(image_shape), ws[0]
        self.basis = nn.Parameter(torch.randn(ws[0], base, base))
        self.project = nn.Linear(z_dim, ws[0], bias=False)  # per-channel scale of the learned basis
        nn.init.normal_(self.project.weight, 0.0, 1.0 / math.sqrt(z_dim))
        layers: list[nn.Module] = []
        for s in range(n):
            if s:
                if ws[s] != ws[s - 1]:
                    layers.append(_transition(ws[s - 1], ws[s]))
                layers.append(Resample(ws[s], up=True))
            layers += [Bottleneck(ws[s], cardinality, n * blocks) for _ in range(blocks)]
        self.stages = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(ws[-1], c, 1)
        _he(self.to_image)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.basis * self.project(z)[:, :, None, None]
        return self.to_image(self.stages(x))


class R3GANDiscriminator(nn.Module):
    """1x1 conv from C channels -> [blocks, down-sample] per stage -> blocks -> per-channel conv over the
    4x4 (7x7) map -> linear -> one logit per image."""

    def __init__(
        self,
        image_shape=(3, 32, 32),
        width: int = DEFAULT_WIDTH,
        blocks: int = DEFAULT_BLOCKS,
        cardinality: int = DEFAULT_CARDINALITY,
        widths=None,
    ):
        super().__init__()
        c, h, w = image_shape
        assert h == w, f"r3gan judges square images, the config asks for {h}x{w}"
        base, ws = _base(h), stage_widths(h, width, widths)[::-1]  # highest resolution first
        n = len(ws)
        self.from_image = nn.Conv2d(c, ws[0], 1)
        _he(self.from_image)
        layers: list[nn.Module] = []
        for s in range(n):
            layers += [Bottleneck(ws[s], cardinality, n * blocks) for _ in range(blocks)]
            if s < n - 1:
                layers.append(Resample(ws[s], up=False))
                if ws[s + 1] != ws[s]:
                    layers.append(_transition(ws[s], ws[s + 1]))
        self.stages = nn.Sequential(*layers)
        top = ws[-1]
        self.basis = nn.Conv2d(top, top, base, groups=top, bias=False)  # one base x base filter per channel
        _he(self.basis)
        self.out = nn.Linear(top, 1)
        nn.init.normal_(self.out.weight, 0.0, 1.0 / math.sqrt(top))
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.basis(self.stages(self.from_image(x))).flatten(1)
        return self.out(h).squeeze(1)
