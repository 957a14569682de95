"""An evaluation's report: rendered as report.md and charts from its record (the verdict's wording is
shared/verdicts.py's, which the dashboard shows too), written under the attempt's prefix, fixed by the attempt's
fenced commit and published under the job's (``publish_report``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import msgspec
import torch

from shared.contracts import Quality, QualityReport, ReportCommit, Result, SweepReport, UtilityReport
from shared.layout import report_attempt_prefix, report_markdown_key, report_prefix
from shared.lifecycle import JobStopped, StopReason
from shared.liveness import Attempt
from shared.models import ModelCard, read_card
from shared.specs import EvaluateSpec
from shared.storage import Storage, join_key
from shared.verdicts import utility_verdict
from worker import charts
from worker.augmentation_study import ARMS, ExperimentData, Outcome
from worker.data import ImageData
from worker.images import class_rows, grid_png


def class_grid(real: ImageData, fake: torch.Tensor, fake_labels: torch.Tensor, classes: int) -> bytes:
    """Real (left) and generated (right) images, one row of 8 per class."""
    return grid_png(class_rows(fake, fake_labels, classes), class_rows(real.images, real.labels, classes))


R = TypeVar("R", bound=Result)


def write_report(storage: Storage, job_id: str, markdown: str, report: QualityReport | UtilityReport | SweepReport,
                 images: dict[str, bytes],
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
    fixed = msgspec.json.decode(committed, type=ReportCommit)  # written by write_report, this very version
    for name in fixed.files:
        data = storage.get_bytes(join_key(report_attempt_prefix(job_id, fixed.attempt), name))
        storage.put_bytes(join_key(report_prefix(job_id), name), data, _CONTENT_TYPES[name.rsplit(".", 1)[1]])
    return fixed.result


_CONTENT_TYPES = {"png": "image/png", "json": "application/json", "md": "text/markdown"}


def copy_loss_curve(storage: Storage, model_id: str, images: dict[str, bytes]) -> None:
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


def quality_markdown(spec: EvaluateSpec, report: QualityReport, test_images: int, feature_space: str) -> str:
    return "\n".join([
        f"# Quality of model {report.model}", "",
        f"{spec.samples_per_class} generated images per class against {test_images} real {report.dataset} test images.", "",
        f"Feature space: {feature_space}.", "",
        _quality_table(report.quality, report.cas, report.real_trained_accuracy), "",
        "Images: `grid.png` (real left, generated right, one row per class), `losses.png` (the GAN's training).",
    ])


def now() -> str:
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


def utility_markdown(spec: EvaluateSpec, data: ExperimentData, outcomes: list[Outcome], report: UtilityReport,
                      gan: ModelCard, feature_note: str) -> str:
    imbalanced = report.imbalance > 1
    rare = data.rarest_third()
    shown = utility_verdict(report)  # the dashboard shows the same lines
    verdict_lines = [f"**{shown['headline']}.**", "", *(f"- {line[0].upper()}{line[1:]}." for line in shown["lines"])]
    if shown["warning"]:
        verdict_lines.append(f"- **WARNING: {shown['warning']}**")
    held_out = {"test": "test", "validation": "validation (training-split)"}[spec.holdout]
    if spec.model is not None and spec.holdout == "validation":
        held_out = "validation (the model's own split, which neither it nor its teacher trained on)"
    teacher = gan.teacher or {}
    counts = report.class_counts
    if imbalanced:
        subset = (f"a long-tailed subset of {len(data.real_images)} real images ({max(counts)} of the commonest class "
                  f"down to {min(counts)} of the rarest, imbalance {report.imbalance:g}; per class: "
                  f"{', '.join(map(str, counts))}; rarest third: classes {', '.join(map(str, rare))})")
    elif spec.model is not None:
        subset = f"the {len(data.real_images)} real images model {spec.model} trained on ({min(counts)}-{max(counts)} per class)"
    else:
        subset = f"{spec.per_class} real images per class"
    return "\n".join([
        f"# Does synthetic data help? {gan.dataset}, {subset}", "",
        *verdict_lines, "",
        f"The GAN (`{gan.job_id}`, {gan.steps} steps, width {gan.config['width']}) and its teacher "
        f"({teacher.get('members', 0)} classifiers of width {teacher.get('width', '-')}) were trained on the same "
        f"{len(data.real_images)} real images as the classifiers and on nothing else. Every setting trains the same "
        f"small CNN for {spec.classifier_steps} steps with per-sample random crop and flip (unless it says otherwise), "
        f"{spec.seeds} seeds, tested on {len(data.test_images)} real {held_out} images; settings with a second batch see "
        f"{data.extra_batch} extra inputs per step, drawn class-balanced from their pool unless they say otherwise. "
        "Logit adjustment subtracts the log of the label prior each classifier was trained on. Accuracies in %, "
        "mean +- std over seeds; ceiling arms are shown, not counted.", "",
        *_utility_rows(outcomes, rare), "",
        f"Sample quality of the GAN: {feature_note or 'not measured by this study (its model card has the validation curve)'}",
        "",
        "Images: `accuracy.png` (bars with one-standard-deviation error bars), `grid.png` (real left, generated "
        "right, one row per class), `losses.png` (the GAN's training).", "",
        f"Run time: {report.seconds:.0f} s.",
    ])
