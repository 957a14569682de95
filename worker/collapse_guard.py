"""The collapse guard: warnings a running GAN job shows when its discriminator wins outright or a class's samples
lose their diversity (mode collapse), judged on the fixed-noise grid the job draws anyway."""

from __future__ import annotations

import torch

# D(G(z)) below this means D rejects every sample and G gets no useful gradient;
# a class whose samples are less diverse than this fraction of its real images' diversity is mode-collapsing.
COLLAPSED_D_G_Z = 0.02
MIN_DIVERSITY_RATIO = 0.35
DIVERSITY_WARMUP = 0.2  # fraction of the run before diversity is judged


def mean_pairwise_distance(images: torch.Tensor) -> float:
    flat = images.float().flatten(1) / 255.0  # (n, C*H*W)
    return float(torch.cdist(flat, flat).sum() / max(len(flat) * (len(flat) - 1), 1))


def diversity_warnings(
    fake: torch.Tensor, fake_labels: torch.Tensor | None, real: torch.Tensor, real_labels: torch.Tensor | None,
    names: list[str],
) -> list[str]:
    """Classes (or the whole set) whose fixed-noise samples are far less diverse than the real images."""
    if fake_labels is None or real_labels is None:
        groups = [("all", fake, real)]
    else:
        fake_labels, real_labels = fake_labels.cpu(), real_labels.cpu()
        groups = [(name, fake[fake_labels == label], real[real_labels == label]) for label, name in enumerate(names)]
    warnings = []
    for name, fake_group, real_group in groups:
        if len(fake_group) < 2 or len(real_group) < 2:
            continue
        ratio = mean_pairwise_distance(fake_group) / max(mean_pairwise_distance(real_group), 1e-9)
        if ratio < MIN_DIVERSITY_RATIO:
            warnings.append(f"low diversity in class {name}: {ratio:.2f} of the real images' (possible mode collapse)")
    return warnings


def collapse_warnings(d_g_z: float) -> list[str]:
    if d_g_z >= COLLAPSED_D_G_Z:
        return []
    return [f"D(G(z)) collapsed to {d_g_z:.3f}: D rejects every sample (try hinge loss, spectral norm or DiffAugment)"]
