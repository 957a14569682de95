"""A sweep: the fleet searches the training recipe for a dataset (``augment sweep``).

The spec declares a base training spec, a space of values for some of its fields, and a budget. Every point drawn
from the space is a *trial*; a trial trains as ordinary training jobs on the train queue, one per *rung* it reaches,
each continuing the trial's job of the rung before (``TrainSpec.continues``), so a promoted trial picks up where it
stopped instead of starting again.

The scheduler is successive halving run rung by rung (Jamieson & Talwalkar 2016; ASHA, Li et al. 2020, is its
asynchronous form): every trial trains ``rungs[0]`` steps; once *all* of a rung's jobs have ended, the best
``1/eta`` of them (by the best point of their validation curves) go on to the next rung's steps, the rest stop there.
Rung-synchronous rather than ASHA's promote-as-soon-as-possible: a decision waits for the rung's slowest trial, so
workers idle at each rung's end (at most the slowest trial's time, per rung), but no decision depends on which trial
happened to finish first, so a sweep run twice, or resumed after its scheduler died, picks the same winner.

Everything here is a pure function of the spec and of the trials' results: the trials' job ids are derived from the
sweep's (``<sweep>-t003-r1``), so a scheduler that resumes finds the jobs its predecessor submitted, never submits one
twice, and never reruns a finished one.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, cast

import msgspec
from msgspec import Meta

from shared.specs import (
    DEFAULT_SELECT,
    LOWER_IS_BETTER,
    REFERENCE_STEPS,
    SMALL_DATA_STEPS,
    TEACHER_STEPS,
    UTILITY,
    EvaluateSpec,
    JobId,
    QualityMetric,
    Seed,
    SpecError,
    Steps,
    SweepMetric,
    TrainSpec,
    _Spec,
    option,
)

# Fields a sweep cannot search: what names the job or its budget (the sweep sets those), and what changes the
# images a trial trains or is measured on (the validation split, the subset, the size): trials compared on
# different validation images are not compared at all.
FIXED_FIELDS = frozenset({
    "job_id", "dataset", "steps", "epochs", "continues", "teacher_from", "select", "version", "validation", "validate_every",
    "per_class", "limit", "imbalance", "seed", "image_size", "channels", "background", "reference_steps",
})
# The search space for small labelled data when a sweep names none, from docs/training.md's measurements (its
# table "The default space" gives the figures behind each field):
# - diffaugment: translation alone measured better than translation,cutout on Fashion-MNIST, but not at the default
#   budget; color was within the noise on the RGB folder and worse on grey;
# - mode_seeking and guidance: the two levers that pull recall and label accuracy against each other; 1 and 1 is
#   the default, 0.3 measured a different balance for each;
# - width: 32 measured on the RGB folder, 64 the default on grey (and dearer per step).
DEFAULT_SPACE: dict[str, list[Any]] = {
    "diffaugment": ["translation,cutout", "translation", "translation,cutout,color"],
    "mode_seeking": [0.3, 1.0],
    "guidance": [0.3, 1.0],
    "width": [32, 64],
}
# What the sweep sets in each trial's spec, so its base may not
SET_BY_SWEEP = frozenset({"job_id", "steps", "epochs", "continues", "teacher_from", "select"})
# what a teacher is trained with, bar the data
TEACHER_FIELDS = frozenset({"teacher", "teacher_width", "teacher_size", "teacher_steps"})
MAX_TRIALS = 1000
MEASUREMENTS_PER_RUNG = 4  # validation points in a first-rung job, unless the base spec says how often
_TRIAL_SUFFIX = len("-t000-r0")


class SweepSpec(_Spec, frozen=True):
    """A search over training recipes: BASE (train spec fields every trial shares, the dataset among them), SPACE
    (field -> the values to try; empty: DEFAULT_SPACE), TRIALS drawn from the grid of SPACE (None: all of it), each
    promoted by successive halving from MIN_STEPS up to STEPS."""

    kind: ClassVar[str] = "sweep"

    job_id: JobId
    base: dict[str, Any]
    space: dict[str, list[Any]] = {}
    trials: Annotated[int, Meta(ge=1, le=MAX_TRIALS), option(
        "Trials drawn at random (by --sweep-seed) from the grid of the space.", "every point of the grid")] | None = None
    steps: Annotated[Steps, option(
        "Steps of a trial that reaches the last rung: the winner's training budget.")] = SMALL_DATA_STEPS
    min_steps: Annotated[Steps, option(
        "Steps of the first rung, which every trial trains (at least: the rungs are steps / eta^k).",
        "steps / eta^2: three rungs")] | None = None
    eta: Annotated[int, Meta(ge=2, le=16), option(
        "At the end of each rung the best 1/ETA of its trials (at least one) go on to ETA times the steps.")] = 3
    select: Annotated[SweepMetric, option(
        "What trials are ranked by: a validation metric (the best point of each one's curve: fid, kid, precision, "
        "recall or label_accuracy), or utility: the GAN share of a small augmentation study of each trial's best "
        "checkpoint on its validation split (real, + mixup, + GAN; `augment evaluate utility --arms gan-vs-mixup`).")] = DEFAULT_SELECT
    utility_seeds: Annotated[int, Meta(ge=1, le=20), option(
        "select utility: classifier trainings per arm of each trial's study.")] = 3
    utility_steps: Annotated[Steps, option("select utility: steps of each of those classifiers.")] = 500
    sweep_seed: Annotated[Seed, option("Seed of the random draw of --trials.")] = 0
    # a wall-clock bound (`augment sweep --budget 60m`): once this long has passed since the sweep was submitted, its
    # scheduler submits nothing more, cancels what is still running and ranks what has ended. None: no bound
    time_limit_s: Annotated[float, Meta(gt=0, le=30 * 24 * 3600)] | None = None
    # the scheduler is a message that comes back, not a process that waits: between looks it holds no worker
    poll_s: Annotated[float, Meta(ge=0.05, le=3600.0), option(
        "Seconds between the scheduler's looks at its trials (a rung's decision waits for the next look).")] = 10.0
    version: int = 1

    def _check_fields_together(self) -> None:
        if len(self.job_id) > 64 - _TRIAL_SUFFIX:
            raise self._fail("job_id", f"{self.job_id!r} is too long for its trials' ids; use at most {64 - _TRIAL_SUFFIX} characters")
        if self.min_steps is not None and self.min_steps > self.steps:
            raise self._fail("min_steps", f"{self.min_steps} is more than steps={self.steps}; give at most that")
        fixed = sorted(FIXED_FIELDS & set(self.space))
        if fixed:
            raise self._fail("space", f"{', '.join(fixed)} cannot be searched (a sweep sets it, or it changes the images "
                             "trials are compared on); give it as a base setting")
        unknown = sorted(set(self.space) - set(TrainSpec.__struct_fields__))
        if unknown:
            raise self._fail("space", f"{', '.join(unknown)}: not a training setting; `augment train --help` lists them")
        empty = sorted(name for name, values in self.space.items() if not values)
        if empty:
            raise self._fail("space", f"{', '.join(empty)} has no values to try")
        if self.trials is None and self.grid_size > MAX_TRIALS:
            raise self._fail("space", f"its grid has {self.grid_size:,} points, more than {MAX_TRIALS:,} trials; give "
                             "trials (--trials N) to draw some of them")
        overridden = sorted(SET_BY_SWEEP & set(self.base))
        if overridden:
            raise self._fail("base", f"{', '.join(overridden)} is the sweep's to set; leave it out")
        for trial in range(len(self.settings)):  # every trial is a valid training spec, or nothing is enqueued
            train = self.trial_spec(trial, 0)
            if train.validation == 0:
                raise self._fail("base", "validation=0 leaves trials no validation curve to be ranked by; give a share "
                                 "above 0 (the default is 0.1)")
            if self.select == UTILITY and train.teacher == 0:
                raise self._fail("select", f"utility needs a teacher to label mixup and GAN samples, and trial {trial} "
                                 "trains none (teacher=0); give a teacher, or rank by a validation metric")

    @property
    def search_space(self) -> dict[str, list[Any]]:
        return self.space or DEFAULT_SPACE

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.search_space.values())

    @property
    def settings(self) -> list[dict[str, Any]]:
        """Each trial's settings: the grid of the space in order, or TRIALS points of it drawn by SWEEP_SEED."""
        return _draw(json.dumps(self.search_space, sort_keys=True), self.trials, self.sweep_seed)

    @property
    def rungs(self) -> list[int]:
        """The steps a trial has trained at the end of each rung: MIN_STEPS, times ETA each rung, up to STEPS."""
        lowest = self.min_steps or max(1, self.steps // self.eta ** 2)
        count = 1
        while self.steps // self.eta ** count >= lowest:
            count += 1
        return [self.steps // self.eta ** (count - 1 - rung) for rung in range(count)]

    def trial_job_id(self, trial: int, rung: int) -> str:
        return f"{self.job_id}-t{trial:03d}-r{rung}"

    def score_job_id(self, trial: int, rung: int) -> str:
        """The utility evaluation of TRIAL's job at RUNG (select utility): as long as the trial's id."""
        return f"{self.job_id}-u{trial:03d}-r{rung}"

    def trial_job_ids(self) -> list[str]:
        """Every job the sweep may submit, trial by trial, rung by rung: its training job (and its utility
        evaluation, where trials are ranked by utility)."""
        scored = self.select == UTILITY
        return [job_id for trial in range(len(self.settings)) for rung in range(len(self.rungs))
                for job_id in (self.trial_job_id(trial, rung), *([self.score_job_id(trial, rung)] if scored else []))]

    @property
    def curve_metric(self) -> QualityMetric:
        """The validation metric of the trials' curves: what their best checkpoints are kept by (and shown)."""
        return DEFAULT_SELECT if self.select == UTILITY else cast(QualityMetric, self.select)

    def score_spec(self, trial: int, rung: int) -> EvaluateSpec:
        """The utility evaluation that ranks TRIAL at RUNG: its job's best checkpoint, scored by the GAN share of a
        small augmentation study on the job's validation split."""
        train = self.trial_spec(trial, rung)
        return EvaluateSpec(job_id=self.score_job_id(trial, rung), mode="utility", model=train.job_id, holdout="validation",
                            arms="gan-vs-mixup", seeds=self.utility_seeds, classifier_steps=self.utility_steps,
                            reference_steps=train.reference_steps or min(REFERENCE_STEPS, self.rungs[rung]), seed=train.seed)

    def trial_spec(self, trial: int, rung: int) -> TrainSpec:
        """The training job of TRIAL at RUNG: the base with the trial's settings, continuing its job of the rung
        before. The settings a step count would choose (how often to measure, the teacher's and the reference
        classifier's steps) are fixed from the sweep's steps, so that every rung continues the same run."""
        base = self.base
        fields: dict[str, Any] = {
            "validate_every": max(1, self.rungs[0] // MEASUREMENTS_PER_RUNG),
            "teacher_steps": min(TEACHER_STEPS, self.steps),
            "reference_steps": min(REFERENCE_STEPS, self.steps),
            **base, **self.settings[trial],
            "job_id": self.trial_job_id(trial, rung), "steps": self.rungs[rung], "select": self.curve_metric,
        }
        if rung > 0:
            fields["continues"] = self.trial_job_id(trial, rung - 1)
        elif trial > 0 and self.shares_teacher:
            fields["teacher_from"] = self.trial_job_id(0, 0)
        try:
            return TrainSpec.from_dict(fields)
        except SpecError as exc:
            where = f"trial {trial} ({describe(self.settings[trial])})"
            raise SpecError("sweep", f"{where}: {exc.field}", str(exc).split(": ", 2)[-1]) from None

    @property
    def shares_teacher(self) -> bool:
        """Whether every trial's teacher is the same one (no teacher setting is searched, and the data is fixed), so
        that the first trial trains it and the others take it (``TrainSpec.teacher_from``): at the default space
        that is one teacher instead of 24, each as long as a first rung's GAN."""
        return not set(self.search_space) & TEACHER_FIELDS and self.base.get("teacher") != 0

    @property
    def dataset(self) -> str:
        return str(self.base.get("dataset", ""))

    def planned_jobs(self) -> int:
        """Jobs the sweep submits when every trial succeeds: a training job per trial and rung (and its utility
        evaluation, where trials are ranked by utility)."""
        return sum(self.planned_trials()) * (2 if self.select == UTILITY else 1)

    def planned_trials(self) -> list[int]:
        """How many trials train at each rung when every one succeeds."""
        alive = [len(self.settings)]
        while len(alive) < len(self.rungs):
            alive.append(promoted_count(alive[-1], self.eta))
        return alive

    def planned_steps(self) -> int:
        """GAN steps the sweep trains in all when every trial succeeds (a continuation trains only its increment):
        what a full grid's ``len(settings) * steps`` is compared with."""
        starts = [0, *self.rungs[:-1]]
        return sum(trials * (end - start) for trials, start, end in zip(self.planned_trials(), starts, self.rungs, strict=True))


@functools.lru_cache(maxsize=64)
def _draw(space_json: str, trials: int | None, seed: int) -> list[dict[str, Any]]:
    """The points of the grid of SPACE_JSON (field -> values, JSON with sorted keys), in grid order: all of them, or
    TRIALS drawn by SEED. A point is decoded from its index, so a draw from a huge grid never builds the grid. Cached:
    the scheduler asks for a trial's settings many times per look, and callers only read what it returns."""
    space: dict[str, list[Any]] = json.loads(space_json)
    size = math.prod(len(values) for values in space.values())
    chosen = range(size) if trials is None or trials >= size else sorted(random.Random(seed).sample(range(size), trials))
    points = []
    for index in chosen:
        point: dict[str, Any] = {}
        for name in reversed(list(space)):  # the last field varies fastest, as itertools.product's does
            index, digit = divmod(index, len(space[name]))
            point[name] = space[name][digit]
        points.append(dict(sorted(point.items())))
    return points


def steps_within(budget: int, fields: Mapping[str, Any]) -> int:
    """The most steps a sweep of FIELDS (a SweepSpec's, without steps) may give its winner for its plan to train at
    most BUDGET GAN steps in all (:meth:`SweepSpec.planned_steps`, which grows with the steps); SpecError when even
    the least does not fit."""
    def planned(steps: int) -> int:
        return SweepSpec.from_dict({**fields, "steps": steps}).planned_steps()

    low, high = int(fields.get("min_steps") or 1), budget
    if planned(low) > budget:
        raise SpecError("sweep", "budget", f"{budget:,} GAN steps is less than the smallest plan ({planned(low):,} at "
                        f"{low} steps); give a larger budget or fewer trials")
    while low < high:  # the last steps whose plan fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if planned(middle) <= budget else (low, middle - 1)
    return low


def promoted_count(trials: int, eta: int) -> int:
    """How many of a rung's TRIALS go on: the best 1/ETA, at least one."""
    return max(1, trials // eta)


@dataclass(frozen=True)
class Standing:
    """A trial at the end of a rung: the best figure on its validation curve so far (None: its job failed or was
    cancelled, which ranks it last) and the step it was measured at."""

    trial: int
    value: float | None
    step: int | None = None


def ranked(standings: Sequence[Standing], metric: str) -> list[Standing]:
    """STANDINGS best first by METRIC; a trial without a figure last; ties by trial number, so that the order is a
    function of the figures alone."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return sorted(standings, key=lambda s: (s.value is None, sign * s.value if s.value is not None else 0.0, s.trial))


def promote(standings: Sequence[Standing], metric: str, eta: int) -> list[int]:
    """The trials that go on to the next rung: the best 1/ETA of a rung's, never one without a figure."""
    best = ranked(standings, metric)[: promoted_count(len(standings), eta)]
    return sorted(standing.trial for standing in best if standing.value is not None)


def describe(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in settings.items())


def parse_values(text: str) -> list[Any]:
    """The values of ``--param FIELD=VALUES``: a JSON list, or comma-separated values, each a JSON number or
    boolean where it reads as one, else a string (so ``width=32,64`` and ``diffaugment=["translation,cutout",
    "translation"]``)."""
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError("sweep", "space", f"{text!r} is not a JSON list ({exc.msg})") from None
        if not isinstance(values, list):
            raise SpecError("sweep", "space", f"{text!r} is not a list")
        return values
    return [_scalar(part.strip()) for part in text.split(",") if part.strip()]


def _scalar(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


def parse_space(params: Sequence[str], space_file: str | None = None) -> dict[str, list[Any]]:
    """The space of ``--param FIELD=V1,V2`` options, added to a ``--space`` file's (a JSON object of field -> list)."""
    space: dict[str, list[Any]] = {}
    if space_file is not None:
        try:
            with open(space_file, encoding="utf-8") as file:
                loaded = json.load(file)
        except OSError as exc:
            raise SpecError("sweep", "space", f"cannot read {space_file}: {exc.strerror}; give a JSON file") from None
        except json.JSONDecodeError as exc:
            raise SpecError("sweep", "space", f"{space_file} is not JSON ({exc.msg} at line {exc.lineno}); write an "
                            'object of field -> list of values, e.g. {"width": [32, 64]}') from None
        try:
            space.update(msgspec.convert(loaded, dict[str, list[Any]]))
        except msgspec.ValidationError:
            raise SpecError("sweep", "space", f"{space_file} is not an object of field -> list of values, e.g. "
                            '{"width": [32, 64]}') from None
    for param in params:
        name, sep, values = param.partition("=")
        if not sep or not name.strip():
            raise SpecError("sweep", "space", f"{param!r} is not FIELD=V1,V2,...; use e.g. width=32,64")
        space[name.strip().replace("-", "_")] = parse_values(values)
    return space
