"""Sizing work to a time budget from throughput measured on this machine: what ``augment demo`` runs.

CPUs differ by 2-3x in what a training step costs (fp32 on AVX2, bf16 on AVX512-BF16), so a fixed step count is
"a few minutes" on one host and a quarter of an hour on another. A short probe times each kind of step the demo
runs (the GAN's with its recipe, the teacher's, the scoring classifiers'); :func:`plan_budget` then gives the GAN
what the budget leaves after the stages whose length is fixed.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shared.settings import Settings
from shared.specs import GenerateSpec, TrainSpec
from worker.augmentation_study import SMALL_CNN
from worker.classifier import Classifier, ClassifierConfig, train_classifier
from worker.data import load_dataset
from worker.gan_step import step_functions, train_step
from worker.generate import LoadedModel, render_shard
from worker.teacher import Teacher
from worker.train import BatchSchedule, gan_config, job_recipe, memory_format, new_state, pick_device, real_batch
from worker.validation import Validator, validation_split

PROBE_S = 2.0  # timed seconds of each kind of step
WARMUP_STEPS = 2
SAMPLING_BATCH = 500


@dataclass(frozen=True)
class Rates:
    """Steps (or images) per second on this machine."""

    gan: float  # the training job's GAN steps, with its recipe (guidance, mode seeking, DiffAugment)
    teacher: float  # one teacher member's steps
    reference: float  # the reference classifier's steps (the feature space of the quality metrics)
    scorer: float  # the CAS classifiers' steps
    sampling: float  # images per second a generation job renders: sampled, labelled by the teacher, encoded in shards
    validation_s: float = 0.0  # seconds one measurement of the validation curve takes; 0: the job has no curve


@dataclass(frozen=True)
class Plan:
    gan_steps: int
    seconds: dict[str, float]  # the expected length of each stage, in order

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


class _Measured(Exception):
    """Ends a probe's training loop from its step callback."""


def _steps_per_s(train: Callable[[Callable[[int], None]], None], sync: Callable[[], None]) -> float:
    """Steps per second of TRAIN, which calls its argument after every step: timed over PROBE_S after WARMUP_STEPS
    untimed ones (allocations, oneDNN's kernel choice), then stopped. A time window, not a step count: on a busy
    machine single steps varied 10x (0.24-2.6 s), and a few of them said nothing."""
    marks: dict[str, float] = {}

    def after_step(step: int) -> None:
        if step < WARMUP_STEPS:
            return
        sync()
        now = time.perf_counter()
        if step == WARMUP_STEPS:
            marks["start"] = now
        elif now - marks["start"] >= PROBE_S:
            marks["rate"] = (step - WARMUP_STEPS) / (now - marks["start"])
            raise _Measured()

    with contextlib.suppress(_Measured):
        train(after_step)
    return marks["rate"]


def measure_rates(spec: TrainSpec, settings: Settings) -> Rates:
    """Time SPEC's GAN steps, its teacher's, the quality evaluation's classifiers' and sampling, on SPEC's data (a
    classifier step costs the same whatever the size of the set it draws from). An untrained teacher stands in for
    the guide and the labeller: what guiding and labelling cost does not depend on what the teacher learned.
    Nothing is stored."""
    device = pick_device()
    data = load_dataset(spec.dataset, settings, "train", image_size=spec.image_size, channels=spec.channels,
                        limit=spec.limit, per_class=spec.per_class, seed=spec.seed, imbalance=spec.imbalance)
    recipe = job_recipe(spec, data)
    config = gan_config(spec, data)
    state = new_state(spec, config, device)
    teacher_size = spec.teacher_image_size(data.images.shape[-1])
    classifier_config = ClassifierConfig(teacher_size, data.images.shape[1], data.info.num_classes, spec.teacher_width)
    teacher = Teacher([Classifier(classifier_config) for _ in range(recipe.teacher)], {}) if recipe.teacher else None
    fns = step_functions(spec, recipe, state, device, teacher)  # which guides G only with a guidance weight
    # the curve measures in the reference classifier's features: an untrained one costs the same
    validation = validation_split(spec, data)[1]
    reference = Classifier(ClassifierConfig(data.images.shape[-1], data.images.shape[1], data.info.num_classes))
    validator = None if validation is None else Validator.build(config, validation, reference, spec.seed, device)
    schedule = BatchSchedule(len(data), spec.batch_size, spec.seed, device)
    images, labels = data.images.to(device), data.labels.to(device)
    layout = memory_format(config, device)
    stats = torch.zeros(4, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def gan(after_step: Callable[[int], None]) -> None:
        for step in itertools.count(1):
            index = schedule.indices(step)
            train_step(state, fns, real_batch(images, index, layout), labels[index] if config.conditional else None, stats)
            after_step(step)

    def classifier(**options: Any) -> Callable[[Callable[[int], None]], None]:
        def train(after_step: Callable[[int], None]) -> None:
            train_classifier(data.images, data.labels, data.info.num_classes, steps=10**7, after_step=after_step, **options)
        return train

    # a shard as a generation job renders it: its PNG encoding and the teacher's labels cost more than the sampling
    shard = GenerateSpec(job_id="g-demo-probe", model=spec.job_id, count=SAMPLING_BATCH, shard_size=SAMPLING_BATCH)

    @torch.no_grad()
    def render(after_step: Callable[[int], None]) -> None:
        model = LoadedModel(state.sampler.eval(), list(data.info.class_names), teacher)
        for rendered in itertools.count(1):
            render_shard(shard, model, 0)
            after_step(rendered)

    def measure(after_step: Callable[[int], None]) -> None:
        assert validator is not None
        for point in itertools.count(1):
            validator.measure(state.sampler, point)
            after_step(point)

    torch.set_flush_denormal(True)  # as training runs (worker.train.run_training)
    try:
        return Rates(
            gan=_steps_per_s(gan, sync),
            teacher=_steps_per_s(classifier(augment=True, width=spec.teacher_width, image_size=teacher_size), sync),
            reference=_steps_per_s(classifier(), sync),
            scorer=_steps_per_s(classifier(**SMALL_CNN), sync),
            sampling=SAMPLING_BATCH * _steps_per_s(render, sync),
            validation_s=0.0 if validator is None else 1 / _steps_per_s(measure, sync),
        )
    finally:
        torch.set_flush_denormal(False)


def plan_budget(
    budget_s: float, rates: Rates, teacher_steps: int, reference_steps: int, scorer_steps: int, images: int,
    fixed_s: float, min_gan_steps: int, max_gan_steps: int, measurements: int = 0, spent_s: float = 0.0,
) -> Plan:
    """The GAN's steps that fill BUDGET_S after SPENT_S already gone (the probe that measured RATES), its teacher
    (TEACHER_STEPS over all members), the MEASUREMENTS of its validation curve, the reference classifier (0 steps
    when it is stored already), the two CAS classifiers, generating IMAGES and FIXED_S (loading data, the metrics),
    within [MIN_GAN_STEPS, MAX_GAN_STEPS]: below the minimum a GAN draws noise, above the maximum it measured no
    better."""
    seconds = {
        "measuring": spent_s,
        "validation curve": measurements * rates.validation_s,
        "teacher": teacher_steps / rates.teacher,
        "reference classifier": reference_steps / rates.reference,
        "generation": images / rates.sampling,
        "CAS classifiers": 2 * scorer_steps / rates.scorer,
        "data and metrics": fixed_s,
    }
    left = budget_s - sum(seconds.values())
    gan_steps = int(min(max(left * rates.gan, min_gan_steps), max_gan_steps))
    return Plan(gan_steps, {"GAN": gan_steps / rates.gan, **seconds})
