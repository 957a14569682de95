"""A sweep's scheduler as a plain function: :func:`advance` takes one look at the sweep's trials, submits the
training jobs its successive halving calls for, and ends the sweep with its report once the last rung has ended.

It keeps no state of its own between looks. What a sweep has done is its trials' jobs, whose ids the spec derives
(:mod:`shared.sweeps`) and whose states the lifecycle owns; each look reads them and decides again, and the
decisions are functions of the trials' results alone. So a look that a worker's death cut short is simply taken again
by the next worker, and the trials it had submitted are found, not submitted twice (``JobStore.add(once=True)``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from shared.contracts import SweepReport, SweepResult, TrialOutcome
from shared.lifecycle import CANCELLED, SUCCESS, TERMINAL_STATES, JobStates
from shared.liveness import Attempt
from shared.models import read_card
from shared.progress import QualityPoint, SweepProgress
from shared.records import make_record
from shared.specs import LOWER_IS_BETTER, UTILITY, EvaluateSpec, TrainSpec
from shared.storage import Storage
from shared.sweeps import Standing, SweepSpec, describe, promote, ranked
from worker import charts
from worker.report import write_report

Send = Callable[[TrainSpec | EvaluateSpec], None]  # enqueues a job the sweep has recorded


class SweepFailed(RuntimeError):
    """No trial of a rung succeeded: nothing to promote, no winner."""


@dataclass(frozen=True)
class TrialJob:
    """A trial's training job at one rung, as the scheduler found it."""

    trial: int
    rung: int
    job_id: str
    state: str
    info: Any  # its result (a dict) once it succeeded, its error once it failed
    score: TrialJob | None = None  # select utility: the job's utility evaluation, once the job has succeeded
    recorded: bool = True  # False: not submitted (it waits for the first trial's teacher, or time ran out)

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def past_teacher(self) -> bool:
        """Whether the job has its teacher (it reports the GAN's own steps now, or has ended)."""
        return self.ended or isinstance(self.info, dict) and self.info.get("kind") == "train"

    def ranked_by(self, metric: str) -> bool:
        """Whether the job has all that ranks it by METRIC: it has ended, and where METRIC is utility, so has the
        evaluation of its best checkpoint (a job that failed has none to evaluate)."""
        if metric != UTILITY or self.state != SUCCESS:
            return self.ended
        return self.score is not None and self.score.ended

    def standing(self, metric: str) -> Standing:
        best = self.info.get("best") if self.state == SUCCESS and isinstance(self.info, dict) else None
        if best is None:
            return Standing(self.trial, None)
        if metric != UTILITY:
            return Standing(self.trial, QualityPoint.from_dict(best).value(metric), int(best["step"]))
        if self.score is None or self.score.state != SUCCESS:
            return Standing(self.trial, None)
        return Standing(self.trial, float(self.score.info["gan_share"]), int(best["step"]))


def advance(spec: SweepSpec, states: JobStates, storage: Storage, send: Send, attempt: Attempt,
            submitted_at: float) -> SweepResult | SweepProgress:
    """One look at sweep SPEC: submit (SEND) what its decisions call for; its progress while trials are still to end,
    its result (the report written under ATTEMPT) once the last rung has ended."""
    alive = list(range(len(spec.settings)))
    found: list[TrialJob] = []
    out_of_time = spec.time_limit_s is not None and time.time() - submitted_at >= spec.time_limit_s
    for rung in range(len(spec.rungs)):
        jobs: list[TrialJob] = []
        for trial in alive:
            # a trial that takes the first trial's teacher waits until it is trained (the first is in its GAN loop)
            ready = rung > 0 or trial == alive[0] or not spec.shares_teacher or jobs[0].past_teacher
            jobs.append(_find_or_submit(spec, spec.trial_job_id(trial, rung), functools.partial(spec.trial_spec, trial, rung),
                                        trial, rung, states, send, ready and not out_of_time))
        if spec.select == UTILITY:  # a job is scored as soon as it has succeeded, while the rest of its rung trains
            jobs = [replace(job, score=_find_or_submit(spec, spec.score_job_id(job.trial, rung),
                                                       functools.partial(spec.score_spec, job.trial, rung), job.trial, rung,
                                                       states, send, not out_of_time))
                    if job.state == SUCCESS else job for job in jobs]
        found += jobs
        if not all(job.ranked_by(spec.select) for job in jobs):
            if out_of_time:
                return _stop(spec, rung, found, states, storage, attempt, submitted_at)
            return _progress(spec, rung, found)
        standings = [job.standing(spec.select) for job in jobs]
        if all(standing.value is None for standing in standings):
            failed = jobs[0]
            raise SweepFailed(f"no trial of rung {rung + 1} succeeded; job {failed.job_id} ended {failed.state}: "
                              f"{failed.info}")
        if rung + 1 < len(spec.rungs):
            alive = promote(standings, spec.select, spec.eta)
    return _finish(spec, found, storage, attempt, submitted_at)


def _find_or_submit(spec: SweepSpec, job_id: str, build: Callable[[], TrainSpec | EvaluateSpec], trial: int, rung: int,
                    states: JobStates, send: Send, submit: bool = True) -> TrialJob:
    """JOB_ID, TRIAL's job at RUNG (its training, or that training's utility evaluation), as it stands; submitted
    first (as BUILD makes it: only then, not at every look) if it is not yet and SUBMIT says it may be."""
    recorded = states.store.get(job_id) is not None
    if submit and not recorded:
        job = build()
        if states.store.add(make_record(job_id, job.kind, job.to_dict()), once=True):
            send(job)
        recorded = True
        if states.store.cancel_requested(spec.job_id):  # cancel_sweep may have listed the trials before this one
            states.cancel(job_id, f"its sweep {spec.job_id} was cancelled")
    state, info = states.read(job_id)
    return TrialJob(trial, rung, job_id, state, info, recorded=recorded)


def _stop(spec: SweepSpec, rung: int, found: list[TrialJob], states: JobStates, storage: Storage, attempt: Attempt,
          submitted_at: float) -> SweepResult:
    """End a sweep whose time limit has passed during RUNG: cancel its jobs still running and rank what has ended
    (trials that finished more rungs first, as successive halving ranks them)."""
    reason = f"its time limit ({spec.time_limit_s:g} s) passed during rung {rung + 1} of {len(spec.rungs)}"

    def stopped(job: TrialJob) -> TrialJob:
        if not job.recorded:  # never submitted: it is not one of the sweep's jobs
            return job
        if not job.ended:  # a running job is asked to stop; the sweep's record of it ends here
            states.cancel(job.job_id, f"its sweep {spec.job_id} stopped: {reason}")
            return replace(job, state=CANCELLED, info=reason)
        return replace(job, score=stopped(job.score)) if job.score is not None else job

    ended = [stopped(job) for job in found if job.recorded]
    if all(job.standing(spec.select).value is None for job in ended):
        raise SweepFailed(f"{reason}, before any trial had a figure to rank it by; give it more time")
    return _finish(spec, ended, storage, attempt, submitted_at, stopped=reason)


def _progress(spec: SweepSpec, rung: int, found: list[TrialJob]) -> SweepProgress:
    leader = ""
    finished = [job for job in found if job.rung == rung - 1]
    if finished:
        best = ranked([job.standing(spec.select) for job in finished], spec.select)[0]
        if best.value is not None:
            leader = f"trial {best.trial} ({describe(spec.settings[best.trial])}) {spec.select} {best.value:.4g}"
    return SweepProgress(rung=rung, rungs=len(spec.rungs), rung_steps=spec.rungs[rung],
                         done=sum(job.ended + (job.score is not None and job.score.ended) for job in found),
                         total=spec.planned_jobs(), leader=leader)


def _finish(spec: SweepSpec, found: list[TrialJob], storage: Storage, attempt: Attempt, submitted_at: float,
            stopped: str | None = None) -> SweepResult:
    """The leaderboard, the curves and the winner, written as the sweep's report."""
    outcomes = [_outcome(spec, [job for job in found if job.trial == trial], storage)
                for trial in sorted({job.trial for job in found})]
    # a figure first (a trial whose last study failed, or was cut by the time limit, has none), then the furthest
    # rung (by rung, not steps: --patience may end a job early), then the figure: the order successive halving ranked in
    sign = 1.0 if spec.select in LOWER_IS_BETTER else -1.0

    def rungs_passed(outcome: TrialOutcome) -> int:
        return len(outcome.jobs) - (outcome.state != SUCCESS)

    outcomes.sort(key=lambda o: (o.best is None, -rungs_passed(o), sign * o.best if o.best is not None else 0.0, o.trial))
    winner = outcomes[0]
    last = len(spec.rungs) - 1
    winner_spec = {name: value for name, value in spec.trial_spec(winner.trial, last).to_dict().items()
                   if name not in ("job_id", "continues", "version")}
    compute = sum(spec.rungs[job.rung] - (spec.rungs[job.rung - 1] if job.rung else 0) for job in found)
    report = SweepReport(
        spec=spec.to_dict(), dataset=spec.dataset, select=spec.select, rungs=spec.rungs, eta=spec.eta, trials=outcomes,
        winner=winner.trial, winner_model=winner.jobs[rungs_passed(winner) - 1], winner_spec=winner_spec, compute_steps=compute,
        grid_steps=len(spec.settings) * spec.steps, seconds=time.time() - submitted_at,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), stopped=stopped,
    )

    def result_of(url: str, files: list[str]) -> SweepResult:
        assert winner.best is not None and winner.best_step is not None  # a rung without one failed the sweep
        return SweepResult(report=url, files=files, winner=report.winner_model, trial=winner.trial,
                           settings=winner.settings, select=spec.select, value=winner.best, step=winner.best_step,
                           compute_steps=compute, grid_steps=report.grid_steps)

    return write_report(storage, spec.job_id, render_markdown(report), report, {"curves.png": curves_png(report)},
                        attempt, result_of)


def _outcome(spec: SweepSpec, jobs: list[TrialJob], storage: Storage) -> TrialOutcome:
    last = jobs[-1]
    reached = [job for job in jobs if job.state == SUCCESS]
    card = read_card(storage, reached[-1].job_id) if reached else None  # its steps: fewer where --patience stopped it
    standing = reached[-1].standing(spec.select) if reached else Standing(last.trial, None)
    return TrialOutcome(
        trial=last.trial, settings=spec.settings[last.trial], jobs=[job.job_id for job in jobs], state=last.state,
        steps=card.steps if card else 0, best=standing.value, best_step=standing.step, curve=card.curve if card else [],
        error=None if last.state == SUCCESS else str(last.info),
    )


def render_markdown(report: SweepReport) -> str:
    """The report a person reads (``augment report SWEEP``): the leaderboard and the winner."""
    names = sorted(report.trials[0].settings) if report.trials else []
    winner = next(outcome for outcome in report.trials if outcome.trial == report.winner)
    better = "lower" if report.select in LOWER_IS_BETTER else "higher"
    spec = SweepSpec.from_dict(report.spec)
    ranking = f"the best validation {report.select} of each trial's curve"
    if report.select == UTILITY:
        ranking = (f"utility: the GAN share (in balanced accuracy, fractions of 1) of a small augmentation study of each "
                   f"trial's best checkpoint by validation {spec.curve_metric}, on its validation split (real, + mixup, "
                   f"+ GAN with teacher labels; {spec.utility_seeds} seeds x {spec.utility_steps} classifier steps; the "
                   "trial's `-u` jobs hold each study's report)")
    lines = [
        f"# Sweep {report.spec['job_id']} on {report.dataset}",
        "",
        f"{len(report.trials)} trials, successive halving over rungs of {', '.join(f'{steps:,}' for steps in report.rungs)} "
        f"steps (the best 1/{report.eta} of each rung go on), ranked by {ranking} ({better} is better). "
        f"{report.compute_steps:,} GAN steps in all, against "
        f"{report.grid_steps:,} for every trial trained to {report.rungs[-1]:,} steps ({report.seconds / 60:.1f} min).",
        "",
        *([f"**Stopped early: {report.stopped}.** Running jobs were cancelled; trials rank by the rungs they finished, "
           f"then by {report.select}. A sweep cut by its time limit depends on how fast its jobs ran, not on its "
           "figures alone.", ""] if report.stopped else []),
        f"**Winner: trial {winner.trial}** ({describe(winner.settings)}): {report.select} {winner.best:.4g} at step "
        f"{winner.best_step:,}; model `{report.winner_model}` (`augment generate --model {report.winner_model}`).",
        "",
        "All trials share the base spec's seed, so these are differences of settings on one seed: a difference "
        "smaller than a seed's spread (docs/training.md measures it) is not a finding.",
        "",
        f"| rank | trial | {' | '.join(names)} | steps reached | best {report.select} | at step | jobs |",
        "|---|---|" + "---|" * len(names) + "---|---|---|---|",
    ]
    for rank, outcome in enumerate(report.trials, 1):
        figure = f"{outcome.best:.4g}" if outcome.best is not None else f"{outcome.state.lower()}"
        lines.append(f"| {rank} | {outcome.trial} | {' | '.join(str(outcome.settings[name]) for name in names)} | "
                     f"{outcome.steps:,} | {figure} | {outcome.best_step or '-'} | {', '.join(outcome.jobs)} |")
    lines += ["", f"![validation {spec.curve_metric} curves](curves.png)", "",
              "The winner's training spec (`augment train` fields):", "",
              "```", *(f"{name}: {value}" for name, value in sorted(report.winner_spec.items()) if value is not None), "```", ""]
    return "\n".join(lines)


def curves_png(report: SweepReport) -> bytes:
    """Every trial's validation curve (of the selected metric, or of what its checkpoints are kept by), the winner's
    bold, the rungs' ends marked."""
    metric = SweepSpec.from_dict(report.spec).curve_metric
    figure, axes = charts.subplots(1, 1, figsize=(8, 4.5))
    for outcome in reversed(report.trials):  # the winner drawn last, on top
        points = [QualityPoint.from_dict(point) for point in outcome.curve]
        won = outcome.trial == report.winner
        axes.plot([point.step for point in points], [point.value(metric) for point in points],
                  linewidth=2.5 if won else 1.0, alpha=1.0 if won else 0.6, marker="o" if won else None, markersize=3,
                  label=f"trial {outcome.trial}" + (" (winner)" if won else ""))
    for steps in report.rungs[:-1]:
        axes.axvline(steps, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("step")
    axes.set_ylabel(f"validation {metric}")
    if len(report.trials) <= 12:
        axes.legend(fontsize=7)
    return charts.png(figure)
