"""Evaluation jobs as plain functions: ``run_quality`` and ``run_utility`` write a report under ``reports/<job>/``.

Both measure in the feature space of a reference classifier trained once per dataset on its real training split
(stored under ``references/`` and reused), unless the spec names local InceptionV3 weights. Every report says
which feature space it used.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, TypeVar

import msgspec
import torch

from shared.contracts import (
    ArmOutcome,
    ModelCard,
    Quality,
    QualityReport,
    QualityResult,
    ReportCommit,
    Result,
    SweepVerdict,
    UtilityReport,
    UtilityResult,
    read_card,
)
from shared.layout import report_attempt_prefix, report_markdown_key, report_prefix
from shared.lifecycle import JobStopped, StopReason
from shared.liveness import Attempt
from shared.progress import StageMeter, StageProgress, shifted
from shared.settings import Settings
from shared.specs import AUTO_TEACHER_MEMBERS, DEFAULT_BACKGROUND, EvaluateSpec, TrainSpec
from shared.storage import Storage, join_key
from shared.verdicts import utility_verdict
from worker import charts
from worker.augmentation_study import (
    ARMS,
    SMALL_CNN,
    SWEEP_ARMS,
    ExperimentData,
    Outcome,
    filter_by_confidence,
    gan_share,
    run_sweep,
    study_arms,
    sweep,
    sweep_steps,
    verdict,
)
from worker.checkpoint import load_model
from worker.classifier import accuracy, train_classifier
from worker.data import ImageData, held_out_split, load_dataset
from worker.images import class_rows, grid_png, to_uint8
from worker.metrics import InceptionFeatures, measure_quality
from worker.networks import Generator
from worker.reference import describe, reference_classifier
from worker.teacher import load_teacher
from worker.train import TrainHooks, run_training

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


def _class_grid(real: ImageData, fake: torch.Tensor, fake_labels: torch.Tensor, classes: int) -> bytes:
    """Real (left) and generated (right) images, one row of 8 per class."""
    return grid_png(class_rows(fake, fake_labels, classes), class_rows(real.images, real.labels, classes))


R = TypeVar("R", bound=Result)


def _write_report(storage: Storage, job_id: str, markdown: str, report: QualityReport | UtilityReport, images: dict[str, bytes],
                  attempt: Attempt, result_of: Callable[[str, list[str]], R]) -> R:
    """Put the report's images, report.json and report.md under ATTEMPT's prefix, fix them (and the job's result,
    RESULT_OF the report's URL and files) with the attempt's commit, and publish them (:func:`publish_report`).
    A commit refused (the lease was lost) raises JobStopped: the report is another attempt's to write."""
    files = {**images, "report.json": report.to_json().encode(), "report.md": markdown.encode()}
    for name, data in files.items():
        storage.put_bytes(join_key(report_attempt_prefix(job_id, attempt.epoch), name), data, _CONTENT_TYPES[name.rsplit(".", 1)[1]])
    result = result_of(storage.url_for(report_markdown_key(job_id)), sorted(images) + ["report.json", "report.md"])
    fixed = ReportCommit(attempt=attempt.epoch, files=list(files), result=result.to_dict())
    committed = attempt.commit(fixed.to_json())
    if committed is None:
        raise JobStopped(StopReason.LEASE_LOST, f"job {job_id} wrote its report, but its lease was taken over")
    publish_report(storage, job_id, committed)
    return result


def publish_report(storage: Storage, job_id: str, committed: str) -> dict[str, Any]:
    """Copy the fixed attempt's report files to the job's report prefix (report.md last: then the report is whole);
    the job's result. Run again (its worker died after the commit), it copies the same bytes."""
    fixed = msgspec.json.decode(committed, type=ReportCommit)  # written by _write_report, this very version
    for name in fixed.files:
        data = storage.get_bytes(join_key(report_attempt_prefix(job_id, fixed.attempt), name))
        storage.put_bytes(join_key(report_prefix(job_id), name), data, _CONTENT_TYPES[name.rsplit(".", 1)[1]])
    return fixed.result


_CONTENT_TYPES = {"png": "image/png", "json": "application/json", "md": "text/markdown"}


def _copy_loss_curve(storage: Storage, model_id: str, images: dict[str, bytes]) -> None:
    curve = read_card(storage, model_id).loss_curve
    if storage.exists(curve):
        images["losses.png"] = storage.get_bytes(curve)


def _quality_table(quality: Quality, cas: float, real_accuracy: float) -> str:
    lines = [
        "| metric | value |", "|---|---|",
        f"| FID (lower is better) | {quality.fid:.2f} |",
        f"| KID x 1000 (lower is better) | {1000 * quality.kid:.2f} +- {1000 * quality.kid_std:.2f} |",
        f"| precision (k=3) | {quality.precision:.3f} |",
        f"| recall (k=3) | {quality.recall:.3f} |",
        f"| classifier score (IS formula; real test images: {quality.real_classifier_score:.2f}) | {quality.classifier_score:.2f} |",
        f"| label accuracy of the samples | {quality.label_accuracy:.3f} |",
        f"| CAS: trained on synthetic only, tested on real | {cas:.4f} |",
        f"| the same classifier trained on real data | {real_accuracy:.4f} |",
        f"| CAS / real | {cas / max(real_accuracy, 1e-9):.3f} |",
        "", "| class | FID | recall | label accuracy |", "|---|---|---|---|",
    ]
    lines += [f"| {name} | {value:.2f} | {quality.per_class_recall.get(name, float('nan')):.3f} | "
              f"{quality.per_class_label_accuracy.get(name, float('nan')):.3f} |" for name, value in quality.per_class_fid.items()]
    return "\n".join(lines)


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
    background = card.spec.get("background", DEFAULT_BACKGROUND)  # the real images as the model saw them
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
    images = {"grid.png": _class_grid(test, fake, fake_labels, config.num_classes)}
    _copy_loss_curve(storage, spec.model, images)
    markdown = "\n".join([
        f"# Quality of model {spec.model}", "",
        f"{spec.samples_per_class} generated images per class against {len(test)} real {dataset} test images.", "",
        f"Feature space: {feature_space}.", "",
        _quality_table(quality, cas, real_accuracy), "",
        "Images: `grid.png` (real left, generated right, one row per class), `losses.png` (the GAN's training).",
    ])
    report = QualityReport(spec=spec.to_dict(), model=spec.model, dataset=dataset, quality=quality, cas=cas,
                           real_trained_accuracy=real_accuracy, reference=reference_meta, created_at=_now())
    return _write_report(storage, spec.job_id, markdown, report, images, attempt, lambda url, files: QualityResult(
        report=url, files=files, fid=quality.fid, precision=quality.precision, recall=quality.recall,
        label_accuracy=quality.label_accuracy, cas=cas))


def _real_train(dataset: str, settings: Settings, image_size: int, channels: int,
                background: str) -> tuple[torch.Tensor, torch.Tensor]:
    train = load_dataset(dataset, settings, "train", image_size=image_size, channels=channels, background=background)
    return train.images, train.labels


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def accuracy_chart(outcomes: list[Outcome], rare: list[int]) -> bytes:
    """Balanced accuracy per setting (its better scoring: logit-adjusted or not) with one-standard-deviation error
    bars, coloured by arm."""
    scored = [outcome.best_scored(rare) for outcome in outcomes]
    figure, axes = charts.subplots(figsize=(10, 0.32 * len(outcomes) + 1.2))
    positions = range(len(outcomes))[::-1]
    axes.barh(list(positions), [100 * s.mean for s in scored], xerr=[100 * s.std for s in scored],
              color=[ARMS[s.setting.arm].colour for s in scored], capsize=3)
    axes.set_yticks(list(positions), [s.label for s in scored], fontsize=8)
    low = min(100 * (s.mean - s.std) for s in scored)
    axes.set_xlim(max(0.0, low - 2), min(100.0, max(100 * (s.mean + s.std) for s in scored) + 1))
    axes.set_xlabel("balanced accuracy on the held-out images (%), mean +- std over seeds")
    return charts.png(figure)


def _plus_minus(values: tuple[float, float]) -> str:
    return f"{100 * values[0]:.2f} +- {100 * values[1]:.2f}"


def _utility_rows(outcomes: list[Outcome], rare: list[int]) -> list[str]:
    """One row per setting: accuracy, balanced accuracy and the rarest third's, plain and logit-adjusted."""
    rows = ["| setting | accuracy | balanced accuracy | with logit adjustment | rarest third | rarest third, adjusted |",
            "|---|---|---|---|---|---|"]
    for outcome in outcomes:
        plain, adjusted = outcome.scored(False, rare), outcome.scored(True, rare)
        rows.append(f"| {outcome.setting.name} | {_plus_minus((outcome.mean, outcome.std))} | "
                    f"{_plus_minus((plain.mean, plain.std))} | {_plus_minus((adjusted.mean, adjusted.std))} | "
                    f"{_plus_minus((plain.rare_mean, plain.rare_std))} | {_plus_minus((adjusted.rare_mean, adjusted.rare_std))} |")
    return rows


def _utility_markdown(spec: EvaluateSpec, data: ExperimentData, outcomes: list[Outcome], report: UtilityReport,
                      gan: ModelCard, feature_note: str) -> str:
    imbalanced = spec.imbalance > 1
    rare = data.rarest_third()
    shown = utility_verdict(report)  # the dashboard shows the same lines
    verdict_lines = [f"**{shown['headline']}.**", "", *(f"- {line[0].upper()}{line[1:]}." for line in shown["lines"])]
    if shown["warning"]:
        verdict_lines.append(f"- **WARNING: {shown['warning']}**")
    held_out = f"{len(data.test_images)} real {'test' if spec.holdout == 'test' else 'validation (training-split)'} images"
    teacher = gan.teacher or {}
    counts = torch.bincount(data.real_labels, minlength=data.num_classes).tolist()
    subset = (f"a long-tailed subset of {len(data.real_images)} real images ({spec.per_class} of the commonest class "
              f"down to {min(counts)} of the rarest, imbalance {spec.imbalance:g}; per class: "
              f"{', '.join(map(str, counts))}; rarest third: classes {', '.join(map(str, rare))})"
              if imbalanced else f"{spec.per_class} real images per class")
    return "\n".join([
        f"# Does synthetic data help? {spec.dataset}, {subset}", "",
        *verdict_lines, "",
        f"The GAN (`{gan.job_id}`, {gan.steps} steps, width {gan.config['width']}) and its teacher "
        f"({teacher.get('members', 0)} classifiers of width {teacher.get('width', '-')}) were trained on the same "
        f"{len(data.real_images)} real images as the classifiers and on nothing else. Every setting trains the same "
        f"small CNN for {spec.classifier_steps} steps with per-sample random crop and flip (unless it says otherwise), "
        f"{spec.seeds} seeds, tested on {held_out} (balanced over classes); settings with a second batch see "
        f"{data.extra_batch} extra inputs per step, drawn class-balanced from their pool unless they say otherwise. "
        "Logit adjustment subtracts the log of the label prior each classifier was trained on. Accuracies in %, "
        "mean +- std over seeds; ceiling arms are shown, not counted.", "",
        *_utility_rows(outcomes, rare), "",
        f"Sample quality of the GAN: {feature_note}", "",
        "Images: `accuracy.png` (bars with one-standard-deviation error bars), `grid.png` (real left, generated "
        "right, one row per class), `losses.png` (the GAN's training).", "",
        f"Run time: {report.seconds:.0f} s.",
    ])


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


def run_utility(spec: EvaluateSpec, settings: Settings, storage: Storage, progress: Progress = lambda info: None,
                should_stop: StopCheck = lambda: None, attempt: Attempt = Attempt()) -> UtilityResult:
    """The augmentation study (see :mod:`worker.augmentation_study`) on SPEC's dataset; writes its report. SHOULD_STOP
    is asked along the way: JobStopped ends the run when it says so, with the GAN's checkpoint written, so that a
    run of the same job resumes the GAN where it stopped."""
    progress = _stopping(progress, should_stop, spec.job_id)
    assert spec.dataset is not None  # the spec requires it for this mode
    started = time.perf_counter()
    subset = load_dataset(spec.dataset, settings, "train", per_class=spec.per_class, seed=spec.seed,
                          imbalance=_subset_imbalance(spec))
    image_size, channels = subset.images.shape[-1], subset.images.shape[1]
    num_classes = len(subset.info.class_names)
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
    run_training(gan_spec, settings, storage, hooks)  # resumes from its checkpoint if this job was interrupted
    generator, card = load_model(storage, gan_spec.job_id, torch.device("cpu"))
    assert card.teacher is not None  # the spec asks for one
    teacher = load_teacher(storage, card.teacher["key"])
    pool_per_class = max(spec.samples_per_class, round(max(spec.ratio_list) * spec.per_class) if spec.sweep else 0)
    synthetic, synthetic_labels = sample_balanced(generator, pool_per_class, spec.seed + 1)
    held_out, pool = _held_out(spec, settings, image_size, channels)
    data = ExperimentData(subset.images, subset.labels, synthetic, synthetic_labels, held_out.images, held_out.labels,
                          num_classes, teacher=teacher, synthetic_probs=teacher.probs(synthetic),
                          extra_batch=SMALL_CNN["batch_size"], ceiling_images=pool.images, ceiling_labels=pool.labels,
                          ceiling_probs=teacher.probs(pool.images))
    settings_list = study_arms(spec.imbalance > 1, ceiling=len(pool) > 0)
    if spec.sweep:
        progress(StageProgress("confidence filter"))
        filter_by_confidence(data, spec.classifier_steps, spec.seed)
        settings_list += sweep(spec.ratio_list, spec.weight_list, spec.confidence_list)

    reference, reference_meta = reference_classifier(storage, settings, spec.dataset, image_size, channels,
                                                     spec.reference_steps, spec.seed, progress)
    feature_space, inception = _feature_space(spec, reference_meta)
    quality = measure_quality(reference, held_out.images, held_out.labels, synthetic, synthetic_labels,
                              list(subset.info.class_names), feature_space, inception)
    rare = data.rarest_third()
    feature_note = _quality_note(quality, feature_space, [subset.info.class_names[label] for label in rare])

    arms = StageMeter(f"the study's classifiers ({len(settings_list)} settings x {spec.seeds} seeds)",
                      sweep_steps(settings_list, spec.seeds, spec.classifier_steps), progress)
    outcomes = run_sweep(data, settings_list, spec.seeds, spec.classifier_steps, arms)
    share = gan_share(outcomes, rare)
    sweep_result = verdict([o for o in outcomes if o.setting.arm in SWEEP_ARMS]) if spec.sweep else None
    seconds = time.perf_counter() - started
    images = {"accuracy.png": accuracy_chart(outcomes, rare),
              "grid.png": _class_grid(held_out, synthetic, synthetic_labels, num_classes)}
    _copy_loss_curve(storage, gan_spec.job_id, images)
    report = UtilityReport(
        spec=spec.to_dict(), gan=gan_spec.job_id, gan_steps=card.steps, teacher=card.teacher,
        real_images=len(subset), held_out_images=len(held_out), holdout=spec.holdout,
        imbalance=spec.imbalance, class_counts=torch.bincount(subset.labels, minlength=num_classes).tolist(),
        rarest_third=rare,
        outcomes=[_outcome_record(o, rare) for o in outcomes],
        gan_share=share.share, gan_over_real=share.over_real, best_with_gan=share.with_gan.label,
        best_without_gan=share.without_gan.label, helps=share.helps, warning=share.warning,
        rare_share=share.rare_share, ceiling=None if share.ceiling is None else share.ceiling.mean,
        ceiling_gain=share.ceiling_gain, captured=share.captured,
        sweep=None if sweep_result is None else SweepVerdict(delta_c=sweep_result.delta_c, delta_d=sweep_result.delta_d,
                                                             best=sweep_result.best.setting.name),
        quality=quality, reference=reference_meta, seconds=seconds, created_at=_now(),
    )
    markdown = _utility_markdown(spec, data, outcomes, report, card, feature_note)
    return _write_report(storage, spec.job_id, markdown, report, images, attempt, lambda url, files: UtilityResult(
        report=url, files=files, gan_share=share.share, gan_over_real=share.over_real, best=share.with_gan.label,
        warnings=[share.warning] if share.warning else []))
