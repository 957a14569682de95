"""Differentiable augmentation (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random transforms are applied to real and generated images before D sees them, and gradients flow
through them to G, so D cannot memorise a small training set and G is not taught to produce augmented images.
All randomness comes from the caller's ``torch.Generator``, which the checkpoint stores, so resume stays exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _uniform(shape: tuple[int, ...], like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, device=like.device, generator=rng, dtype=torch.float32).to(like.dtype)


def color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    # x: (B, C, H, W) in [-1, 1]; brightness, saturation, contrast
    batch = x.shape[0]
    x = x + (_uniform((batch, 1, 1, 1), x, rng) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform((batch, 1, 1, 1), x, rng) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform((batch, 1, 1, 1), x, rng) + 0.5) + mean


def translation(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    # shift each image by up to RATIO of its size, filling with zeros (mid-grey in [-1, 1])
    batch, _, height, width = x.shape
    shift_h, shift_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    tx = torch.randint(-shift_h, shift_h + 1, (batch, 1, 1), device=x.device, generator=rng)
    ty = torch.randint(-shift_w, shift_w + 1, (batch, 1, 1), device=x.device, generator=rng)
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(batch, device=x.device),
        torch.arange(height, device=x.device),
        torch.arange(width, device=x.device),
        indexing="ij",
    )  # each (B, H, W)
    grid_h = torch.clamp(grid_h + tx + 1, 0, height + 1)
    grid_w = torch.clamp(grid_w + ty + 1, 0, width + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    return padded[grid_b, grid_h, grid_w].permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    # zero one square of RATIO x size per image, at a random place
    batch, _, height, width = x.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    offset_h = torch.randint(0, height + (1 - cut_h % 2), (batch, 1, 1), device=x.device, generator=rng)
    offset_w = torch.randint(0, width + (1 - cut_w % 2), (batch, 1, 1), device=x.device, generator=rng)
    grid_b, grid_h, grid_w = torch.meshgrid(
        torch.arange(batch, device=x.device),
        torch.arange(cut_h, device=x.device),
        torch.arange(cut_w, device=x.device),
        indexing="ij",
    )  # each (B, cut_h, cut_w)
    grid_h = torch.clamp(grid_h + offset_h - cut_h // 2, 0, height - 1)
    grid_w = torch.clamp(grid_w + offset_w - cut_w // 2, 0, width - 1)
    mask = torch.ones(batch, height, width, dtype=x.dtype, device=x.device)
    mask[grid_b, grid_h, grid_w] = 0
    return x * mask.unsqueeze(1)


POLICIES = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policies: tuple[str, ...], rng: torch.Generator) -> torch.Tensor:
    for policy in policies:
        x = POLICIES[policy](x, rng)
    return x
