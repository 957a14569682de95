"""What crosses a process boundary for each kind of job, declared once.

A kind of job (train, generate, a quality or a utility evaluation, a sweep) declares here its spec, the progress record its
workers report, the result its task ends with, the report it leaves in storage, its task name, queue and storage
prefix. Workers build these types; the producer, ``augment status`` and the dashboard decode through them, picking
the type from the job's record (its kind and, for an evaluation, its mode), never from the keys a dict happens to
have.

A finished model's card is declared in :mod:`shared.models`. Results, reports and cards are versioned: each
carries ``format``. A reader reads every format it lists and names the format, with the fix, for one it cannot read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from shared.broker import (
    EVALUATE_QUEUE,
    EVALUATE_TASK,
    GENERATE_QUEUE,
    GENERATE_TASK,
    SWEEP_QUEUE,
    SWEEP_TASK,
    TRAIN_QUEUE,
    TRAIN_TASK,
)
from shared.formats import UNVERSIONED, FormatError, check_format
from shared.layout import manifest_key, model_card_key, model_prefix, report_json_key, report_prefix, synthetic_prefix
from shared.progress import GenerateProgress, Progress, QualityPoint, StageProgress, SweepProgress, TrainProgress
from shared.specs import EvaluateSpec, GenerateSpec, TrainSpec
from shared.sweeps import SweepSpec, describe

# A result or a report older than versioning (written before 2026-12) has no ``format`` field: it is read as
# format 0 (shared/formats.py), which has the fields of format 1 less the ones added later (with defaults).
RESULT_FORMAT = 1
REPORT_FORMAT = 1
# 2: a study of a trained model's samples for a sweep's ranking measures no sample quality (quality, reference null)
UTILITY_REPORT_FORMAT = 2
T = TypeVar("T", bound=msgspec.Struct)


class ContractError(FormatError):
    """A stored record cannot be read as its declared type: an unknown format, or a field missing or of another type."""


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A record that crosses a process boundary. Unknown fields are kept out, not refused: a newer writer of the
    same format may add one, and an older reader still reads the rest."""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---- training ----


class TrainResult(Record, frozen=True, kw_only=True):
    """What a training job ends with."""

    format: int = RESULT_FORMAT
    model: str
    steps: int
    model_card: str  # URLs
    checkpoint: str  # the last
    grid: str
    loss_curve: str
    final: dict[str, float]
    warnings: list[str] = []
    best_checkpoint: str | None = None  # the best on the validation curve; None without a curve
    best: dict[str, Any] | None = None  # the curve's point there (shared.progress.QualityPoint)

    def summary(self) -> str:
        if self.best is None:
            return f"{self.steps} steps"
        return f"{self.steps} steps; best at step {self.best['step']}: {QualityPoint.from_dict(self.best).text()}"


# ---- generation ----


class GenerateResult(Record, frozen=True, kw_only=True):
    """What a generation job ends with."""

    format: int = RESULT_FORMAT
    manifest: str  # URL
    images: int
    shards: int
    warnings: list[str] = []

    def summary(self) -> str:
        return f"{self.images} images in {self.shards} shards"


# ---- evaluation ----


class Quality(Record, frozen=True, kw_only=True):
    """A generator's samples scored against real images in a reference classifier's feature space."""

    feature_space: str
    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    classifier_score: float
    real_classifier_score: float  # the same score on real test images: the ceiling to compare with
    label_accuracy: float  # the reference classifier agrees with the label each sample was generated for
    per_class_fid: dict[str, float]
    # by class name, as per_class_fid: recall among the class's own real images, and label accuracy of its samples
    per_class_recall: dict[str, float] = {}
    per_class_label_accuracy: dict[str, float] = {}


class QualityResult(Record, frozen=True, kw_only=True):
    """What a quality evaluation ends with."""

    format: int = RESULT_FORMAT
    report: str  # URL of report.md
    files: list[str]
    fid: float
    precision: float
    recall: float
    label_accuracy: float
    cas: float
    warnings: list[str] = []

    def summary(self) -> str:
        return f"FID {self.fid:.2f}, CAS {100 * self.cas:.1f} %"


class QualityReport(Record, frozen=True, kw_only=True):
    """A quality evaluation's ``report.json``."""

    format: int = REPORT_FORMAT
    spec: dict[str, Any]
    model: str
    dataset: str
    quality: Quality
    cas: float  # trained on synthetic only, tested on real
    real_trained_accuracy: float  # the same classifier trained on real data
    reference: dict[str, Any]  # the reference classifier: its dataset, steps, test accuracy, feature space
    created_at: str


class UtilityResult(Record, frozen=True, kw_only=True):
    """What a utility evaluation ends with."""

    format: int = RESULT_FORMAT
    report: str
    files: list[str]
    gan_share: float
    gan_over_real: float
    best: str  # the best arm with GAN samples
    warnings: list[str] = []  # why the synthetic data does not help, when it does not

    def summary(self) -> str:
        return f"the GAN's own share {100 * self.gan_share:+.2f} points (best: {self.best})"


class ArmOutcome(Record, frozen=True, kw_only=True):
    """One arm of the augmentation study over its seeds: accuracy, and balanced accuracy with and without post-hoc
    logit adjustment (worker.augmentation_study)."""

    setting: dict[str, Any]
    accuracies: list[float]
    mean: float
    std: float
    scores: list[dict[str, Any]] = []  # per seed
    balanced: float | None = None
    balanced_std: float | None = None
    balanced_adjusted: float | None = None
    balanced_adjusted_std: float | None = None
    rare: float | None = None  # the rarest third's accuracy
    rare_adjusted: float | None = None


class SweepVerdict(Record, frozen=True, kw_only=True):
    delta_c: float
    delta_d: float
    best: str


class UtilityReport(Record, frozen=True, kw_only=True):
    """A utility evaluation's ``report.json``: the augmentation study's arms and its verdict."""

    format: int = UTILITY_REPORT_FORMAT
    spec: dict[str, Any]
    gan: str  # the GAN's training job
    gan_steps: int
    teacher: dict[str, Any] | None = None
    real_images: int
    held_out_images: int
    holdout: str  # validation or test
    imbalance: float = 1.0
    class_counts: list[int] = []
    rarest_third: list[int] = []
    outcomes: list[ArmOutcome]
    gan_share: float  # best arm with GAN samples minus best without, balanced accuracy
    gan_over_real: float
    best_with_gan: str
    best_without_gan: str
    helps: bool
    warning: str | None = None  # why the synthetic data does not help, when it does not
    rare_share: float | None = None
    ceiling: float | None = None  # the true-label ceiling arm's balanced accuracy
    ceiling_gain: float | None = None
    captured: float | None = None  # the GAN's share of the ceiling's gain
    sweep: SweepVerdict | None = None
    # the GAN's samples against the held-out images; None where the study skipped it (arms gan-vs-mixup: a sweep's
    # trial, whose validation curve has measured it already)
    quality: Quality | None = None
    reference: dict[str, Any] | None = None
    seconds: float
    created_at: str


# ---- sweeps ----


class SweepResult(Record, frozen=True, kw_only=True):
    """What a sweep ends with: its winner, as a model ready for ``augment generate``."""

    format: int = RESULT_FORMAT
    report: str  # URL of report.md
    files: list[str]
    winner: str  # the winning trial's last training job: its model
    trial: int
    settings: dict[str, Any]  # the winner's values of the searched fields
    select: str  # the metric trials were ranked by
    value: float  # the winner's best figure on its validation curve
    step: int  # where on the curve
    compute_steps: int  # GAN steps every trial's jobs trained, together
    grid_steps: int  # what every trial trained to the winner's steps would have cost
    warnings: list[str] = []

    def summary(self) -> str:
        return (f"winner {self.winner} (trial {self.trial}: {describe(self.settings)}): {self.select} {self.value:.4g} at "
                f"step {self.step}; {self.compute_steps:,} GAN steps against a full grid's {self.grid_steps:,}")


class TrialOutcome(Record, frozen=True, kw_only=True):
    """One trial of a sweep as it ended: its settings, its training jobs (one per rung it reached), and its curve."""

    trial: int
    settings: dict[str, Any]
    jobs: list[str]
    state: str  # its last job's final state
    steps: int  # the budget it reached
    best: float | None  # its best figure of the selected metric (None: its job failed or was cancelled)
    best_step: int | None
    curve: list[dict[str, Any]] = []  # its validation curve (shared.progress.QualityPoint records)
    error: str | None = None  # why its last job did not succeed


class SweepReport(Record, frozen=True, kw_only=True):
    """A sweep's ``report.json``: the leaderboard, every trial's curve, and the winner's training spec."""

    format: int = REPORT_FORMAT
    spec: dict[str, Any]
    dataset: str
    select: str
    rungs: list[int]
    eta: int
    trials: list[TrialOutcome]  # best first
    winner: int
    winner_model: str
    winner_spec: dict[str, Any]  # `augment train` fields that train the winner from scratch to the sweep's steps
    compute_steps: int
    grid_steps: int
    seconds: float
    created_at: str
    stopped: str | None = None  # why the sweep ended before its last rung did (its time limit); None: it ran through


Result = TrainResult | GenerateResult | QualityResult | UtilityResult | SweepResult


class ReportCommit(Record, frozen=True, kw_only=True):
    """What an evaluation's commit fixes in Redis (worker.evaluate): which attempt's files make the report, and the
    job's result, so that whichever worker publishes the report copies the same files and reports the same result."""

    attempt: int
    files: list[str]  # names under the attempt's prefix, report.md last
    result: dict[str, Any]


# ---- the kinds ----


@dataclass(frozen=True)
class JobKind:
    """One kind of job, as every process sees it."""

    name: str  # train, generate, evaluate-quality, evaluate-utility, sweep
    record_kind: str  # what a job record says: train, generate, evaluate or sweep
    spec: type[TrainSpec] | type[GenerateSpec] | type[EvaluateSpec] | type[SweepSpec]
    progress: type[Progress]
    result: type[Result]
    task: str
    queue: str
    prefix: Callable[[str], str]  # job id -> the storage prefix of its outputs
    report_key: Callable[[str], str]  # job id -> where its report (a model card, a manifest, report.json) lies
    # what an evaluation's or a sweep's report.json decodes to (a model card and a manifest have readers of their own)
    evaluation_report: type[QualityReport] | type[UtilityReport] | type[SweepReport] | None = None

    def send(self, app: Any, spec: Mapping[str, Any]) -> None:
        """Send the first task of the job of SPEC (a recorded job's) to this kind's queue; its id is the job's."""
        app.send_task(self.task, kwargs={"spec": dict(spec)}, task_id=spec["job_id"], queue=self.queue)

    def decode_result(self, data: object, job_id: str) -> Result:
        """A finished job's result, as its task returned it."""
        return decode(self.result, data, f"the result of {self.name} job {job_id}")


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (
    JobKind("train", "train", TrainSpec, TrainProgress, TrainResult, TRAIN_TASK, TRAIN_QUEUE, model_prefix, model_card_key),
    JobKind("generate", "generate", GenerateSpec, GenerateProgress, GenerateResult, GENERATE_TASK, GENERATE_QUEUE,
            synthetic_prefix, manifest_key),
    JobKind("evaluate-quality", "evaluate", EvaluateSpec, StageProgress, QualityResult, EVALUATE_TASK, EVALUATE_QUEUE,
            report_prefix, report_json_key, QualityReport),
    JobKind("evaluate-utility", "evaluate", EvaluateSpec, StageProgress, UtilityResult, EVALUATE_TASK, EVALUATE_QUEUE,
            report_prefix, report_json_key, UtilityReport),
    JobKind("sweep", "sweep", SweepSpec, SweepProgress, SweepResult, SWEEP_TASK, SWEEP_QUEUE, report_prefix, report_json_key,
            SweepReport),
)}
# what a job record's kind can be, in the order the dashboard lists them
RECORD_KINDS = tuple(dict.fromkeys(kind.record_kind for kind in KINDS.values()))


def kind_of(record_kind: str, spec: Mapping[str, Any]) -> JobKind:
    """The kind of a job from its record: its kind and, for an evaluation, the mode its spec asks for."""
    name = f"evaluate-{spec.get('mode', 'quality')}" if record_kind == "evaluate" else record_kind
    if name not in KINDS:
        raise ContractError(f"unknown kind of job {name!r}; this version knows {', '.join(KINDS)}: upgrade gan-augment")
    return KINDS[name]


# ---- decoding ----


def decode(record_type: type[T], data: object, what: str) -> T:
    """DATA (decoded JSON) as RECORD_TYPE, or ContractError naming WHAT, its format and the problem in one line."""
    written = data.get("format", UNVERSIONED) if isinstance(data, Mapping) else None
    readable = msgspec.structs.fields(record_type)
    current = next((field.default for field in readable if field.name == "format"), None)
    if isinstance(data, Mapping) and isinstance(current, int):
        data = {**data, "format": check_format(what, data.get("format"), current, error=ContractError)}
    try:
        return msgspec.convert(data, record_type)
    except msgspec.ValidationError as exc:
        shown = "unversioned" if written == UNVERSIONED else f"format {written}"
        raise ContractError(f"{what} ({shown}) cannot be read as format {current}: {exc}; run the job again to "
                            "write it in the current format") from None


def decode_json(record_type: type[T], text: str, what: str) -> T:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{what} is not JSON ({exc}); run the job again") from None
    return decode(record_type, data, what)


def read_report(kind: JobKind, text: str, job_id: str) -> QualityReport | UtilityReport | SweepReport:
    if kind.evaluation_report is None:
        raise ContractError(f"{kind.name} job {job_id} writes no report.json: only evaluations and sweeps do")
    return decode_json(kind.evaluation_report, text, f"report.json of {kind.name} job {job_id}")
