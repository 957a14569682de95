"""The model config of every architecture, and the DCGAN generator and discriminator, unconditional or
class-conditional, for 28, 32 and 64 pixel images (``worker/resnet.py`` holds the other pair).

Pure model code: torch only, everything from :class:`GANConfig`, no I/O. The layer recipe is the one of
pytorch/examples' DCGAN (ConvTranspose2d/Conv2d, BatchNorm, ReLU/LeakyReLU, N(0, 0.02) init), generalised from a
hard-wired 64x64 to a start size of 4x4 (32, 64) or 7x7 (28) followed by stride-2 doublings.

The discriminator returns logits, not probabilities: the loss applies the sigmoid itself, which is numerically
stable and safe under bf16 autocast (the seed's Sigmoid + BCELoss is neither).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from shared.specs import ARCHITECTURES, CONDITIONINGS, IMAGE_SIZES


@dataclass(frozen=True)
class GANConfig:
    image_size: int = 64  # one of IMAGE_SIZES
    channels: int = 3
    nz: int = 100  # latent size
    width: int = 64  # ngf = ndf of the seed
    num_classes: int = 0  # 0: unconditional
    embed_dim: int = 50  # label embedding fed to G next to z
    conditioning: str = "concat"  # how D sees the label: one-hot planes ("concat") or a projection head
    spectral_norm: bool = False  # spectral norm on D's layers (replaces D's BatchNorm)
    arch: str = "dcgan"  # which generator/discriminator pair (worker.networks); checkpoints before it are dcgan

    def __post_init__(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size {self.image_size} is not supported; use one of {', '.join(map(str, IMAGE_SIZES))}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning {self.conditioning!r} is not one of {', '.join(CONDITIONINGS)}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(ARCHITECTURES)}")

    @property
    def base_size(self) -> int:
        """Spatial size of the first generator feature map."""
        return 7 if self.image_size == 28 else 4

    @property
    def upsamplings(self) -> int:
        return int(math.log2(self.image_size // self.base_size))  # 28 -> 2, 32 -> 3, 64 -> 4

    @property
    def base_channels(self) -> int:
        """Channels at the base size, in G's first feature map and D's last: the width doubled at every
        resolution step but one."""
        return self.width * 2 ** (self.upsamplings - 1)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


class LatentProjection(nn.Module):
    """The DCGAN generator's first layer, ``ConvTranspose2d(in, out, size, 1, 0)`` on a 1x1 input, computed as
    the matrix product it is, which oneDNN runs several times faster than the transposed convolution on CPU
    (docs/benchmarks.md). The weight keeps ConvTranspose2d's shape
    (in, out, size, size), so checkpoints are the same either way."""

    def __init__(self, in_features: int, out_channels: int, size: int):
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.empty(in_features, out_channels, size, size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: (B, in) -> (B, out, size, size), with channels_last strides
        in_features, out_channels = self.weight.shape[:2]
        weight = self.weight.permute(0, 2, 3, 1).reshape(in_features, -1)  # (in, size*size*out); a view if NHWC
        features = z @ weight  # (B, size*size*out)
        return features.view(-1, self.size, self.size, out_channels).permute(0, 3, 1, 2)


def init_weights(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, LatentProjection)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        n = config.upsamplings
        channels = config.base_channels
        in_features = config.nz + (config.embed_dim if config.conditional else 0)
        self.label_embedding = nn.Embedding(config.num_classes, config.embed_dim) if config.conditional else None
        layers: list[nn.Module] = [
            # input is (nz + embed)
            LatentProjection(in_features, channels, config.base_size),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
            # state size. (width * 2^(n-1)) x base x base
        ]
        for _ in range(n - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        # state size. width x (size/2) x (size/2)
        layers += [nn.ConvTranspose2d(channels, config.channels, 4, 2, 1, bias=False), nn.Tanh()]
        # state size. channels x size x size
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # z: (B, nz), labels: (B,) -> images (B, C, H, W) in [-1, 1]
        if self.label_embedding is not None:
            if labels is None:
                raise ValueError("a conditional generator needs labels")
            z = torch.cat([z, self.label_embedding(labels)], dim=1)  # (B, nz + embed)
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        concat_labels = config.conditional and config.conditioning == "concat"
        in_channels = config.channels + (config.num_classes if concat_labels else 0)
        channels = config.width
        layers: list[nn.Module] = [
            # input is (channels [+ classes]) x size x size
            nn.Conv2d(in_channels, channels, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(config.upsamplings - 1):
            layers.append(nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False))
            if not config.spectral_norm:
                layers.append(nn.BatchNorm2d(channels * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels *= 2
        # state size. (width * 2^(n-1)) x base x base
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, config.base_size, 1, 0, bias=False)
        self.concat_labels = concat_labels
        self.projection = (
            nn.Embedding(config.num_classes, channels)
            if config.conditional and config.conditioning == "projection"
            else None
        )
        self.apply(init_weights)
        if config.spectral_norm:
            # after the init: spectral norm's power iteration starts from the weights it will normalise
            for module in list(self.modules()):
                if isinstance(module, (nn.Conv2d, nn.Embedding)):
                    apply_spectral_norm(module)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # images: (B, C, H, W), labels: (B,) -> logits (B,)
        if self.config.conditional and labels is None:
            raise ValueError("a conditional discriminator needs labels")
        if self.concat_labels:
            assert labels is not None
            planes = nn.functional.one_hot(labels, self.config.num_classes).to(images.dtype)  # (B, K)
            planes = planes[:, :, None, None].expand(-1, -1, images.shape[2], images.shape[3])  # (B, K, H, W)
            images = torch.cat([images, planes], dim=1)
        features = self.features(images)  # (B, C', base, base)
        logits = self.head(features).flatten()  # (B,)
        if self.projection is not None:
            assert labels is not None
            pooled = features.sum(dim=(2, 3))  # (B, C')
            logits = logits + (self.projection(labels) * pooled).sum(dim=1)
        return logits
