"""What crosses a process boundary for each kind of job, declared once.

A kind of job (train, generate, a quality or a utility evaluation, a sweep) declares here its spec, the progress record its
workers report, the result its task ends with, the report it leaves in storage, its task name, queue and storage
prefix. Workers build these types; the producer, ``augment status`` and the dashboard decode through them, picking
the type from the job's record (its kind and, for an evaluation, its mode), never from the keys a dict happens to
have.

Results and reports are versioned: each carries ``format``. A reader reads every format it lists and names the
format, with the fix, for one it cannot read.
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
from shared.storage import Storage
from shared.sweeps import SweepSpec, describe

# A model card, a result or a report older than versioning (written before 2026-12) has no ``format`` field: it is
# read as format 0 (shared/formats.py), which has the fields of format 1 less the ones added later (with defaults).
MODEL_CARD_FORMAT = 1
RESULT_FORMAT = 1
REPORT_FORMAT = 1
# 2: a study of a trained model's samples for a sweep's ranking measures no sample quality (quality, reference null)
UTILITY_REPORT_FORMAT = 2
T = TypeVar("T", bound=msgspec.Struct)


class ContractError(FormatError):
    """A stored record cannot be read as its declared type: an unknown format, or a field missing or of another type."""


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    """A record that crosses a process boundary. Unknown fields are kept out, not refused: a newer writer of the
    same format may add one, and an older reader still reads the rest."""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---- training ----


class ModelCard(_Record, frozen=True, kw_only=True):
    """A trained model's card (``models/<job>/model.json``), written last: a card means the model is whole."""

    format: int = MODEL_CARD_FORMAT
    job_id: str
    dataset: str
    dataset_location: str
    num_train_images: int
    class_names: list[str]  # empty for an unconditional model
    # real training images per class (class index as a string): what `augment generate --rebalance` plans from
    class_counts: dict[str, int] = {}
    config: dict[str, Any]  # the GAN's config (worker.model.GANConfig)
    spec: dict[str, Any]
    recipe: dict[str, Any] = {}  # what the job ran, with the spec's automatic choices made (shared.specs.Recipe)
    steps: int
    final: dict[str, float]  # the last logged vital signs
    warnings: list[str] = []
    device: str
    precision: str = "fp32"
    threads: int | None = None  # torch's threads: a run with another count differs in its last bits (worker.threads)
    checkpoint: str  # the last checkpoint
    # the sampler at the best point of the validation curve; None: no curve (then the last is the best)
    best_checkpoint: str | None = None
    # the validation split and how the curve was measured (worker.validation.validation_record)
    validation: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []  # the validation curve: shared.progress.QualityPoint records
    best: dict[str, Any] | None = None  # the curve's point at the best checkpoint
    stopped_early: bool = False  # by --patience, at ``steps``
    teacher: dict[str, Any] | None = None  # how its teacher was trained, with its storage key; None without one
    grid: str
    loss_curve: str
    created_at: str

    def sampling_checkpoint(self, which: str) -> str:
        """The key of the checkpoint WHICH ("best" or "last") to sample from."""
        return self.best_checkpoint if which == "best" and self.best_checkpoint else self.checkpoint

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def channels(self) -> int:
        return int(self.config["channels"])


class TrainResult(_Record, frozen=True, kw_only=True):
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


class GenerateResult(_Record, frozen=True, kw_only=True):
    """What a generation job ends with."""

    format: int = RESULT_FORMAT
    manifest: str  # URL
    images: int
    shards: int
    warnings: list[str] = []

    def summary(self) -> str:
        return f"{self.images} images in {self.shards} shards"


# ---- evaluation ----


class Quality(_Record, frozen=True, kw_only=True):
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


class QualityResult(_Record, frozen=True, kw_only=True):
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


class QualityReport(_Record, frozen=True, kw_only=True):
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


class UtilityResult(_Record, frozen=True, kw_only=True):
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


class ArmOutcome(_Record, frozen=True, kw_only=True):
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


class SweepVerdict(_Record, frozen=True, kw_only=True):
    delta_c: float
    delta_d: float
    best: str


class UtilityReport(_Record, frozen=True, kw_only=True):
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


class SweepResult(_Record, frozen=True, kw_only=True):
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


class TrialOutcome(_Record, frozen=True, kw_only=True):
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


class SweepReport(_Record, frozen=True, kw_only=True):
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


class ReportCommit(_Record, frozen=True, kw_only=True):
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


def read_model_card(text: str, model_id: str) -> ModelCard:
    return decode_json(ModelCard, text, f"the model card of {model_id}")


class ModelNotFound(LookupError):
    """No finished training job of that id in storage (its model card is written last)."""


def check_model(storage: Storage, model_id: str) -> None:
    """Raise ModelNotFound unless training job MODEL_ID has finished: the one test of "is this a model", for the
    producer (before it enqueues) and the workers alike."""
    if not storage.exists(model_card_key(model_id)):
        raise ModelNotFound(f"model {model_id} not found: {storage.url_for(model_card_key(model_id))} is missing")


def read_card(storage: Storage, model_id: str) -> ModelCard:
    """The model card of finished training job MODEL_ID; ModelNotFound if it has not finished."""
    check_model(storage, model_id)
    return read_model_card(storage.get_text(model_card_key(model_id)), model_id)


# what a continuation of a finished training job (TrainSpec.continues) may set otherwise than the job it continues
CONTINUED_FIELDS = frozenset({"job_id", "steps", "continues", "teacher_from"})


def continuation_problem(spec: TrainSpec, parent: ModelCard, recipe: Mapping[str, Any] | None = None) -> str | None:
    """Why SPEC cannot continue finished training job PARENT, in words; None when it can. A continuation must be the
    run PARENT was, carried on to more steps: the same settings and, where RECIPE (what SPEC runs, as a dict) is
    given, the same automatic choices."""
    mine, theirs = spec.to_dict(), TrainSpec.from_dict(parent.spec).to_dict()
    differ = sorted(name for name in mine if name not in CONTINUED_FIELDS and mine[name] != theirs.get(name))
    if differ:
        return f"its {', '.join(differ)} differ from {parent.job_id}'s; a continuation changes only the steps"
    if spec.steps is None or spec.steps <= parent.steps:
        return f"{parent.job_id} has trained {parent.steps} steps already; give more steps than that"
    if recipe is not None:
        chosen = json.loads(json.dumps(recipe))  # as the card holds it: tuples are lists
        drift = sorted(name for name, value in chosen.items() if name != "steps" and value != parent.recipe.get(name))
        if drift:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in drift)
            return (f"at {spec.steps} steps the automatic {', '.join(drift)} differ from {parent.job_id}'s; continue a "
                    f"job that was given {flags} explicitly")
    return None


def study_problem(card: ModelCard, holdout: str) -> str | None:
    """Why a utility study of CARD's model, scored on HOLDOUT, cannot run, in words; None when it can."""
    if holdout == "validation" and not card.validation.get("images"):
        return (f"model {card.job_id} has no validation split to score on ({card.validation.get('why_none')}); give "
                "--holdout test")
    if card.teacher is None:
        return (f"model {card.job_id} has no teacher, which labels the study's mixup and GAN samples; train it with "
                "--teacher 3")
    return None


def read_report(kind: JobKind, text: str, job_id: str) -> QualityReport | UtilityReport | SweepReport:
    if kind.evaluation_report is None:
        raise ContractError(f"{kind.name} job {job_id} writes no report.json: only evaluations and sweeps do")
    return decode_json(kind.evaluation_report, text, f"report.json of {kind.name} job {job_id}")
