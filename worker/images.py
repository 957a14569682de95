"""Image tensors as people and files see them: value ranges, class-row layouts and PNG grids.

Generated and real images travel as uint8 (N, C, H, W) tensors; the networks work in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.utils import make_grid

from shared.shards import encode_png
from worker.data import ImageData
from worker.model import GANConfig
from worker.networks import Generator


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div_(127.5).sub_(1.0)  # [0, 255] -> [-1, 1]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.float().add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def class_rows(images: torch.Tensor, labels: torch.Tensor, classes: int, per_row: int = 8) -> torch.Tensor:
    """PER_ROW images of each of the first CLASSES classes (at most 16), one grid row per class; a class with
    fewer images is padded with blank ones so that rows stay aligned with the generated grid."""
    rows = []
    for label in range(min(classes, 16)):
        chosen = images[labels == label][:per_row]
        rows += [chosen, torch.zeros((per_row - len(chosen), *images.shape[1:]), dtype=images.dtype, device=images.device)]
    return torch.cat(rows)


def grid_png(fake: torch.Tensor, real: torch.Tensor | None = None) -> bytes:
    """PNG of generated images (and real ones on the left when given): the seed's real-vs-fake display."""
    grid = make_grid(fake, nrow=8, padding=2, pad_value=255)
    if real is not None:
        real_grid = make_grid(real.cpu(), nrow=8, padding=2, pad_value=255)
        spacer = torch.full((grid.shape[0], grid.shape[1], 8), 255, dtype=torch.uint8)
        grid = torch.cat([real_grid, spacer, grid], dim=2)
    return encode_png(grid.permute(1, 2, 0).numpy())  # (H, W, C)


# The progress grid: the same noise and labels at every step, so a person sees the samples change, not the draw.


@dataclass(frozen=True)
class ProgressGrid:
    """What a training run's grids are drawn from, fixed for the whole run: noise and labels, 8 per class (one row per
    class, at most 16 classes) or 64 unconditional, and real images of the training split laid out alike."""

    noise: torch.Tensor  # (n, nz)
    labels: torch.Tensor | None  # (n,)
    real: torch.Tensor  # (n, C, H, W) uint8
    real_labels: torch.Tensor | None  # (n,); blank padding is labelled -1, so that it never counts in a class's diversity
    class_names: list[str]  # the model's classes; empty when it is unconditional

    @classmethod
    def build(cls, data: ImageData, config: GANConfig, seed: int, device: torch.device) -> ProgressGrid:
        rng = torch.Generator().manual_seed(seed + 7)
        if not config.conditional:
            return cls(torch.randn(64, config.nz, generator=rng).to(device), None, data.images[:64], None, [])
        classes = min(config.num_classes, 16)
        labels = torch.arange(classes).repeat_interleave(8)
        noise = torch.randn(labels.numel(), config.nz, generator=rng)
        counts = [min(8, int((data.labels == label).sum())) for label in range(classes)]
        real_labels = torch.cat([torch.tensor([label] * count + [-1] * (8 - count)) for label, count in enumerate(counts)])
        return cls(noise.to(device), labels.to(device), class_rows(data.images, data.labels, classes),
                   real_labels.to(data.labels.device), list(data.info.class_names))

    def sample(self, generator: Generator) -> torch.Tensor:
        """GENERATOR's images of the grid's noise and labels, uint8 on the CPU."""
        return sample_fixed(generator, self.noise, self.labels)


@torch.no_grad()
def sample_fixed(generator: Generator, noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    was_training = generator.training
    generator.eval()
    images = to_uint8(generator(noise, labels)).cpu()  # (n, C, H, W)
    generator.train(was_training)
    return images
