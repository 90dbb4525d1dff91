"""The MNIST model of Goodfellow et al. 2014, as in goodfeli/adversarial ``mnist.yaml``."""

from __future__ import annotations

import math

import torch
from torch import nn


class PaperMLPGenerator(nn.Module):
    """z (100-d) -> 1200 ReLU -> 1200 ReLU -> 784 sigmoid; weights U(+-0.05), zero biases.

    The output bias is set to the logit of the per-pixel data mean (:meth:`init_output_bias`) so the
    first samples already look like the average digit instead of grey noise.
    """

    data_range = (0.0, 1.0)

    def __init__(self, z_dim: int = 100, width: int = 1200, image_shape=(1, 28, 28), irange: float = 0.05):
        super().__init__()
        self.z_dim, self.image_shape = z_dim, tuple(image_shape)
        out = math.prod(self.image_shape)
        self.net = nn.Sequential(
            nn.Linear(z_dim, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, out),
        )
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -irange, irange)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def init_output_bias(self, pixel_mean: torch.Tensor) -> None:
        """Set the last bias to logit(mean) (clamped), as pylearn2's ``init_bias_target_marginals``."""
        p = pixel_mean.reshape(-1).float().clamp(1e-3, 1 - 1e-3)
        self.net[-1].bias.copy_(torch.log(p / (1 - p)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image_shape
        x = torch.sigmoid(self.net(z))
        return x.unflatten(1, (c, h, w))


class Maxout(nn.Module):
    """Linear to ``units * pieces`` then the max over each unit's pieces."""

    def __init__(self, d_in: int, units: int, pieces: int, irange: float):
        super().__init__()
        self.pieces = pieces
        self.linear = nn.Linear(d_in, units * pieces)
        nn.init.uniform_(self.linear.weight, -irange, irange)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(x).unflatten(1, (-1, self.pieces)).amax(2)  # [b, u * p] -> [b, u, p] -> [b, u]


class PaperMaxoutDiscriminator(nn.Module):
    """Maxout 240x5 -> maxout 240x5 -> Linear 1 (logit; D(x) = sigmoid(logit)); weights U(+-0.005).

    Inverted dropout as in pylearn2's ``Dropout`` cost: inputs kept with p=0.8, hidden inputs with p=0.5.
    """

    def __init__(
        self,
        image_shape=(1, 28, 28),
        width: int = 240,
        pieces: int = 5,
        irange: float = 0.005,
        input_keep: float = 0.8,
        hidden_keep: float = 0.5,
    ):
        super().__init__()
        d_in = math.prod(image_shape)
        self.drop_in = nn.Dropout(1 - input_keep)
        self.h0 = Maxout(d_in, width, pieces, irange)
        self.drop_h0 = nn.Dropout(1 - hidden_keep)
        self.h1 = Maxout(width, width, pieces, irange)
        self.drop_h1 = nn.Dropout(1 - hidden_keep)
        self.y = nn.Linear(width, 1)
        nn.init.uniform_(self.y.weight, -irange, irange)
        nn.init.zeros_(self.y.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        h = self.h0(self.drop_in(x))
        h = self.h1(self.drop_h0(h))
        return self.y(self.drop_h1(h)).squeeze(1)
