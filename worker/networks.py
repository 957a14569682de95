"""The generator/discriminator pairs a training job can train, by the name in ``GANConfig.arch``."""

from __future__ import annotations

from worker.model import DCGANDiscriminator, DCGANGenerator, GANConfig
from worker.resnet import ResNetDiscriminator, ResNetGenerator

Generator = DCGANGenerator | ResNetGenerator
Discriminator = DCGANDiscriminator | ResNetDiscriminator

ARCHITECTURES: dict[str, tuple[type[Generator], type[Discriminator]]] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "resnet": (ResNetGenerator, ResNetDiscriminator),
}


def build_generator(config: GANConfig) -> Generator:
    return ARCHITECTURES[config.arch][0](config)


def build_discriminator(config: GANConfig) -> Discriminator:
    return ARCHITECTURES[config.arch][1](config)
