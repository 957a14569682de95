"""ResNet generator and discriminator for small labelled sets, the pair ``--arch resnet`` trains.

Pure model code: torch only, everything from :class:`~worker.model.GANConfig`, no I/O. The recipe is the one
PyTorch-StudioGAN configures for limited data around SNGAN (Miyato et al. 2018) and cGAN with a projection
discriminator (Miyato & Koyama 2018): a generator of upsampling residual blocks with class-conditional BatchNorm,
and a discriminator of downsampling residual blocks with spectral norm on every layer and a projection head.
Both are fixed parts of this architecture: ``GANConfig.spectral_norm`` and ``.conditioning`` choose for the DCGAN
only, and the training job records them as this pair has them.

Channels follow the DCGAN's widths (``width * 2^k``), so ``--width`` means the same thing for both architectures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from worker.model import GANConfig


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift come from the class label (de Vries et al. 2017); plain BatchNorm when the
    model is unconditional."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.scale = nn.Embedding(num_classes, channels) if num_classes else None
        self.shift = nn.Embedding(num_classes, channels) if num_classes else None
        if self.scale is not None and self.shift is not None:
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        # x: (B, C, H, W), labels: (B,)
        x = self.norm(x)
        if self.scale is None or self.shift is None:
            return x
        assert labels is not None
        return x * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class UpBlock(nn.Module):
    """norm -> ReLU -> 2x nearest upsampling -> 3x3 conv, twice-normalised; the shortcut upsamples and projects."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int):
        super().__init__()
        self.norm1 = ConditionalBatchNorm(in_channels, num_classes)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = ConditionalBatchNorm(out_channels, num_classes)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        # x: (B, in, H, W) -> (B, out, 2H, 2W)
        h = F.interpolate(F.relu(self.norm1(x, labels)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DownBlock(nn.Module):
    """(ReLU ->) 3x3 conv -> ReLU -> 3x3 conv (-> 2x2 average pool), with a projecting shortcut. The first block
    sees raw pixels, so it has no ReLU in front (SNGAN's "optimized" block)."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, first: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)
        self.downsample = downsample
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in, H, W) -> (B, out, H/2, W/2), or (B, out, H, W) without downsampling
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        shortcut = x
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            shortcut = F.avg_pool2d(shortcut, 2)
        return h + self.shortcut(shortcut)


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases, as SNGAN and StudioGAN initialise this pair."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ResNetGenerator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        channels = config.base_channels
        self.project = nn.Linear(config.nz, channels * config.base_size ** 2)
        blocks = []
        for _ in range(config.upsamplings):
            # the last block keeps `width` channels: the image is drawn from width features at full size
            out_channels = max(channels // 2, config.width)
            blocks.append(UpBlock(channels, out_channels, config.num_classes))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        # state size. width x size x size
        self.out_norm = nn.BatchNorm2d(channels)
        self.to_image = nn.Conv2d(channels, config.channels, 3, 1, 1)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # z: (B, nz), labels: (B,) -> images (B, C, H, W) in [-1, 1]
        if self.config.conditional and labels is None:
            raise ValueError("a conditional generator needs labels")
        size = self.config.base_size
        h = self.project(z).view(z.shape[0], -1, size, size)  # (B, width * 2^(n-1), base, base)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.to_image(F.relu(self.out_norm(h))))


class ResNetDiscriminator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        channels = config.width
        blocks = [DownBlock(config.channels, channels, downsample=True, first=True)]
        for _ in range(config.upsamplings - 1):
            blocks.append(DownBlock(channels, channels * 2, downsample=True, first=False))
            channels *= 2
        # one more block at the base size: SNGAN's discriminator ends with blocks that keep the resolution
        blocks.append(DownBlock(channels, channels, downsample=False, first=False))
        self.blocks = nn.Sequential(*blocks)
        # state size. (width * 2^(n-1)) x base x base
        self.head = nn.Linear(channels, 1)
        self.projection = nn.Embedding(config.num_classes, channels) if config.conditional else None
        self.apply(init_weights)
        for module in list(self.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                spectral_norm(module)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # images: (B, C, H, W), labels: (B,) -> logits (B,)
        if self.projection is not None and labels is None:
            raise ValueError("a conditional discriminator needs labels")
        pooled = F.relu(self.blocks(images)).sum(dim=(2, 3))  # (B, C')
        logits = self.head(pooled).flatten()  # (B,)
        if self.projection is not None:
            assert labels is not None
            logits = logits + (self.projection(labels) * pooled).sum(dim=1)
        return logits
