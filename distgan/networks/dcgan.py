"""DCGAN-style conv nets for 28x28 images (Radford et al. 2016): BatchNorm in G, LeakyReLU(0.2) in D."""

from __future__ import annotations

import torch
from torch import nn


def _dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights for conv/linear layers, N(1, 0.02) for BatchNorm scales (DCGAN paper)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator28(nn.Module):
    """z -> fc 1024 BN ReLU -> fc (2w x 7 x 7) BN ReLU -> ConvT 14x14 (w) BN ReLU -> ConvT 28x28 (C) tanh.

    The MNIST layout of InfoGAN (Chen et al. 2016, appendix C.1): two fully connected layers before the
    up-convolutions train fast and cost little (most work is at 7x7 and 14x14).
    """

    data_range = (-1.0, 1.0)

    def __init__(self, z_dim: int = 100, width: int = 64, image_shape=(1, 28, 28)):
        super().__init__()
        c, h, w = image_shape
        assert (h, w) == (28, 28), f"dcgan28 makes 28x28 images, the config asks for {h}x{w}"
        self.z_dim, self.image_shape, self.width = z_dim, tuple(image_shape), width
        self.fc = nn.Sequential(
            nn.Linear(z_dim, 1024, bias=False),
            nn.BatchNorm1d(1024),
            nn.ReLU(),
            nn.Linear(1024, 2 * width * 7 * 7, bias=False),
            nn.BatchNorm1d(2 * width * 7 * 7),
            nn.ReLU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1),
        )
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).unflatten(1, (-1, 7, 7))
        return torch.tanh(self.up(h))


class DCGANDiscriminator28(nn.Module):
    """Conv 14x14 (w) LReLU -> Conv 7x7 (2w) LReLU -> fc 1024 LReLU -> fc 1 (logit). No normalisation:
    real and fake go through one forward (phases.py), and BatchNorm would mix their statistics."""

    def __init__(self, image_shape=(1, 28, 28), width: int = 64):
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
        )
        self.fc = nn.Sequential(nn.Linear(2 * width * (h // 4) * (w // 4), 1024), nn.LeakyReLU(0.2), nn.Linear(1024, 1))
        _dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x).flatten(1)
        return self.fc(h).squeeze(1)


def _num_ups(size: int) -> int:
    if size not in (32, 64):
        raise ValueError(
            f"the 'dcgan' networks make 32x32 or 64x64 images, the config asks for {size}x{size}; "
            f"use data.image_size 32 or 64 (or dcgan28 for 28x28)"
        )
    return {32: 3, 64: 4}[size]


class DCGANGenerator(nn.Module):
    """DCGAN for 32/64 px: z -> ConvT 4x4 (8w at 64 px, 4w at 32) BN ReLU -> [ConvT x2, channels halve,
    BN ReLU] ... -> Conv3x3 (C) tanh. 1 or 3 channels."""

    data_range = (-1.0, 1.0)

    def __init__(self, z_dim: int = 128, width: int = 64, image_shape=(3, 64, 64)):
        super().__init__()
        c, h, w = image_shape
        assert h == w, f"dcgan makes square images, the config asks for {h}x{w}"
        n = _num_ups(h)
        self.z_dim, self.image_shape, self.width = z_dim, tuple(image_shape), width
        ch = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 64 px: 8w, 4w, 2w, w
        layers = [nn.ConvTranspose2d(z_dim, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU()]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers += [
            nn.ConvTranspose2d(ch[-1], ch[-1], 4, 2, 1, bias=False),
            nn.BatchNorm2d(ch[-1]),
            nn.ReLU(),
            nn.Conv2d(ch[-1], c, 3, 1, 1),
        ]
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(z[:, :, None, None]))


class DCGANDiscriminator(nn.Module):
    """Mirror of the generator: Conv 4x4 stride 2 (w, 2w, ...) LReLU(0.2) down to 4x4 -> fc 1 (logit).

    ``spectral_norm``: every layer spectrally normalised (Miyato et al. 2018), the usual partner of the
    hinge loss; otherwise no normalisation (real and fake share one forward in phases.py)."""

    def __init__(self, image_shape=(3, 64, 64), width: int = 64, spectral_norm: bool = False):
        super().__init__()
        c, h, w = image_shape
        n = _num_ups(h)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers, cin = [], c
        for i in range(n):  # 64 px: 64 -> 32 (w) -> 16 (2w) -> 8 (4w) -> 4 (8w)
            layers += [sn(nn.Conv2d(cin, width * 2**i, 4, 2, 1)), nn.LeakyReLU(0.2)]
            cin = width * 2**i
        self.net = nn.Sequential(*layers)
        self.fc = sn(nn.Linear(cin * 4 * 4, 1))
        if not spectral_norm:
            _dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x).flatten(1)
        return self.fc(h).squeeze(1)
