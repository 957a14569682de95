"""GAN training as a plain function: ``run_training(spec, settings, storage, hooks)``.

The dataset is decoded once into a uint8 tensor on the training device and batches are drawn by index from a
per-epoch permutation seeded by (seed, epoch): no DataLoader, and the batch order at any step is a pure
function of the step, which makes resume exact. Statistics accumulate on the device and are read back every
``log_every`` steps only, so there is no host-device sync per step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from shared.jobs import JobCancelled
from shared.settings import Settings
from shared.shards import encode_png
from shared.specs import TrainSpec
from shared.layout import checkpoint_key, grid_key, model_card_key
from shared.storage import Storage
from worker import checkpoint
from worker.data import ImageData, load_dataset
from worker.model import Discriminator, GANConfig, Generator

log = logging.getLogger("augment.train")
STAT_NAMES = ("loss_d", "loss_g", "d_x", "d_g_z")


@dataclass
class TrainHooks:
    """How a running job talks to the outside: progress reports and a cancellation check."""

    progress: Callable[[dict[str, Any]], None] = lambda info: None
    should_stop: Callable[[], bool] = lambda: False
    stop_check_interval_s: float = 1.0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div_(127.5).sub_(1.0)  # [0, 255] -> [-1, 1]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.float().add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class TrainState:
    """Everything that changes during training; what a checkpoint stores."""

    config: GANConfig
    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise_rng: torch.Generator
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_checkpoint(self, spec: TrainSpec, class_names: list[str]) -> dict[str, Any]:
        return {
            "config": checkpoint.config_dict(self.config),
            "spec": spec.to_dict(),
            "class_names": class_names,
            "step": self.step,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": {"noise": self.noise_rng.get_state()},
            "history": self.history,
        }

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.noise_rng.set_state(state["rng"]["noise"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))


def gan_config(spec: TrainSpec, data: ImageData) -> GANConfig:
    conditional = spec.conditional if spec.conditional is not None else data.info.num_classes > 1
    if conditional and data.info.num_classes < 2:
        raise ValueError(f"dataset {spec.dataset} has no class labels; train it with --unconditional")
    return GANConfig(
        image_size=data.images.shape[-1],
        channels=data.images.shape[1],
        nz=spec.nz,
        width=spec.width,
        num_classes=data.info.num_classes if conditional else 0,
    )


def new_state(spec: TrainSpec, config: GANConfig, device: torch.device) -> TrainState:
    torch.manual_seed(spec.seed)  # weight init
    generator = Generator(config).to(device)
    discriminator = Discriminator(config).to(device)
    betas = (spec.beta1, spec.beta2)
    noise_rng = torch.Generator(device=device)
    noise_rng.manual_seed(spec.seed + 1)
    return TrainState(
        config=config,
        generator=generator,
        discriminator=discriminator,
        opt_g=torch.optim.Adam(generator.parameters(), lr=spec.lr, betas=betas),
        opt_d=torch.optim.Adam(discriminator.parameters(), lr=spec.lr, betas=betas),
        noise_rng=noise_rng,
    )


class BatchSchedule:
    """Batch indices as a pure function of the step: epoch e uses permutation seeded by (seed, e)."""

    def __init__(self, num_images: int, batch_size: int, seed: int, device: torch.device):
        self.num_images = num_images
        self.batch_size = min(batch_size, num_images)
        # drop the ragged last batch: a tiny final batch destabilises BatchNorm statistics
        self.steps_per_epoch = max(1, num_images // self.batch_size)
        self.seed = seed
        self.device = device
        self._epoch = -1
        self._permutation = torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            rng = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._permutation = torch.randperm(self.num_images, generator=rng).to(self.device)
            self._epoch = epoch
        start = position * self.batch_size
        return self._permutation[start : start + self.batch_size]


def total_steps(spec: TrainSpec, schedule: BatchSchedule) -> int:
    if spec.steps is not None:
        return spec.steps
    return (spec.epochs or 1) * schedule.steps_per_epoch


def train_step(
    state: TrainState, real: torch.Tensor, labels: torch.Tensor | None, stats: torch.Tensor
) -> None:
    """One "(1) update D, (2) update G" step of the seed's DCGAN; adds loss_D, loss_G, D(x), D(G(z)) to STATS."""
    generator, discriminator = state.generator, state.discriminator
    batch = real.shape[0]
    noise = torch.randn(batch, state.config.nz, device=real.device, generator=state.noise_rng)  # (B, nz)
    fake = generator(noise, labels)  # (B, C, H, W)

    # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
    state.opt_d.zero_grad(set_to_none=True)
    logits_real = discriminator(real, labels)
    logits_fake = discriminator(fake.detach(), labels)
    loss_d = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real)) + \
        F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    loss_d.backward()
    state.opt_d.step()

    # (2) Update G: maximize log(D(G(z)))
    state.opt_g.zero_grad(set_to_none=True)
    logits_gen = discriminator(fake, labels)
    loss_g = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
    loss_g.backward()
    state.opt_g.step()

    with torch.no_grad():
        stats += torch.stack([
            loss_d.detach(), loss_g.detach(), torch.sigmoid(logits_real).mean(), torch.sigmoid(logits_fake).mean(),
        ]).float()


def fixed_grid_inputs(config: GANConfig, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed noise and labels for the progress grid: 8 per class (one row per class), or 64 unconditional."""
    rng = torch.Generator().manual_seed(seed + 7)
    if config.conditional:
        classes = min(config.num_classes, 16)
        labels = torch.arange(classes).repeat_interleave(8)
        noise = torch.randn(labels.numel(), config.nz, generator=rng)
        return noise.to(device), labels.to(device)
    return torch.randn(64, config.nz, generator=rng).to(device), None


def real_grid_images(data: ImageData, config: GANConfig) -> torch.Tensor:
    """Real images laid out like the generated grid: 8 of each class, or the first 64."""
    if not config.conditional:
        return data.images[:64]
    rows = []
    for label in range(min(config.num_classes, 16)):
        rows.append(data.images[data.labels == label][:8])
    return torch.cat(rows)


@torch.no_grad()
def render_grid(generator: Generator, noise: torch.Tensor, labels: torch.Tensor | None, real: torch.Tensor | None) -> bytes:
    """PNG of generated images (and real ones on the left when given): the seed's real-vs-fake display."""
    was_training = generator.training
    generator.eval()
    fake = to_uint8(generator(noise, labels)).cpu()
    generator.train(was_training)
    grid = make_grid(fake, nrow=8, padding=2, pad_value=255)
    if real is not None:
        real_grid = make_grid(real.cpu(), nrow=8, padding=2, pad_value=255)
        spacer = torch.full((grid.shape[0], grid.shape[1], 8), 255, dtype=torch.uint8)
        grid = torch.cat([real_grid, spacer, grid], dim=2)
    return encode_png(grid.permute(1, 2, 0).numpy())  # (H, W, C)


def run_training(spec: TrainSpec, settings: Settings, storage: Storage, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train (or resume) the GAN of SPEC and write checkpoint, model card and grid under ``models/<job_id>/``."""
    hooks = hooks or TrainHooks()
    device = pick_device()
    data = load_dataset(spec.dataset, settings, "train", image_size=spec.image_size, channels=spec.channels, limit=spec.limit)
    config = gan_config(spec, data)
    images = data.images.to(device)  # (N, C, H, W) uint8, decoded once
    labels_all = data.labels.to(device)
    class_names = list(data.info.class_names) if config.conditional else []

    state = new_state(spec, config, device)
    saved = checkpoint.load(storage, spec.job_id)
    if saved is not None:
        if saved["spec"] != spec.to_dict():
            raise ValueError(f"job {spec.job_id} already has a checkpoint from a different spec; submit a new job")
        state.load_checkpoint(saved)
        log.info("job %s: resuming from step %d", spec.job_id, state.step)

    schedule = BatchSchedule(len(images), spec.batch_size, spec.seed, device)
    steps = total_steps(spec, schedule)
    grid_noise, grid_labels = fixed_grid_inputs(config, spec.seed, device)
    stats = torch.zeros(len(STAT_NAMES), device=device)
    window_start, window_steps, last_stop_check = time.perf_counter(), 0, 0.0
    state.generator.train()
    state.discriminator.train()

    while state.step < steps:
        index = schedule.indices(state.step)
        real = to_unit_range(images[index])
        labels = labels_all[index] if config.conditional else None
        train_step(state, real, labels, stats)
        state.step += 1
        window_steps += 1

        now = time.perf_counter()
        if now - last_stop_check >= hooks.stop_check_interval_s:
            last_stop_check = now
            if hooks.should_stop():
                checkpoint.save(storage, spec.job_id, state.to_checkpoint(spec, class_names))
                raise JobCancelled(f"job {spec.job_id} cancelled at step {state.step}")
        if state.step % spec.log_every == 0 or state.step == steps:
            means = (stats / window_steps).tolist()  # the only host-device sync: once per log window
            elapsed = time.perf_counter() - window_start
            images_per_s = window_steps * schedule.batch_size / max(elapsed, 1e-9)
            record = {"step": state.step, **dict(zip(STAT_NAMES, means))}
            state.history.append(record)
            info = {
                **record,
                "total_steps": steps,
                "epoch": state.step // schedule.steps_per_epoch,
                "images_per_s": images_per_s,
                "eta_s": (steps - state.step) * schedule.batch_size / max(images_per_s, 1e-9),
            }
            log.info("job %s step %d/%d loss_D %.3f loss_G %.3f D(x) %.3f D(G(z)) %.3f %.0f img/s",
                     spec.job_id, state.step, steps, *means, images_per_s)
            hooks.progress(info)
            stats.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if state.step % spec.checkpoint_every == 0 and state.step < steps:
            checkpoint.save(storage, spec.job_id, state.to_checkpoint(spec, class_names))

    checkpoint.save(storage, spec.job_id, state.to_checkpoint(spec, class_names))
    grid = grid_key(spec.job_id)
    storage.put_bytes(grid, render_grid(state.generator, grid_noise, grid_labels, real_grid_images(data, config)), "image/png")
    card = {
        "format": 1,
        "job_id": spec.job_id,
        "dataset": spec.dataset,
        "dataset_location": data.info.location,
        "num_train_images": len(images),
        "class_names": class_names,
        "config": checkpoint.config_dict(config),
        "spec": spec.to_dict(),
        "steps": state.step,
        "final": state.history[-1] if state.history else {},
        "device": str(device),
        "checkpoint": checkpoint_key(spec.job_id),
        "grid": grid,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    storage.put_text(model_card_key(spec.job_id), json.dumps(card, indent=2, sort_keys=True))
    return {"model": spec.job_id, "steps": state.step, "model_card": storage.url_for(model_card_key(spec.job_id)),
            "checkpoint": storage.url_for(card["checkpoint"]), "grid": storage.url_for(grid), "final": card["final"]}
