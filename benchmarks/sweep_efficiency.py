"""Does successive halving find what a full grid finds, for less? The same space run both ways on this machine.

The grid trains every point of the space to ``--steps`` (the reference); the sweep runs the same points through
``worker.sweep.advance`` (the scheduler `augment sweep` runs), rung by rung, its trials continuing their earlier
rungs' jobs. Both train through ``run_training`` in this one process, one job at a time, so their seconds compare;
both share one teacher among their jobs, as a sweep does (a grid that retrained it per point would only look worse).
Every figure is the validation split's (the job's own, carved from its training images); the test split is not
touched: this is about choosing, not about final figures.

Then the grid's winner is trained again on ``--noise-seeds`` other seeds (which also draw other subsets and
validation splits): the spread of its figure says how far apart two settings must be to be told apart at all. The
sweep "finds the winner" when its winner is the grid's, or when the grid's figure for the sweep's winner is within
one standard deviation of that spread of the grid winner's.

Each arm trains one teacher, whatever its scheduler does; the script times it apart (from the job's teacher-stage
reports) and prints the arms' seconds with and without it. The last line is ``ratio=<grid seconds / sweep seconds>``
over the trials' own seconds, the teacher left out: that is the compute the scheduler decides.

    python benchmarks/sweep_efficiency.py [--dataset fashion-mnist] [--per-class 100] [--steps 1500] [--width 32]
        [--eta 3] [--param FIELD=V1,V2 ...] [--noise-seeds 1,2] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

from producer.client import Client
from shared.contracts import SweepReport, decode_json
from shared.layout import report_json_key
from shared.liveness import Attempt
from shared.progress import StageProgress, SweepProgress
from shared.records import make_record
from shared.settings import Settings
from shared.specs import LOWER_IS_BETTER, EvaluateSpec, TrainSpec
from shared.storage import FileStorage
from shared.sweeps import SweepSpec, describe, parse_space
from worker.sweep import advance
from worker.train import TrainHooks, run_training

# mode seeking and guidance pull recall and label accuracy against each other (docs/training.md): a 3 x 3 grid
DEFAULT_PARAMS = ("mode_seeking=0,0.3,1", "guidance=0,0.3,1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--select", default="fid")
    parser.add_argument("--param", action="append", default=None, metavar="FIELD=V1,V2")
    parser.add_argument("--noise-seeds", default="1,2", help="other seeds the grid's winner trains on")
    parser.add_argument("--out", default=None, help="storage directory, kept (default: a temporary one)")
    args = parser.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="sweep-efficiency-")
    storage, settings = FileStorage(root), Settings.from_env()
    states = Client.connect(Settings.from_env({"AUGMENT_BROKER_URL": "memory://", "AUGMENT_STORAGE_URL": f"file://{root}"})).states
    tag = uuid.uuid4().hex[:6]
    base = {"dataset": args.dataset, "per_class": args.per_class, "width": args.width}
    sweep = SweepSpec.from_dict({"job_id": f"s-{tag}", "base": base, "space": parse_space(args.param or DEFAULT_PARAMS),
                                 "steps": args.steps, "eta": args.eta, "select": args.select})
    print(f"{len(sweep.settings)} points; rungs {sweep.rungs}; select {sweep.select}; storage {root}", flush=True)

    # the dataset's reference classifier (the curves' feature space) is trained once and stored: before the clock
    # starts, so that neither arm pays for it
    warm = sweep.trial_spec(0, 0).to_dict()
    run_training(TrainSpec.from_dict({**warm, "job_id": f"w-{tag}", "steps": 1, "teacher": 0, "guidance": 0}), settings, storage)

    # the reference: every point to the full steps, each from scratch (no continuation); one teacher for all
    grid: dict[int, float] = {}
    grid_s, grid_teacher = 0.0, TeacherClock()
    for trial in range(len(sweep.settings)):
        started = time.perf_counter()
        result = run_training(from_scratch(sweep, trial, f"g-{tag}-{trial:03d}", teacher_from=f"g-{tag}-000" if trial else None),
                              settings, storage, TrainHooks(stage=grid_teacher))
        grid_s += time.perf_counter() - started
        assert result.best is not None
        grid[trial] = float(result.best[sweep.select])
        print(f"grid  trial {trial} ({describe(sweep.settings[trial])}): {sweep.select} {grid[trial]:.2f} "
              f"at step {result.best['step']}  [{time.perf_counter() - started:.0f} s]", flush=True)

    # ours: the scheduler, its trial jobs trained here as they are submitted
    sweep_s, sweep_teacher = [0.0], TeacherClock()

    def train_trial(train: TrainSpec | EvaluateSpec) -> None:
        assert isinstance(train, TrainSpec), "a utility score's job: this script ranks by a validation metric"
        started = time.perf_counter()
        result = run_training(train, settings, storage, TrainHooks(stage=sweep_teacher))
        sweep_s[0] += time.perf_counter() - started
        states.succeeded(train.job_id, result)
        print(f"sweep {train.job_id} ({train.steps} steps): best {sweep.select} {result.best and result.best[sweep.select]:.2f}"
              f"  [{time.perf_counter() - started:.0f} s]", flush=True)

    states.store.add(make_record(sweep.job_id, "sweep", sweep.to_dict()))
    while isinstance(advance(sweep, states, storage, train_trial, Attempt(), time.time()), SweepProgress):
        pass
    report = decode_json(SweepReport, storage.get_text(report_json_key(sweep.job_id)), "report.json")

    # the noise: the grid's winner on other seeds (other subsets and validation splits too)
    sign = 1.0 if sweep.select in LOWER_IS_BETTER else -1.0
    grid_winner = min(grid, key=lambda trial: (sign * grid[trial], trial))
    figures = [grid[grid_winner]]
    for seed in [int(part) for part in args.noise_seeds.split(",") if part]:
        result = run_training(from_scratch(sweep, grid_winner, f"n-{tag}-{seed}", seed=seed), settings, storage)
        figures.append(float(result.best[sweep.select]) if result.best else float("nan"))
        print(f"noise seed {seed}: {sweep.select} {figures[-1]:.2f}", flush=True)
    spread = statistics.stdev(figures) if len(figures) > 1 else 0.0

    print()
    print(table(sweep, grid, report))
    found = report.winner == grid_winner
    gap = sign * (grid[report.winner] - grid[grid_winner])
    verdict = "the same point" if found else (
        f"within the noise ({gap:.2f} worse, seed std {spread:.2f})" if gap <= spread else
        f"NOT within the noise ({gap:.2f} worse, seed std {spread:.2f})")
    print(f"\ngrid winner: trial {grid_winner} ({describe(sweep.settings[grid_winner])}) {sweep.select} "
          f"{grid[grid_winner]:.2f}; seed spread over {len(figures)} seeds: {statistics.mean(figures):.2f} +- {spread:.2f}")
    print(f"sweep winner: trial {report.winner} ({describe(sweep.settings[report.winner])}): {verdict}")
    grid_trials_s, sweep_trials_s = grid_s - grid_teacher.seconds, sweep_s[0] - sweep_teacher.seconds
    print(f"GAN steps: grid {len(grid) * sweep.steps:,}, sweep {report.compute_steps:,} "
          f"(x{len(grid) * sweep.steps / report.compute_steps:.2f})")
    print(f"seconds with the teacher: grid {grid_s:.0f}, sweep {sweep_s[0]:.0f} (x{grid_s / max(sweep_s[0], 1e-9):.2f}); "
          f"the teacher: grid {grid_teacher.seconds:.0f}, sweep {sweep_teacher.seconds:.0f}")
    print(f"the trials' seconds: grid {grid_trials_s:.0f}, sweep {sweep_trials_s:.0f}")
    print(f"ratio={grid_trials_s / max(sweep_trials_s, 1e-9):.3f}")


@dataclass
class TeacherClock:
    """The seconds an arm's jobs spent training teachers, from their teacher stage's reports (a stage meter reports
    its first step and its last, done == total)."""

    seconds: float = 0.0
    began: float | None = None

    def __call__(self, info: StageProgress) -> None:
        if not info.stage.startswith("training the teacher"):
            return
        now = time.perf_counter()
        if self.began is None:
            self.began = now
        if info.done is not None and info.done >= (info.total or 0):
            self.seconds += now - self.began
            self.began = None


def from_scratch(sweep: SweepSpec, trial: int, job_id: str, **changes: Any) -> TrainSpec:
    """TRIAL of SWEEP trained to the sweep's full steps in one job (no continuation, its own teacher unless CHANGES
    say otherwise)."""
    fields = sweep.trial_spec(trial, len(sweep.rungs) - 1).to_dict()
    return TrainSpec.from_dict({**fields, "job_id": job_id, "continues": None, "teacher_from": None, **changes})


def table(sweep: SweepSpec, grid: dict[int, float], report: SweepReport) -> str:
    reached = {outcome.trial: outcome for outcome in report.trials}
    lines = [f"| trial | settings | grid {sweep.select} at {sweep.steps} steps | sweep: steps reached | sweep {sweep.select} |",
             "|---|---|---|---|---|"]
    for trial in sorted(grid):
        outcome: Any = reached[trial]
        shown = f"{outcome.best:.2f}" if outcome.best is not None else "-"
        lines.append(f"| {trial} | {describe(sweep.settings[trial])} | {grid[trial]:.2f} | {outcome.steps:,} | {shown} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
