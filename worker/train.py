"""GAN training as a plain function: ``run_training(spec, settings, storage, hooks)`` (the loop is :func:`train_gan`;
:mod:`worker.publish` writes what a finished job leaves behind).

The dataset is decoded once into a uint8 tensor on the training device and batches are drawn by index from a
per-epoch permutation seeded by (seed, epoch): no DataLoader, and the batch order at any step is a pure
function of the step. With the noise RNG, both optimizers and the EMA weights in the checkpoint, a resumed job
continues exactly where it stopped. Statistics accumulate on the device and are read back every ``log_every``
steps only, so there is no host-device sync per step.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.contracts import ModelCard, TrainResult, continuation_problem, read_card
from shared.layout import sample_grid_key
from shared.lifecycle import JobStopped, StopReason
from shared.liveness import Attempt
from shared.progress import StageMeter, StageProgress, TrainProgress, best_point, measurements_since_best
from shared.settings import Settings
from shared.specs import Recipe, TrainSpec
from shared.storage import Storage
from worker import checkpoint
from worker.checkpoint import TrainState
from worker.collapse_guard import DIVERSITY_WARMUP, collapse_warnings, diversity_warnings
from worker.data import ImageData
from worker.diffaugment import diff_augment
from worker.images import ProgressGrid, grid_png, to_unit_range
from worker.model import GANConfig
from worker.networks import build_discriminator, build_generator
from worker.publish import TrainedModel, publish_model
from worker.reference import describe, reference_classifier
from worker.teacher import Teacher, ensure_teacher
from worker.threads import job_threads, recorded_threads, torch_threads
from worker.validation import Validator, job_images, validation_record, validation_split

log = logging.getLogger("augment.train")
STAT_NAMES = ("loss_d", "loss_g", "d_x", "d_g_z")


@dataclass
class TrainHooks:
    """How a running job talks to the outside: progress reports and a cancellation check."""

    progress: Callable[[TrainProgress], None] = lambda info: None
    stage: Callable[[StageProgress], None] = lambda info: None  # the stages before the GAN's loop (the teacher)
    should_stop: Callable[[], StopReason | None] = lambda: None  # asked along the way: why to stop, if it should
    stop_check_interval_s: float = 1.0
    attempt: Attempt = Attempt()  # asked before each checkpoint (one that lost its lease writes none); commits the card


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        # the resnet pair always has a spectral-norm projection D: the config records what is trained
        conditioning="projection" if spec.arch == "resnet" else spec.conditioning,
        spectral_norm=spec.arch == "resnet" or spec.spectral_norm,
        arch=spec.arch,
    )


def memory_format(config: GANConfig, device: torch.device) -> torch.memory_format:
    """NHWC (channels_last) wherever it measured faster (docs/benchmarks.md): on CUDA (tensor cores), and on CPU
    (oneDNN) unless D has spectral norm, whose power iteration it makes several times slower."""
    return torch.channels_last if device.type == "cuda" or not config.spectral_norm else torch.contiguous_format


def real_batch(images: torch.Tensor, index: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """Batch INDEX of the uint8 dataset tensor, in [-1, 1] and in the networks' memory layout."""
    return to_unit_range(images[index]).contiguous(memory_format=layout)


def new_state(spec: TrainSpec, config: GANConfig, device: torch.device) -> TrainState:
    torch.manual_seed(spec.seed)  # weight init
    generator = build_generator(config).to(device)
    discriminator = build_discriminator(config).to(device)
    layout = memory_format(config, device)
    generator.to(memory_format=layout)  # type: ignore[call-overload]
    discriminator.to(memory_format=layout)  # type: ignore[call-overload]
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False) if spec.ema > 0 else None
    betas = (spec.beta1, spec.beta2)
    noise_rng = torch.Generator(device=device)
    noise_rng.manual_seed(spec.seed + 1)
    return TrainState(
        config=config,
        generator=generator,
        discriminator=discriminator,
        generator_ema=generator_ema,
        opt_g=torch.optim.Adam(generator.parameters(), lr=spec.lr, betas=betas),
        opt_d=torch.optim.Adam(discriminator.parameters(), lr=spec.lr, betas=betas),
        noise_rng=noise_rng,
    )


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    # the ragged last batch is dropped: a tiny final batch destabilises BatchNorm statistics
    return max(1, num_images // min(batch_size, num_images))


def job_recipe(spec: TrainSpec, data: ImageData) -> Recipe:
    """What SPEC trains on DATA, with its automatic choices made (the small-data recipe below SMALL_DATASET images)."""
    return spec.recipe(len(data), data.info.num_classes, steps_per_epoch(len(data), spec.batch_size))


class BatchSchedule:
    """Batch indices as a pure function of the step: epoch e uses an order seeded by (seed, e). With LABELS, each
    epoch is class-balanced: every class fills the same share of it, a rare class's images repeating (a long-tailed
    set's rare classes then get as many of D's real images and of G's labels as its common ones)."""

    def __init__(self, num_images: int, batch_size: int, seed: int, device: torch.device,
                 labels: torch.Tensor | None = None):
        self.num_images = num_images
        self.batch_size = min(batch_size, num_images)
        self.steps_per_epoch = steps_per_epoch(num_images, batch_size)
        self.seed = seed
        self.device = device
        self.labels = None if labels is None else labels.cpu()
        self._epoch = -1
        self._permutation = torch.empty(0, dtype=torch.long)

    def _order(self, rng: torch.Generator) -> torch.Tensor:
        if self.labels is None:
            return torch.randperm(self.num_images, generator=rng)
        classes = self.labels.unique().tolist()
        share = -(-self.num_images // len(classes))
        picks = []
        for label in classes:
            members = torch.nonzero(self.labels == label).flatten()
            rounds = -(-share // len(members))
            picks.append(torch.cat([members[torch.randperm(len(members), generator=rng)] for _ in range(rounds)])[:share])
        balanced = torch.cat(picks)
        return balanced[torch.randperm(len(balanced), generator=rng)][: self.num_images]

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            rng = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._permutation = self._order(rng).to(self.device)
            self._epoch = epoch
        start = position * self.batch_size
        return self._permutation[start : start + self.batch_size]


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


def run_training(spec: TrainSpec, settings: Settings, storage: Storage, hooks: TrainHooks | None = None) -> TrainResult:
    """Train (or resume) the GAN of SPEC and write checkpoint, model card and images under ``models/<job_id>/``."""
    # GAN weights and Adam moments drift into denormal floats, which x86 CPUs compute many times slower.
    # The setting is per process, so it is put back for whoever shares the process (the demo, tests).
    torch.set_flush_denormal(True)
    try:
        device = pick_device()
        data = job_images(spec, settings)
        train_data, validation, no_curve = validation_split(spec, data)
        recipe = job_recipe(spec, train_data)
        if validation is None:
            recipe = dataclasses.replace(recipe, validate_every=0)
        hooks = hooks or TrainHooks()
        stop_requested = StopPoll(hooks)

        def report_stage(info: StageProgress) -> None:  # the stages before the GAN's loop, which stop as it does
            hooks.stage(info)
            reason = stop_requested()
            if reason is not None:
                raise JobStopped(reason, f"job {spec.job_id} stopped while {info.stage}")

        parent = continued_card(spec, recipe, storage)
        saved = checkpoint.load(storage, spec.job_id)  # an earlier attempt's: the job resumes from it
        with torch_threads(job_threads(settings, recorded_threads(storage, spec.job_id, saved, parent))):
            config = gan_config(spec, data)
            grid = ProgressGrid.build(train_data, config, spec.seed, device)
            validator, reference = None, None
            if validation is not None:
                classifier, reference_meta = reference_classifier(
                    storage, settings, spec.dataset, data.images.shape[-1], data.images.shape[1], recipe.reference_steps,
                    spec.seed, report_stage, spec.background)
                validator = Validator.build(config, validation, classifier, spec.seed, device)
                reference = {**reference_meta, "description": describe(reference_meta)}
            stored = ensure_teacher(spec, recipe, train_data, storage, hooks.attempt.epoch,  # first: it may guide G
                                    StageMeter(f"training the teacher ({recipe.teacher} classifiers)",
                                               recipe.teacher * recipe.teacher_steps, report_stage),
                                    inherited=parent.teacher["key"] if parent is not None and parent.teacher else None)
            teacher = stored[0] if stored is not None else None
            state, final_checkpoint = train_gan(spec, recipe, train_data, storage, device, hooks, stop_requested, grid,
                                                teacher, validator, saved, parent)
            trained = TrainedModel(state.sampler, grid, state.step, state.history, state.warnings, device,
                                   resolve_precision(spec, device),
                                   {**stored[0].meta, "key": stored[1]} if stored is not None else None, recipe, hooks.attempt.epoch,
                                   final_checkpoint, state.curve, state.best_checkpoint, state.step < recipe.steps,
                                   validation_record(spec, data, validation, no_curve, recipe.validate_every, reference))
            return publish_model(storage, spec, trained, data, train_data, hooks.attempt.commit)
    finally:
        torch.set_flush_denormal(False)


class StopPoll:
    """HOOKS.should_stop (a Redis round trip in a worker), asked at most once per check interval."""

    def __init__(self, hooks: TrainHooks):
        self.hooks = hooks
        self.last_check = time.perf_counter()

    def __call__(self) -> StopReason | None:
        if time.perf_counter() - self.last_check < self.hooks.stop_check_interval_s:
            return None
        self.last_check = time.perf_counter()
        return self.hooks.should_stop()


def continued_card(spec: TrainSpec, recipe: Recipe, storage: Storage) -> ModelCard | None:
    """The model card of the finished job SPEC continues (None when it continues none); ValueError, in one line, when
    SPEC is not that job's run carried on to more steps."""
    if spec.continues is None:
        return None
    parent = read_card(storage, spec.continues)
    problem = continuation_problem(spec, parent, dataclasses.asdict(recipe))
    if problem is not None:
        raise ValueError(f"job {spec.job_id} cannot continue {spec.continues}: {problem}")
    return parent


def resume_or_start(spec: TrainSpec, config: GANConfig, storage: Storage, device: torch.device,
                    saved: dict[str, Any] | None = None, parent: ModelCard | None = None) -> TrainState:
    """A fresh state, or the job's checkpoint SAVED when it has one (from this very spec), or else the last
    checkpoint of the finished job PARENT that it continues: from there it runs as PARENT would have run on."""
    state = new_state(spec, config, device)
    if saved is not None:
        if saved["spec"] != spec.to_dict():
            raise ValueError(f"job {spec.job_id} already has a checkpoint from a different spec; submit a new job")
        state.load_checkpoint(saved)
        log.info("job %s: resuming from step %d", spec.job_id, state.step)
    elif parent is not None:
        state.load_checkpoint(checkpoint.from_bytes(storage.get_bytes(parent.checkpoint), storage.url_for(parent.checkpoint)))
        log.info("job %s: continuing %s from step %d", spec.job_id, parent.job_id, state.step)
    return state


class CollapseGuard:
    """The job's current warnings by source; the status shows the latest verdict of each, not every past one."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.alerts: dict[str, list[str]] = {"collapse": [], "diversity": []}

    def update(self, state: TrainState, source: str, messages: list[str]) -> None:
        for message in set(messages) - set(self.alerts[source]):
            log.warning("job %s step %d: %s", self.job_id, state.step, message)
        self.alerts[source] = messages
        state.warnings = self.alerts["collapse"] + self.alerts["diversity"]


def train_gan(
    spec: TrainSpec, recipe: Recipe, data: ImageData, storage: Storage, device: torch.device, hooks: TrainHooks,
    stop_requested: StopPoll, grid: ProgressGrid, teacher: Teacher | None = None, validator: Validator | None = None,
    saved: dict[str, Any] | None = None, parent: ModelCard | None = None,
) -> tuple[TrainState, str]:
    """The training loop: steps until SPEC's total (or until its patience runs out), with checkpoints, sample grids,
    validation measurements and progress along the way; returns the final state and the key of its checkpoint."""
    config = gan_config(spec, data)
    images = data.images.to(device)  # (N, C, H, W) uint8, decoded once
    labels_all = data.labels.to(device)
    state = resume_or_start(spec, config, storage, device, saved, parent)
    fns = step_functions(spec, recipe, state, device, teacher)
    layout = memory_format(config, device)
    schedule = BatchSchedule(len(images), spec.batch_size, spec.seed, device,
                             data.labels if recipe.class_balanced and config.conditional else None)
    steps = recipe.steps
    sample_every = spec.sample_every or schedule.steps_per_epoch
    guard = CollapseGuard(spec.job_id)
    stats = torch.zeros(len(STAT_NAMES), device=device)
    window_start, window_steps = time.perf_counter(), 0
    state.generator.train()
    state.discriminator.train()

    # this attempt's latest checkpoint and best sampler: each new one replaces its predecessor (an earlier attempt's
    # go when the card is written)
    written: dict[str, str] = {}

    def save(kind: str, write: Callable[[], str]) -> str:
        if not hooks.attempt.may_write():
            raise JobStopped(StopReason.LEASE_LOST, f"job {spec.job_id} lost its lease at step {state.step}; no checkpoint written")
        key = write()
        if written.get(kind, key) != key:
            storage.delete(written[kind])
        written[kind] = key
        return key

    def save_checkpoint() -> str:
        return save("last", lambda: checkpoint.save(storage, spec.job_id, hooks.attempt.epoch,
                                                    state.to_checkpoint(spec, grid.class_names)))

    def save_best() -> None:
        state.best_checkpoint = save("best", lambda: checkpoint.save_best(storage, spec.job_id, hooks.attempt.epoch,
                                                                          state.to_sampler_checkpoint(spec, grid.class_names)))

    def out_of_patience() -> bool:  # a function of the curve alone, so a resumed job stops where an unstopped one does
        return spec.patience is not None and measurements_since_best(state.curve, spec.select) >= spec.patience

    while state.step < steps and not out_of_patience():
        index = schedule.indices(state.step)
        real = real_batch(images, index, layout)
        train_step(state, fns, real, labels_all[index] if config.conditional else None, stats)
        state.step += 1
        window_steps += 1

        if state.step % sample_every == 0 or state.step == steps:
            fake = grid.sample(state.sampler)
            if hooks.attempt.may_write():  # a progress picture: an attempt that lost its lease leaves the takeover's in place
                storage.put_bytes(sample_grid_key(spec.job_id, state.step), grid_png(fake), "image/png")
            if state.step >= steps * DIVERSITY_WARMUP:  # early samples are alike by construction
                guard.update(state, "diversity", diversity_warnings(fake, grid.labels, grid.real, grid.real_labels,
                                                                      grid.class_names))
        measured = False
        if validator is not None and (state.step % recipe.validate_every == 0 or state.step == steps):
            measured = True
            started = time.perf_counter()
            state.curve.append(validator.measure(state.sampler, state.step))
            log.info("job %s step %d: validation %s (%.1f s)", spec.job_id, state.step, state.curve[-1].text(),
                     time.perf_counter() - started)
            if best_point(state.curve, spec.select) is state.curve[-1]:
                save_best()
        if state.step % spec.log_every == 0 or state.step == steps or measured:
            means = (stats / window_steps).tolist()  # the only host-device sync: once per log window
            images_per_s = window_steps * schedule.batch_size / max(time.perf_counter() - window_start, 1e-9)
            record = {"step": state.step, **dict(zip(STAT_NAMES, means, strict=True))}
            state.history.append(record)
            guard.update(state, "collapse", collapse_warnings(record["d_g_z"]))
            log.info("job %s step %d/%d loss_D %.3f loss_G %.3f D(x) %.3f D(G(z)) %.3f %.0f img/s",
                     spec.job_id, state.step, steps, *means, images_per_s)
            hooks.progress(TrainProgress(
                step=state.step, total_steps=steps, epoch=state.step // schedule.steps_per_epoch,
                loss_d=means[0], loss_g=means[1], d_x=means[2], d_g_z=means[3], images_per_s=images_per_s,
                eta_s=(steps - state.step) * schedule.batch_size / max(images_per_s, 1e-9), warnings=list(state.warnings),
                quality=state.curve[-1] if state.curve else None, best=best_point(state.curve, spec.select),
            ))
            stats.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if state.step % spec.checkpoint_every == 0 and state.step < steps:
            save_checkpoint()
        # last in the step: a stopped job's checkpoint holds everything this step measured, so its resumption
        # measures the same curve
        reason = stop_requested()
        if reason is not None and state.step < steps:
            if reason != StopReason.LEASE_LOST:  # another attempt may hold the job now: this one writes nothing more
                save_checkpoint()
            raise JobStopped(reason, f"job {spec.job_id} stopped at step {state.step}")

    if out_of_patience():
        log.info("job %s: no better %s for %d measurements; stopping at step %d", spec.job_id, spec.select,
                 spec.patience, state.step)
    return state, save_checkpoint()
