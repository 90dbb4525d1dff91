"""Network registries. A config names an architecture by key; a typo fails when the config loads.

Every network here is a plain ``nn.Module`` that never imports accelerate. Images are ``[B, C, H, W]``
floats in the network's ``data_range`` (generators declare it; the trainer scales data to match).
"""

from distgan.networks.dcgan import DCGANDiscriminator28, DCGANGenerator28
from distgan.networks.mlp import PaperMaxoutDiscriminator, PaperMLPGenerator

GENERATORS = {
    "paper_mlp": PaperMLPGenerator,
    "dcgan28": DCGANGenerator28,
}
DISCRIMINATORS = {
    "paper_maxout": PaperMaxoutDiscriminator,
    "dcgan28": DCGANDiscriminator28,
}


def build_generator(name: str, z_dim: int, width: int = 0, image_shape=(1, 28, 28)):
    kwargs = {"width": width} if width else {}
    return GENERATORS[name](z_dim=z_dim, image_shape=tuple(image_shape), **kwargs)


def build_discriminator(name: str, width: int = 0, image_shape=(1, 28, 28)):
    kwargs = {"width": width} if width else {}
    return DISCRIMINATORS[name](image_shape=tuple(image_shape), **kwargs)
