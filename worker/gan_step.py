"""One GAN training step, "(1) update D, (2) update G", and the settings it runs with: the losses, the mode-seeking
and teacher-guidance terms, the EMA update and the precision. :mod:`worker.train` runs the steps of a job."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.specs import Recipe, TrainSpec
from worker.checkpoint import TrainState
from worker.diffaugment import diff_augment
from worker.teacher import Teacher


def discriminator_loss(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()
    return F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real)) + \
        F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))


def generator_loss(kind: str, logits_gen: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return -logits_gen.mean()
    return F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))


def mode_seeking_penalty(fake_a: torch.Tensor, fake_b: torch.Tensor, noise_a: torch.Tensor, noise_b: torch.Tensor) -> torch.Tensor:
    """MSGAN's term (Mao et al. 2019): small when images differ as much as their noise does, large when G maps
    different noise to the same image (mode collapse)."""
    ratio = (fake_a.float() - fake_b.float()).abs().mean() / (noise_a - noise_b).abs().mean()
    return 1.0 / (ratio + 1e-5)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params: list[torch.Tensor] = list(ema.parameters())
    model_params: list[torch.Tensor] = list(model.parameters())
    torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)  # BatchNorm running statistics follow the live generator


@dataclass
class StepFunctions:
    """The per-step settings derived once from the spec (and the possibly compiled networks)."""

    generator: Callable[..., torch.Tensor]
    discriminator: Callable[..., torch.Tensor]
    loss: str
    augmentations: tuple[str, ...]
    grad_clip: float
    ema: float
    mode_seeking: float
    guide: Teacher | None  # the frozen teacher whose cross-entropy G also minimises
    guidance: float
    autocast: Callable[[], AbstractContextManager[Any]]


def native_bf16(device: torch.device) -> bool:
    """Whether DEVICE computes bf16 in hardware: a CUDA GPU that has it (Ampere and newer; not a T4 or V100), or a CPU
    with AVX512-BF16 or AMX. Other CPUs have oneDNN emulate bf16, which measured slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    # private helpers of torch.cpu; absent ones (other torch versions) count as "no"
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(spec: TrainSpec, device: torch.device) -> str:
    """The precision a job trains in: "auto" is bf16 autocast where the hardware has it (faster at the same FID:
    docs/benchmarks.md, docs/training.md), fp32 elsewhere."""
    if spec.precision != "auto":
        return spec.precision
    return "bf16" if native_bf16(device) else "fp32"


def step_functions(
    spec: TrainSpec, recipe: Recipe, state: TrainState, device: torch.device, teacher: Teacher | None = None
) -> StepFunctions:
    use_bf16 = resolve_precision(spec, device) == "bf16"
    compile_fn: Callable[[nn.Module], Any] = torch.compile if spec.compile else (lambda module: module)
    return StepFunctions(
        generator=compile_fn(state.generator),
        discriminator=compile_fn(state.discriminator),
        loss=spec.loss,
        augmentations=recipe.augmentations,
        grad_clip=spec.grad_clip,
        ema=spec.ema,
        mode_seeking=recipe.mode_seeking,
        guide=teacher.frozen(device) if teacher is not None and recipe.guidance > 0 else None,
        guidance=recipe.guidance,
        autocast=(lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext,
    )


def train_step(
    state: TrainState, fns: StepFunctions, real: torch.Tensor, labels: torch.Tensor | None, stats: torch.Tensor
) -> None:
    """One "(1) update D, (2) update G" step; adds loss_D, loss_G, D(x), D(G(z)) to STATS (on the device)."""
    batch = real.shape[0]
    noise = torch.randn(batch, state.config.nz, device=real.device, generator=state.noise_rng)  # (B, nz)
    half = batch // 2
    labels_fake: torch.Tensor | None = labels
    if fns.mode_seeking > 0 and labels is not None:
        # fakes i and i + B/2 share a class, so that their distance measures diversity within a class
        labels_fake = torch.cat([labels[:half], labels[:half], labels[2 * half :]])  # (B,)

    def augment(images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, fns.augmentations, state.noise_rng) if fns.augmentations else images

    with fns.autocast():
        fake = fns.generator(noise, labels_fake)  # (B, C, H, W)
        # (1) Update D: real -> high, fake -> low
        logits_real = fns.discriminator(augment(real), labels)
        logits_fake = fns.discriminator(augment(fake.detach()), labels_fake)
        loss_d = discriminator_loss(fns.loss, logits_real.float(), logits_fake.float())
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    if fns.grad_clip > 0:
        nn.utils.clip_grad_norm_(state.discriminator.parameters(), fns.grad_clip)
    state.opt_d.step()

    # (2) Update G: make D call the fakes real. D's own gradients from this pass would be thrown away, so
    # they are not computed at all: about a third of D's backward cost saved, with the same result.
    state.discriminator.requires_grad_(False)
    with fns.autocast():
        logits_gen = fns.discriminator(augment(fake), labels_fake)
        loss_adversarial = generator_loss(fns.loss, logits_gen.float())  # what loss_G reports: comparable across recipes
        loss_g = loss_adversarial
        if fns.guide is not None and labels_fake is not None:
            loss_g = loss_g + fns.guidance * fns.guide.guidance_loss(fake, labels_fake)
    if fns.mode_seeking > 0 and half > 0:
        pairs = (fake[:half], fake[half : 2 * half], noise[:half], noise[half : 2 * half])
        loss_g = loss_g + fns.mode_seeking * mode_seeking_penalty(*pairs)
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.discriminator.requires_grad_(True)
    if fns.grad_clip > 0:
        nn.utils.clip_grad_norm_(state.generator.parameters(), fns.grad_clip)
    state.opt_g.step()
    if state.generator_ema is not None:
        # ramp the decay up so that the average does not drag the random initialisation along for long
        update_ema(state.generator_ema, state.generator, min(fns.ema, (1 + state.step) / (10 + state.step)))

    with torch.no_grad():
        stats += torch.stack([
            loss_d.detach(), loss_adversarial.detach(),
            torch.sigmoid(logits_real.float()).mean(), torch.sigmoid(logits_fake.float()).mean(),
        ])
