"""Network registries. A config names an architecture by key; a typo fails when the config loads.

Every network here is a plain ``nn.Module`` that never imports accelerate. Images are ``[B, C, H, W]``
floats in the network's ``data_range`` (generators declare it; the trainer scales data to match).
"""

from distgan.networks.dcgan import DCGANDiscriminator, DCGANDiscriminator28, DCGANGenerator, DCGANGenerator28
from distgan.networks.mlp import PaperMaxoutDiscriminator, PaperMLPGenerator
from distgan.networks.r3gan import DEFAULT_WIDTH as RESNET_DEFAULT_WIDTH
from distgan.networks.r3gan import R3GANDiscriminator, R3GANGenerator

GENERATORS = {
    "paper_mlp": PaperMLPGenerator,
    "dcgan28": DCGANGenerator28,
    "dcgan": DCGANGenerator,
    "r3gan": R3GANGenerator,
}
DISCRIMINATORS = {
    "paper_maxout": PaperMaxoutDiscriminator,
    "dcgan28": DCGANDiscriminator28,
    "dcgan": DCGANDiscriminator,
    "r3gan": R3GANDiscriminator,
}
SPECTRAL_NORM = {"dcgan"}
"""Discriminators that take ``spectral_norm=True`` (model.d_spectral_norm)."""
RESNETS = {"r3gan"}
"""Architectures that take ``blocks``, ``cardinality`` and ``widths`` (model.blocks, model.cardinality,
model.widths)."""

__all__ = ["DISCRIMINATORS", "GENERATORS", "RESNETS", "RESNET_DEFAULT_WIDTH", "SPECTRAL_NORM", "build_networks"]


def _resnet_kwargs(name: str, blocks: int, cardinality: int, widths=()) -> dict:
    if name not in RESNETS:
        return {}
    return {k: v for k, v in (("blocks", blocks), ("cardinality", cardinality), ("widths", tuple(widths))) if v}


def build_generator(
    name: str,
    z_dim: int,
    width: int = 0,
    image_shape=(1, 28, 28),
    blocks: int = 0,
    cardinality: int = 0,
    widths=(),
):
    kwargs = {"width": width} if width else {}
    kwargs.update(_resnet_kwargs(name, blocks, cardinality, widths))
    return GENERATORS[name](z_dim=z_dim, image_shape=tuple(image_shape), **kwargs)


def build_discriminator(
    name: str,
    width: int = 0,
    image_shape=(1, 28, 28),
    spectral_norm: bool = False,
    blocks: int = 0,
    cardinality: int = 0,
    widths=(),
):
    kwargs = {"width": width} if width else {}
    kwargs.update(_resnet_kwargs(name, blocks, cardinality, widths))
    if spectral_norm:
        kwargs["spectral_norm"] = True
    return DISCRIMINATORS[name](image_shape=tuple(image_shape), **kwargs)


def build_networks(cfg):
    """(G, D) for a :class:`distgan.config.Config`: architecture, width, image shape, spectral norm, and the
    residual networks' blocks, cardinality and per-stage widths."""
    m, shape = cfg.model, cfg.data.image_shape
    G = build_generator(m.generator, m.z_dim, m.width, shape, m.blocks, m.cardinality, m.widths)
    D = build_discriminator(m.discriminator, m.width, shape, m.d_spectral_norm, m.blocks, m.cardinality, m.widths)
    return G, D
