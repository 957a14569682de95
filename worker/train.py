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
from dataclasses import dataclass
from typing import Any

import torch

from shared.contracts import TrainResult
from shared.layout import sample_grid_key
from shared.lifecycle import JobStopped, StopReason
from shared.liveness import Attempt
from shared.models import ModelCard, continuation_problem, read_card
from shared.progress import StageMeter, StageProgress, TrainProgress, best_point, measurements_since_best
from shared.settings import Settings
from shared.specs import Recipe, TrainSpec
from shared.storage import Storage
from worker import checkpoint
from worker.checkpoint import TrainState
from worker.collapse_guard import DIVERSITY_WARMUP, collapse_warnings, diversity_warnings
from worker.data import ImageData
from worker.gan_step import resolve_precision, step_functions, train_step
from worker.images import ProgressGrid, grid_png, to_unit_range
from worker.model import GANConfig
from worker.networks import build_discriminator, build_generator
from worker.publish import TrainedModel, publish_model
from worker.reference import describe, reference_classifier
from worker.teacher import Teacher, ensure_teacher, find_teacher
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
        earlier_teacher = find_teacher(storage, spec.job_id)
        with torch_threads(job_threads(settings, recorded_threads(saved, earlier_teacher[0] if earlier_teacher else None, parent))):
            config = gan_config(spec, data)
            grid = ProgressGrid.build(train_data, config, spec.seed, device)
            validator, reference = None, None
            if validation is not None:
                classifier, reference_meta = reference_classifier(
                    storage, settings, spec.dataset, data.images.shape[-1], data.images.shape[1], recipe.reference_steps,
                    spec.seed, report_stage, spec.background)
                validator = Validator.build(config, validation, classifier, spec.seed, device)
                reference = {**reference_meta, "description": describe(reference_meta)}
            stored = ensure_teacher(spec, recipe, train_data, storage, earlier_teacher, hooks.attempt.epoch,  # first: it may guide G
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
