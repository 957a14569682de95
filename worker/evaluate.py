"""Evaluation jobs as plain functions: ``run_quality`` and ``run_utility`` measure, and worker.report renders and
writes their report under ``reports/<job>/``.

Both measure in the feature space of a reference classifier trained once per dataset on its real training split
(stored under ``references/`` and reused), unless the spec names local InceptionV3 weights. Every report says
which feature space it used.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from shared.contracts import ArmOutcome, Quality, QualityReport, QualityResult, SweepVerdict, UtilityReport, UtilityResult
from shared.lifecycle import JobStopped, StopReason
from shared.liveness import Attempt
from shared.models import ModelCard, study_problem
from shared.progress import StageMeter, StageProgress, shifted
from shared.settings import Settings
from shared.specs import AUTO_TEACHER_MEMBERS, DEFAULT_BACKGROUND, EvaluateSpec, TrainSpec
from shared.storage import Storage
from worker.augmentation_study import (
    SMALL_CNN,
    ExperimentData,
    Outcome,
    gan_share,
    run_sweep,
    study_arms,
    sweep_steps,
)
from worker.checkpoint import load_model
from worker.classifier import accuracy, train_classifier
from worker.data import ImageData, held_out_split, load_dataset
from worker.images import to_uint8
from worker.metrics import InceptionFeatures, measure_quality
from worker.networks import Generator
from worker.ratio_sweep import SWEEP_ARMS, filter_by_confidence, sweep, verdict
from worker.reference import describe, reference_classifier
from worker.report import (
    accuracy_chart,
    class_grid,
    copy_loss_curve,
    now,
    quality_markdown,
    utility_markdown,
    write_report,
)
from worker.teacher import load_teacher
from worker.train import TrainHooks, run_training
from worker.validation import job_images, validation_split

log = logging.getLogger("augment.evaluate")
Progress = Callable[[StageProgress], None]
StopCheck = Callable[[], StopReason | None]  # why to stop, if the job should


def _stopping(progress: Progress, should_stop: StopCheck, job_id: str) -> Progress:
    """PROGRESS that also asks SHOULD_STOP after every report (at most one a second while a stage counts steps) and
    raises JobStopped when it says so: an evaluation stops within seconds, as a training job does."""
    def report(info: StageProgress) -> None:
        progress(info)
        reason = should_stop()
        if reason is not None:
            raise JobStopped(reason, f"job {job_id} stopped during its stage: {info.stage}")
    return report


@torch.no_grad()
def sample_balanced(generator: Generator, per_class: int, seed: int, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """PER_CLASS images of every class from GENERATOR, (N, C, H, W) uint8 with their intended labels (N,)."""
    config = generator.config
    classes = max(config.num_classes, 1)
    labels = torch.arange(classes).repeat_interleave(per_class)  # (N,)
    noise = torch.randn(len(labels), config.nz, generator=torch.Generator().manual_seed(seed))
    generator.eval()
    images = torch.cat([
        to_uint8(generator(noise[start : start + batch], labels[start : start + batch] if config.conditional else None)).cpu()
        for start in range(0, len(labels), batch)
    ])
    return images, labels


def _test_split(spec: EvaluateSpec, settings: Settings, dataset: str, image_size: int, channels: int,
                background: str = DEFAULT_BACKGROUND) -> ImageData:
    return load_dataset(dataset, settings, "test", image_size=image_size, channels=channels, limit=spec.test_limit,
                        background=background)


def _feature_space(spec: EvaluateSpec, reference_meta: dict[str, Any]) -> tuple[str, InceptionFeatures | None]:
    if spec.inception_weights:
        return f"InceptionV3 pool features (2048-d) from {spec.inception_weights}", InceptionFeatures(spec.inception_weights)
    return describe(reference_meta), None


def run_quality(spec: EvaluateSpec, settings: Settings, storage: Storage, progress: Progress = lambda info: None,
                should_stop: StopCheck = lambda: None, attempt: Attempt = Attempt()) -> QualityResult:
    """Score a trained model against the real test split: FID, KID, precision/recall, per-class FID, score, CAS.
    SHOULD_STOP is asked along the way; JobStopped ends the run when it says so."""
    progress = _stopping(progress, should_stop, spec.job_id)
    assert spec.model is not None  # the spec requires it for this mode
    generator, card = load_model(storage, spec.model, torch.device("cpu"), spec.checkpoint)
    config = generator.config
    if not config.conditional:
        raise ValueError(f"model {spec.model} is unconditional: per-class metrics and CAS need a conditional model")
    dataset = spec.dataset or card.dataset
    background = _background(card)
    reference, reference_meta = reference_classifier(storage, settings, dataset, config.image_size, config.channels,
                                                     spec.reference_steps, spec.seed, progress, background)
    feature_space, inception = _feature_space(spec, reference_meta)
    test = _test_split(spec, settings, dataset, config.image_size, config.channels, background)
    progress(StageProgress("sampling"))
    fake, fake_labels = sample_balanced(generator, spec.samples_per_class, spec.seed)
    progress(StageProgress("metrics: FID, KID, precision, recall"))
    quality = measure_quality(reference, test.images, test.labels, fake, fake_labels, card.class_names,
                              feature_space, inception)
    steps = spec.classifier_steps
    meter = StageMeter("classification accuracy score: on synthetic, then on real images", 2 * steps, progress)
    synthetic_trained = train_classifier(fake, fake_labels, config.num_classes, steps=steps, seed=spec.seed,
                                         after_step=meter, **SMALL_CNN)
    cas = accuracy(synthetic_trained, test.images, test.labels)
    real_trained = train_classifier(*_real_train(dataset, settings, config.image_size, config.channels, background),
                                    config.num_classes,
                                    steps=steps, seed=spec.seed, after_step=shifted(meter, steps), **SMALL_CNN)
    real_accuracy = accuracy(real_trained, test.images, test.labels)
    images = {"grid.png": class_grid(test, fake, fake_labels, config.num_classes)}
    copy_loss_curve(storage, spec.model, images)
    report = QualityReport(spec=spec.to_dict(), model=spec.model, dataset=dataset, quality=quality, cas=cas,
                           real_trained_accuracy=real_accuracy, reference=reference_meta, created_at=now())
    markdown = quality_markdown(spec, report, len(test), feature_space)
    return write_report(storage, spec.job_id, markdown, report, images, attempt, lambda url, files: QualityResult(
        report=url, files=files, fid=quality.fid, precision=quality.precision, recall=quality.recall,
        label_accuracy=quality.label_accuracy, cas=cas))


def _real_train(dataset: str, settings: Settings, image_size: int, channels: int,
                background: str) -> tuple[torch.Tensor, torch.Tensor]:
    train = load_dataset(dataset, settings, "train", image_size=image_size, channels=channels, background=background)
    return train.images, train.labels


def _gan_spec(spec: EvaluateSpec, gan_id: str) -> TrainSpec:
    """The study's GAN: augment train's defaults on the real subset only, with a teacher for the soft labels whose
    classifiers train as long as the study's."""
    assert spec.dataset is not None
    chosen: dict[str, Any] = {name: value for name, value in (("steps", spec.gan_steps), ("width", spec.gan_width),
                                                              ("class_balanced", spec.gan_class_balanced))
                              if value is not None}
    if _subset_imbalance(spec) is not None:
        chosen["imbalance"] = spec.imbalance
    # validation 0: the GAN trains on the whole subset, as every other arm's classifier does
    return TrainSpec.from_dict({"job_id": gan_id, "dataset": spec.dataset, "per_class": spec.per_class, "seed": spec.seed,
                                "teacher": AUTO_TEACHER_MEMBERS, "teacher_steps": spec.classifier_steps, "validation": 0,
                                **chosen})


def _subset_imbalance(spec: EvaluateSpec) -> float | None:
    return spec.imbalance if spec.imbalance > 1 else None


def _held_out(spec: EvaluateSpec, settings: Settings, image_size: int, channels: int) -> tuple[ImageData, ImageData]:
    """The images every classifier is scored on, and the ceiling arms' pool of real images outside them and the subset."""
    assert spec.dataset is not None
    validating = spec.holdout == "validation"
    validation, pool = held_out_split(spec.dataset, settings, spec.per_class, spec.seed,
                                      spec.validation_size if validating else 0, image_size, channels,
                                      _subset_imbalance(spec), spec.samples_per_class)
    return (validation if validating else _test_split(spec, settings, spec.dataset, image_size, channels)), pool


def _quality_note(quality: Quality, feature_space: str, rare_names: list[str]) -> str:
    """The GAN's sample quality in one paragraph: overall, per class, and the rarest third's."""
    worst = max(quality.per_class_fid, key=quality.per_class_fid.__getitem__)

    def rare_mean(per_class: dict[str, float], digits: int = 3) -> str:
        values = [per_class[name] for name in rare_names if name in per_class]
        return f"{statistics.fmean(values):.{digits}f}" if values else "-"

    return (f"FID {quality.fid:.2f}, precision {quality.precision:.3f}, recall {quality.recall:.3f}, "
            f"label accuracy {quality.label_accuracy:.3f}; per-class FID "
            f"{min(quality.per_class_fid.values()):.1f}-{quality.per_class_fid[worst]:.1f} (worst: {worst}); the "
            f"rarest third ({', '.join(rare_names)}): FID {rare_mean(quality.per_class_fid, 1)}, recall "
            f"{rare_mean(quality.per_class_recall)}, label accuracy {rare_mean(quality.per_class_label_accuracy)} "
            f"(feature space: {feature_space}; report.json has every class).")


def _outcome_record(outcome: Outcome, rare: list[int]) -> ArmOutcome:
    plain, adjusted = outcome.scored(False, rare), outcome.scored(True, rare)
    return ArmOutcome(setting=asdict(outcome.setting), accuracies=outcome.accuracies, mean=outcome.mean, std=outcome.std,
                      scores=[asdict(scores) for scores in outcome.scores],
                      balanced=plain.mean, balanced_std=plain.std, balanced_adjusted=adjusted.mean,
                      balanced_adjusted_std=adjusted.std, rare=plain.rare_mean, rare_adjusted=adjusted.rare_mean)


@dataclass(frozen=True)
class StudyInputs:
    """What a study's classifiers train and are scored on, and the GAN whose samples they draw."""

    subset: ImageData  # the real images every arm trains on: the GAN's (and its teacher's) training images
    held_out: ImageData  # the images every classifier is scored on
    pool: ImageData  # real images outside both, for the ceiling arms (none: no ceiling arms)
    gan_id: str
    generator: Generator
    card: ModelCard
    imbalance: float  # the subset's long-tail profile (1: balanced)


def run_utility(spec: EvaluateSpec, settings: Settings, storage: Storage, progress: Progress = lambda info: None,
                should_stop: StopCheck = lambda: None, attempt: Attempt = Attempt()) -> UtilityResult:
    """The augmentation study (see :mod:`worker.augmentation_study`) on a GAN trained on a subset of SPEC's dataset,
    or on SPEC's model; writes its report. SHOULD_STOP is asked along the way: JobStopped ends the run when it says
    so, with the GAN's checkpoint written, so that a run of the same job resumes the GAN where it stopped."""
    progress = _stopping(progress, should_stop, spec.job_id)
    started = time.perf_counter()
    inputs = (_model_study(spec, settings, storage) if spec.model is not None
              else _subset_study(spec, settings, storage, progress, should_stop, attempt))
    subset, held_out, pool, card = inputs.subset, inputs.held_out, inputs.pool, inputs.card
    image_size, channels = subset.images.shape[-1], subset.images.shape[1]
    num_classes = len(subset.info.class_names)
    assert card.teacher is not None  # the study's own GAN is trained with one; a model is checked for one
    teacher = load_teacher(storage, card.teacher["key"])
    pool_per_class = max(spec.samples_per_class, round(max(spec.ratio_list) * spec.per_class) if spec.sweep else 0)
    synthetic, synthetic_labels = sample_balanced(inputs.generator, pool_per_class, spec.seed + 1)
    data = ExperimentData(subset.images, subset.labels, synthetic, synthetic_labels, held_out.images, held_out.labels,
                          num_classes, teacher=teacher, synthetic_probs=teacher.probs(synthetic),
                          extra_batch=SMALL_CNN["batch_size"], ceiling_images=pool.images, ceiling_labels=pool.labels,
                          ceiling_probs=teacher.probs(pool.images))
    settings_list = study_arms(inputs.imbalance > 1, ceiling=len(pool) > 0, arms=spec.arms)
    if spec.sweep:
        progress(StageProgress("confidence filter"))
        filter_by_confidence(data, spec.classifier_steps, spec.seed)
        settings_list += sweep(spec.ratio_list, spec.weight_list, spec.confidence_list)

    rare = data.rarest_third()
    quality, reference_meta, feature_note = None, None, ""
    if spec.arms == "all":  # a sweep's score (gan-vs-mixup) skips it: the trial's validation curve measured it
        reference, reference_meta = reference_classifier(storage, settings, card.dataset, image_size, channels,
                                                         spec.reference_steps, spec.seed, progress, _background(card))
        feature_space, inception = _feature_space(spec, reference_meta)
        quality = measure_quality(reference, held_out.images, held_out.labels, synthetic, synthetic_labels,
                                  list(subset.info.class_names), feature_space, inception)
        feature_note = _quality_note(quality, feature_space, [subset.info.class_names[label] for label in rare])

    arms = StageMeter(f"the study's classifiers ({len(settings_list)} settings x {spec.seeds} seeds)",
                      sweep_steps(settings_list, spec.seeds, spec.classifier_steps), progress)
    outcomes = run_sweep(data, settings_list, spec.seeds, spec.classifier_steps, arms)
    share = gan_share(outcomes, rare)
    sweep_result = verdict([o for o in outcomes if o.setting.arm in SWEEP_ARMS]) if spec.sweep else None
    seconds = time.perf_counter() - started
    images = {"accuracy.png": accuracy_chart(outcomes, rare),
              "grid.png": class_grid(held_out, synthetic, synthetic_labels, num_classes)}
    copy_loss_curve(storage, inputs.gan_id, images)
    report = UtilityReport(
        spec=spec.to_dict(), gan=inputs.gan_id, gan_steps=card.steps, teacher=card.teacher,
        real_images=len(subset), held_out_images=len(held_out), holdout=spec.holdout,
        imbalance=inputs.imbalance, class_counts=torch.bincount(subset.labels, minlength=num_classes).tolist(),
        rarest_third=rare,
        outcomes=[_outcome_record(o, rare) for o in outcomes],
        gan_share=share.share, gan_over_real=share.over_real, best_with_gan=share.with_gan.label,
        best_without_gan=share.without_gan.label, helps=share.helps, warning=share.warning,
        rare_share=share.rare_share, ceiling=None if share.ceiling is None else share.ceiling.mean,
        ceiling_gain=share.ceiling_gain, captured=share.captured,
        sweep=None if sweep_result is None else SweepVerdict(delta_c=sweep_result.delta_c, delta_d=sweep_result.delta_d,
                                                             best=sweep_result.best.setting.name),
        quality=quality, reference=reference_meta, seconds=seconds, created_at=now(),
    )
    markdown = utility_markdown(spec, data, outcomes, report, card, feature_note)
    return write_report(storage, spec.job_id, markdown, report, images, attempt, lambda url, files: UtilityResult(
        report=url, files=files, gan_share=share.share, gan_over_real=share.over_real, best=share.with_gan.label,
        warnings=[share.warning] if share.warning else []))


def _subset_study(spec: EvaluateSpec, settings: Settings, storage: Storage, progress: Progress, should_stop: StopCheck,
                  attempt: Attempt) -> StudyInputs:
    """A small subset of SPEC's dataset and a GAN trained on it alone (resumed from its checkpoint if this job was
    interrupted), scored on the test split or a validation split outside the subset."""
    assert spec.dataset is not None  # the spec requires a dataset or a model
    subset = load_dataset(spec.dataset, settings, "train", per_class=spec.per_class, seed=spec.seed,
                          imbalance=_subset_imbalance(spec))
    gan_spec = _gan_spec(spec, f"{spec.job_id}-gan"[:64])
    stage = "training the GAN on the real subset"
    progress(StageProgress(stage, 0, gan_spec.steps))
    hooks = TrainHooks(
        progress=lambda info: progress(StageProgress(stage, info.step, info.total_steps, info.images_per_s / gan_spec.batch_size,
                                                     info.eta_s)),
        stage=progress,  # its teacher, first
        should_stop=should_stop,
        # the study's own GAN writes as this attempt, and fixes its own card (its job id is not the evaluation's)
        attempt=Attempt(attempt.epoch, attempt.may_write),
    )
    run_training(gan_spec, settings, storage, hooks)
    generator, card = load_model(storage, gan_spec.job_id, torch.device("cpu"))
    held_out, pool = _held_out(spec, settings, subset.images.shape[-1], subset.images.shape[1])
    return StudyInputs(subset, held_out, pool, gan_spec.job_id, generator, card, spec.imbalance)


def _model_study(spec: EvaluateSpec, settings: Settings, storage: Storage) -> StudyInputs:
    """SPEC's model and the images it trained on, scored on its own validation split (which neither it nor its
    teacher saw) or on the test split; no ceiling arms (the training split outside the model's images is not kept)."""
    assert spec.model is not None
    generator, card = load_model(storage, spec.model, torch.device("cpu"), spec.checkpoint)
    problem = study_problem(card, spec.holdout)
    if problem is not None:
        raise ValueError(problem)
    trained = TrainSpec.from_dict(card.spec)
    subset, validation, _ = validation_split(trained, job_images(trained, settings))
    held_out = validation
    if spec.holdout == "test" or held_out is None:
        held_out = _test_split(spec, settings, card.dataset, generator.config.image_size, generator.config.channels,
                               _background(card))
    nothing = ImageData(subset.images[:0], subset.labels[:0], subset.info)
    return StudyInputs(subset, held_out, nothing, spec.model, generator, card, trained.imbalance or 1.0)


def _background(card: ModelCard) -> str:
    """What the model's real images were composited on: the real images it is compared with must be too."""
    return str(card.spec.get("background", DEFAULT_BACKGROUND))
