"""Job progress: one typed record per job kind, and the one line a person reads.

Workers report a record (training, evaluation) or the producer derives one from the shard ledger (generation);
either way it travels as a JSON object tagged with its ``kind``, so a reader never guesses a record's shape from
the keys it happens to have. ``augment status``, ``augment watch``, the demo and the dashboard all render it with
:func:`progress_line`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from shared.keys import JobField
from shared.records import JobStore
from shared.specs import LOWER_IS_BETTER


@dataclass(frozen=True)
class QualityPoint:
    """One measurement of a training job's samples against its validation split (worker/validation.py)."""

    step: int
    fid: float
    kid: float
    precision: float
    recall: float
    label_accuracy: float | None = None  # of a conditional model: the reference classifier's, on the asked-for labels

    def value(self, metric: str) -> float | None:
        """The figure of METRIC (a QualityMetric name)."""
        return getattr(self, metric)  # type: ignore[no-any-return]

    def text(self) -> str:
        accuracy = f" acc {self.label_accuracy:.3f}" if self.label_accuracy is not None else ""
        return f"FID {self.fid:.1f} KID {self.kid:.4f} P {self.precision:.2f} R {self.recall:.2f}{accuracy}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityPoint:
        names = {spec_field.name for spec_field in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in names})


def better(metric: str, candidate: float | None, best: float | None) -> bool:
    """Whether CANDIDATE improves on BEST for METRIC; a tie keeps the earlier checkpoint."""
    if candidate is None:
        return False
    if best is None:
        return True
    return candidate < best if metric in LOWER_IS_BETTER else candidate > best


def best_point(curve: Sequence[QualityPoint], metric: str) -> QualityPoint | None:
    """The first point of CURVE with the best METRIC."""
    best: QualityPoint | None = None
    for point in curve:
        if better(metric, point.value(metric), best.value(metric) if best is not None else None):
            best = point
    return best


def measurements_since_best(curve: Sequence[QualityPoint], metric: str) -> int:
    """How many measurements of CURVE came after its best: what ``patience`` counts."""
    best = best_point(curve, metric)
    return 0 if best is None else sum(point.step > best.step for point in curve)


@dataclass(frozen=True)
class TrainProgress:
    """A training job's vital signs, averaged over the last log window."""

    kind: ClassVar[str] = "train"
    step: int
    total_steps: int
    epoch: int
    loss_d: float
    loss_g: float
    d_x: float  # D's mean output on real images
    d_g_z: float  # D's mean output on generated images
    images_per_s: float
    eta_s: float
    warnings: list[str] = field(default_factory=list)  # the collapse guard's current verdicts
    # the validation curve: its latest point, and its best by the spec's select metric (None before the first)
    quality: QualityPoint | None = None
    best: QualityPoint | None = None

    def __post_init__(self) -> None:
        for name in ("quality", "best"):  # read back from JSON, a point arrives as a dict
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, QualityPoint.from_dict(value))

    @property
    def fraction(self) -> float | None:
        return self.step / max(self.total_steps, 1)

    def detail(self) -> str:
        vitals = (f"step {self.step}/{self.total_steps} epoch {self.epoch} loss_D {self.loss_d:.3f} "
                  f"loss_G {self.loss_g:.3f} D(x) {self.d_x:.3f} D(G(z)) {self.d_g_z:.3f}")
        if self.quality is None:
            return vitals
        best = f" (best at step {self.best.step})" if self.best is not None and self.best.step != self.quality.step else ""
        return f"{vitals} | validation at step {self.quality.step}: {self.quality.text()}{best}"

    def rate_text(self) -> str:
        return f"{self.images_per_s:.0f} img/s" if self.images_per_s > 0 else ""


@dataclass(frozen=True)
class GenerateProgress:
    """A generation job's shards and images so far, read from its shard ledger."""

    kind: ClassVar[str] = "generate"
    shards_done: int
    shards_total: int
    images_done: int
    images_total: int
    images_per_s: float
    eta_s: float
    warnings: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        return self.images_done / max(self.images_total, 1)

    def detail(self) -> str:
        return f"shards {self.shards_done}/{self.shards_total} images {self.images_done}/{self.images_total}"

    def rate_text(self) -> str:
        return f"{self.images_per_s:.0f} img/s" if self.images_per_s > 0 else ""


@dataclass(frozen=True)
class StageProgress:
    """A stage that is not the GAN's own loop (a teacher, a reference or scoring classifier, the study's arms, a
    sampling pass), with its step count, rate and ETA where the stage counts steps."""

    kind: ClassVar[str] = "stage"
    stage: str
    done: int | None = None
    total: int | None = None
    per_s: float = 0.0  # steps (or UNIT) per second since the stage began
    eta_s: float = 0.0
    unit: str = "steps"
    warnings: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        return None if self.total is None or self.done is None else self.done / max(self.total, 1)

    def detail(self) -> str:
        return self.stage + (f" {self.done}/{self.total} {self.unit}" if self.total is not None else "")

    def rate_text(self) -> str:
        return f"{self.per_s:.0f} {self.unit}/s" if self.per_s > 0 else ""


class StageMeter:
    """Turns a stage's step callbacks into :class:`StageProgress` reports with rate and ETA, at most one per
    INTERVAL_S (a report is a Redis write; a classifier step takes milliseconds), plus the first and the last."""

    def __init__(self, stage: str, total: int, report: Callable[[StageProgress], None], interval_s: float = 1.0,
                 unit: str = "steps"):
        self.stage, self.total, self.report, self.interval_s, self.unit = stage, total, report, interval_s, unit
        self.started = time.perf_counter()
        self.last_report = -float("inf")

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last_report < self.interval_s and done < self.total:
            return
        self.last_report = now
        per_s = done / max(now - self.started, 1e-9)
        self.report(StageProgress(self.stage, done, self.total, per_s, max(self.total - done, 0) / max(per_s, 1e-9), self.unit))


def shifted(after_step: Callable[[int], None], before: int) -> Callable[[int], None]:
    """AFTER_STEP for a part of a stage that starts BEFORE steps into it (the second of a teacher's members)."""
    return lambda step: after_step(before + step)


@dataclass(frozen=True)
class SweepProgress:
    """A sweep's trials so far (worker.sweep): the rung it is at, its trials' jobs that have ended of those planned
    (a rung's count is known once the rung before it has ended), and the leading trial."""

    kind: ClassVar[str] = "sweep"
    rung: int  # from 0
    rungs: int
    rung_steps: int
    done: int  # trial jobs that have ended, every rung's
    total: int  # trial jobs planned, every rung's, its trials promoted as planned
    leader: str = ""  # the best trial of the last rung that ended, in words
    eta_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.done / max(self.total, 1)

    def detail(self) -> str:
        leader = f"; leading: {self.leader}" if self.leader else ""
        return f"rung {self.rung + 1}/{self.rungs} ({self.rung_steps} steps): {self.done}/{self.total} trial jobs ended{leader}"

    def rate_text(self) -> str:
        return ""


Progress = TrainProgress | GenerateProgress | StageProgress | SweepProgress
PROGRESS_TYPES: dict[str, type[Progress]] = {
    **{kind.kind: kind for kind in (TrainProgress, GenerateProgress, StageProgress, SweepProgress)},
    "evaluate": StageProgress,  # what workers before the stage records reported: a stage name and a count
}


def progress_to_dict(progress: Progress) -> dict[str, Any]:
    """The JSON object a record travels as (Celery's result meta, ``status --json``)."""
    return {"kind": progress.kind, **asdict(progress)}


def progress_from_dict(data: object) -> Progress | None:
    """The record in DATA, or None for anything else (no progress yet, a cancellation reason, an older worker's
    untagged report): a status must render whatever Redis holds."""
    if not isinstance(data, Mapping) or data.get("kind") not in PROGRESS_TYPES:
        return None
    record_type = PROGRESS_TYPES[data["kind"]]
    names = {spec_field.name for spec_field in fields(record_type)}
    try:
        return record_type(**{name: value for name, value in data.items() if name in names})
    except TypeError:  # a field missing: not a record this version understands
        return None


def generation_progress(
    store: JobStore, job_id: str, shards_total: int, images_total: int, stalled_images: int = 0
) -> GenerateProgress:
    """A generation job's progress from its shard ledger: shards and images done, images/s and ETA.

    Read from the ledger rather than reported by the shard tasks, so workers finishing shards at the same time
    never overwrite each other's figures, nor the job's final state. The ETA counts live work only: the
    STALLED_IMAGES of shards whose worker stopped wait for their redelivery, which the status shows apart.
    """
    shards_done, images_done = store.shard_totals(job_id)
    started = float(store.get_field(job_id, JobField.STARTED_AT) or time.time())
    rate = images_done / max(time.time() - started, 1e-9)
    return GenerateProgress(
        shards_done=shards_done, shards_total=shards_total, images_done=images_done, images_total=images_total,
        images_per_s=rate, eta_s=max(images_total - images_done - stalled_images, 0) / rate if rate > 0 else 0.0,
    )


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress_line(state: str, progress: Progress | None, bar_width: int = 24) -> str:
    """One line for a person: the state, a bar, the job's vital signs, its rate and ETA, and any warnings."""
    if progress is None:
        return state
    if progress.fraction is None:  # a stage without a count: its name says all there is
        return f"{state} {progress.detail()}"
    filled = int(bar_width * progress.fraction)
    bar = "#" * filled + "." * (bar_width - filled)
    rate = progress.rate_text()
    eta = format_duration(progress.eta_s) if rate else "?"
    line = f"{state} [{bar}] {progress.detail()} {rate or '-'} ETA {eta}"
    return "".join([line, *(f" WARNING: {warning}" for warning in progress.warnings)])
