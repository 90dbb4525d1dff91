"""Network registries. A config names an architecture by key; a typo fails when the config loads.

Every network here is a plain ``nn.Module`` that never imports accelerate. Images are ``[B, C, H, W]``
floats in the network's ``data_range`` (generators declare it; the trainer scales data to match).
"""

from distgan.networks.dcgan import DCGANDiscriminator, DCGANDiscriminator28, DCGANGenerator, DCGANGenerator28
from distgan.networks.mlp import PaperMaxoutDiscriminator, PaperMLPGenerator

GENERATORS = {
    "paper_mlp": PaperMLPGenerator,
    "dcgan28": DCGANGenerator28,
    "dcgan": DCGANGenerator,
}
DISCRIMINATORS = {
    "paper_maxout": PaperMaxoutDiscriminator,
    "dcgan28": DCGANDiscriminator28,
    "dcgan": DCGANDiscriminator,
}
SPECTRAL_NORM = {"dcgan"}
"""Discriminators that take ``spectral_norm=True`` (model.d_spectral_norm)."""


def build_generator(name: str, z_dim: int, width: int = 0, image_shape=(1, 28, 28)):
    kwargs = {"width": width} if width else {}
    return GENERATORS[name](z_dim=z_dim, image_shape=tuple(image_shape), **kwargs)


def build_discriminator(name: str, width: int = 0, image_shape=(1, 28, 28), spectral_norm: bool = False):
    kwargs = {"width": width} if width else {}
    if spectral_norm:
        kwargs["spectral_norm"] = True
    return DISCRIMINATORS[name](image_shape=tuple(image_shape), **kwargs)


def build_networks(cfg):
    """(G, D) for a :class:`distgan.config.Config`: architecture, width, image shape, spectral norm."""
    shape = cfg.data.image_shape
    G = build_generator(cfg.model.generator, cfg.model.z_dim, cfg.model.width, shape)
    D = build_discriminator(cfg.model.discriminator, cfg.model.width, shape, cfg.model.d_spectral_norm)
    return G, D
