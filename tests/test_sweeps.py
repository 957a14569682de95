"""Sweeps without a broker: the plan (rungs, trials, budget), the checks at submit time, and the scheduler's
decisions (worker.sweep.advance), with real training jobs run in-process. tests/test_sweep_fleet.py runs sweeps
through real workers, Redis and S3."""

from __future__ import annotations

import json
import random
import re
import time
import uuid

import pytest

from producer.client import Client
from producer.dashboard.data import DashboardData
from shared.contracts import SweepReport, SweepResult, TrainResult, UtilityResult, decode_json
from shared.layout import report_json_key, report_markdown_key
from shared.lifecycle import cancel_sweep
from shared.liveness import Attempt
from shared.models import read_card
from shared.progress import StageProgress, SweepProgress, TrainProgress
from shared.records import make_record
from shared.settings import Settings
from shared.specs import EvaluateSpec, SpecError, TrainSpec
from shared.storage import FileStorage
from shared.sweeps import DEFAULT_SPACE, Standing, SweepSpec, parse_space, promote, ranked, steps_within
from worker.evaluate import run_utility
from worker.sweep import SweepFailed, advance
from worker.train import run_training

TINY = {"dataset": "fake", "width": 8, "batch_size": 16, "teacher": 0, "log_every": 5, "reference_steps": 20,
        "validate_every": 5}


def sweep_spec(**fields) -> SweepSpec:
    return SweepSpec.from_dict({"job_id": f"s-{uuid.uuid4().hex[:12]}", "base": TINY, "steps": 40, "min_steps": 10,
                                "eta": 2, "space": {"lr": [1e-4, 2e-4], "mode_seeking": [0.0, 1.0]}, **fields})


# ---- the plan ----


def test_the_default_plan_is_three_rungs_of_eta_times_the_steps_and_a_third_of_a_grid_at_most():
    spec = SweepSpec.from_dict({"job_id": "s-plan", "base": {"dataset": "fake"}})
    assert spec.search_space == DEFAULT_SPACE and len(spec.settings) == 24
    assert spec.rungs == [666, 2000, 6000] and spec.planned_trials() == [24, 8, 2]
    # 24 x 666 + 8 x 1334 + 2 x 4000 steps, against 24 x 6000 for the full grid
    assert spec.planned_steps() == 24 * 666 + 8 * 1334 + 2 * 4000
    assert spec.planned_steps() * 3 <= len(spec.settings) * spec.steps


@pytest.mark.parametrize(("steps", "min_steps", "eta", "rungs"), [
    (40, 10, 2, [10, 20, 40]),
    (40, None, 2, [10, 20, 40]),
    (100, 30, 3, [33, 100]),
    (5, 5, 3, [5]),
    (6000, 100, 3, [222, 666, 2000, 6000]),
])
def test_rungs_end_at_the_steps_and_grow_by_eta(steps, min_steps, eta, rungs):
    spec = SweepSpec.from_dict({"job_id": "s-rungs", "base": {"dataset": "fake"}, "steps": steps, "min_steps": min_steps,
                                "eta": eta})
    assert spec.rungs == rungs and spec.rungs[0] >= (min_steps or 1)


def test_random_trials_are_a_seeded_draw_from_the_grid():
    spec = {"job_id": "s-draw", "base": {"dataset": "fake"}, "trials": 5}
    first, again = (SweepSpec.from_dict({**spec, "sweep_seed": 7}).settings for _ in range(2))
    other = SweepSpec.from_dict({**spec, "sweep_seed": 8}).settings
    grid = SweepSpec.from_dict({"job_id": "s-draw", "base": {"dataset": "fake"}}).settings
    assert first == again and first != other and len(first) == 5
    assert all(setting in grid for setting in first) and len({json.dumps(s, sort_keys=True) for s in first}) == 5


def test_every_trial_continues_its_job_of_the_rung_before_with_the_settings_a_step_count_would_choose_fixed():
    spec = sweep_spec()
    first, second = spec.trial_spec(2, 0), spec.trial_spec(2, 1)
    assert (first.steps, second.steps, first.continues, second.continues) == (10, 20, None, spec.trial_job_id(2, 0))
    assert (first.lr, first.mode_seeking) == (spec.settings[2]["lr"], spec.settings[2]["mode_seeking"])
    assert first.validate_every == second.validate_every == 5 and first.teacher_steps == second.teacher_steps == 40
    assert len(spec.trial_job_ids()) == 4 * 3


def test_a_utility_sweep_keeps_its_trials_best_checkpoints_by_fid_and_scores_each_job_with_a_small_study_of_it():
    spec = sweep_spec(base={**TINY, "teacher": 1}, select="utility", utility_seeds=2, utility_steps=30)
    assert spec.curve_metric == "fid" and spec.trial_spec(1, 1).select == "fid"
    score = spec.score_spec(1, 1)
    assert (score.job_id, score.model, score.mode, score.holdout, score.arms) == (
        spec.score_job_id(1, 1), spec.trial_job_id(1, 1), "utility", "validation", "gan-vs-mixup")
    assert (score.seeds, score.classifier_steps, score.reference_steps) == (2, 30, 20)
    assert len(score.job_id) == len(spec.trial_job_id(1, 1))  # fits wherever a trial's id fits
    assert len(spec.trial_job_ids()) == 2 * 4 * 3 and spec.planned_jobs() == 2 * (4 + 2 + 1)


@pytest.mark.parametrize(("fields", "message"), [
    ({"space": {"seed": [0, 1]}}, "space: seed cannot be searched"),
    ({"space": {"validation": [0.1, 0.2]}}, "space: validation cannot be searched"),
    ({"space": {"widht": [8]}}, "space: widht: not a training setting"),
    ({"space": {"width": []}}, "space: width has no values to try"),
    ({"space": {"width": [8, 2]}}, "trial 1 (width=2): width: 2 is out of range; use 4 to 512"),
    ({"space": {"guidance": [0, 1]}}, "trial 1 (guidance=1): guidance: guidance needs a teacher"),
    ({"base": {**TINY, "steps": 5}}, "base: steps is the sweep's to set"),
    ({"base": {**TINY, "validation": 0}}, "base: validation=0 leaves trials no validation curve"),
    ({"min_steps": 50}, "min_steps: 50 is more than steps=40"),
    ({"eta": 1}, "eta: 1 is out of range; use 2 to 16"),
    ({"select": "utility"}, "select: utility needs a teacher to label mixup and GAN samples, and trial 0 trains none"),
    ({"select": "vibes"}, "select: 'vibes' is not allowed; use one of fid, kid, label_accuracy, precision, recall, utility"),
])
def test_a_sweep_that_cannot_run_is_refused_in_one_line_before_anything_is_enqueued(fields, message):
    with pytest.raises(SpecError, match="^" + re.escape(f"invalid sweep spec: {message}")) as refused:
        sweep_spec(**fields)
    assert "\n" not in str(refused.value)


def test_param_options_and_a_space_file_make_the_space(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"width": [32, 64], "ema": [0, 0.999]}))
    space = parse_space(["mode-seeking=0.3,1", 'diffaugment=["translation,cutout","translation"]', "loss=bce,hinge",
                         "spectral_norm=true,false", "ema=0"], str(path))
    assert space == {"width": [32, 64], "ema": [0], "mode_seeking": [0.3, 1], "loss": ["bce", "hinge"],
                     "diffaugment": ["translation,cutout", "translation"], "spectral_norm": [True, False]}
    for bad, message in [(["width"], "is not FIELD=V1,V2"), (["x=[1,"], "is not a JSON list")]:
        with pytest.raises(SpecError, match=message):
            parse_space(bad)
    path.write_text("{not json")
    with pytest.raises(SpecError, match="space.json is not JSON"):
        parse_space([], str(path))


# ---- the decisions ----


def test_promotion_is_the_best_one_in_eta_by_the_figures_alone_whatever_order_they_came_in():
    standings = [Standing(0, 80.0), Standing(1, 60.0), Standing(2, None), Standing(3, 60.0), Standing(4, 90.0),
                 Standing(5, 70.0)]
    for _ in range(5):
        shuffled = random.sample(standings, len(standings))
        assert promote(shuffled, "fid", 2) == [1, 3, 5]  # fid: lower is better; the tie 1/3 kept in trial order
        assert promote(shuffled, "recall", 3) == [0, 4]  # recall: higher is better
        assert ranked(shuffled, "fid")[-1].trial == 2, "a trial without a figure ranks last"
    assert promote([Standing(0, None), Standing(1, 5.0), Standing(2, None)], "fid", 2) == [1]


@pytest.fixture
def client(tmp_path) -> Client:
    return Client.connect(Settings.from_env({"AUGMENT_BROKER_URL": "memory://", "AUGMENT_STORAGE_URL": tmp_path.as_uri()}))


def finish(client: Client, job_id: str, fid: float | None) -> None:
    """End a trial's job as a worker would: with a result whose best point has FID (None: it failed)."""
    if fid is None:
        client.states.failed(job_id, RuntimeError("out of memory"))
        return
    best = {"step": 7, "fid": fid, "kid": 0.1, "precision": 0.5, "recall": 0.5, "label_accuracy": 0.9}
    client.states.succeeded(job_id, TrainResult(model=job_id, steps=10, model_card="", checkpoint="", grid="", loss_curve="",
                                                final={}, best=best))


def test_the_scheduler_submits_a_rung_waits_for_all_of_it_and_promotes_by_results_never_by_finishing_order(client, tmp_path):
    figures = {0: 50.0, 1: 30.0, 2: None, 3: 40.0}
    decisions = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
        spec = sweep_spec()
        sent: list[TrainSpec] = []

        def look(spec: SweepSpec = spec, sent: list[TrainSpec] = sent) -> SweepProgress:
            outcome = advance(spec, client.states, FileStorage(tmp_path), sent.append, Attempt(), 0.0)
            assert isinstance(outcome, SweepProgress)
            return outcome

        first = look()
        assert [train.job_id for train in sent] == [spec.trial_job_id(trial, 0) for trial in range(4)]
        assert (first.rung, first.done, first.total) == (0, 0, 4 + 2 + 1)
        for trial in order[:3]:
            finish(client, spec.trial_job_id(trial, 0), figures[trial])
            assert look().rung == 0 and len(sent) == 4, "nothing is promoted before the whole rung has ended"
        finish(client, spec.trial_job_id(order[3], 0), figures[order[3]])
        second = look()
        assert second.rung == 1 and second.done == 4 and "trial 1" in second.leader
        promoted = [train for train in sent[4:]]
        assert look().rung == 1 and len(sent) == 6, "a look that finds its jobs submitted submits none again"
        decisions.append([(train.job_id.rsplit("-", 2)[1:], train.continues is not None) for train in promoted])
    assert decisions[0] == decisions[1] == [(["t001", "r1"], True), (["t003", "r1"], True)]


def finish_study(client: Client, job_id: str, gan_share: float) -> None:
    client.states.succeeded(job_id, UtilityResult(report="", files=[], gan_share=gan_share, gan_over_real=0.0, best="x"))


def test_a_utility_sweep_scores_each_rung_once_its_jobs_have_ended_and_promotes_by_the_scores(client, tmp_path):
    spec = sweep_spec(base={**TINY, "teacher": 1}, select="utility")
    sent: list[TrainSpec | EvaluateSpec] = []

    def look() -> SweepProgress:
        outcome = advance(spec, client.states, FileStorage(tmp_path), sent.append, Attempt(), 0.0)
        assert isinstance(outcome, SweepProgress)
        return outcome

    look()
    finish(client, spec.trial_job_id(0, 0), 10.0)
    look()
    assert sent[-1].job_id == spec.score_job_id(0, 0), "a job is scored as soon as it has succeeded"
    for trial, fid in ((1, 20.0), (2, None), (3, 40.0)):  # by FID, trials 0 and 1 would go on
        finish(client, spec.trial_job_id(trial, 0), fid)
    assert look().done == 4 and len(sent) == 4 + 3, "each succeeded job's study, none for the failed one"
    assert [job.job_id for job in sent[4:]] == [spec.score_job_id(trial, 0) for trial in (0, 1, 3)]
    assert all(isinstance(job, EvaluateSpec) and job.model == spec.trial_job_id(trial, 0)
               for job, trial in zip(sent[4:], (0, 1, 3), strict=True))
    finish_study(client, spec.score_job_id(0, 0), -0.02)
    finish_study(client, spec.score_job_id(3, 0), 0.01)
    assert look().rung == 0 and len(sent) == 7, "the rung's decision waits for every study"
    finish_study(client, spec.score_job_id(1, 0), 0.03)
    progress = look()
    assert progress.rung == 1 and "trial 1" in progress.leader and "utility 0.03" in progress.leader
    assert [job.job_id for job in sent[7:]] == [spec.trial_job_id(1, 1), spec.trial_job_id(3, 1)]  # the best by utility
    client.store.add(make_record(spec.job_id, "sweep", spec.to_dict()))
    page = DashboardData(client, client.settings).job(spec.job_id)  # live: each trial's furthest study so far
    assert [row["best"] for row in page["trials"]] == [-0.02, 0.03, None, 0.01]
    assert (page["select"], page["curve_metric"]) == ("utility", "fid")


def test_a_sweep_past_its_time_limit_cancels_what_runs_and_ranks_what_has_ended(client, tmp_path):
    storage = FileStorage(tmp_path)
    spec = sweep_spec(time_limit_s=60.0)
    sent: list[TrainSpec | EvaluateSpec] = []

    def send(job: TrainSpec | EvaluateSpec) -> None:  # the first rung trains at once, in-process; the next waits
        sent.append(job)
        if isinstance(job, TrainSpec) and job.continues is None:
            client.states.succeeded(job.job_id, run_training(job, Settings(), storage))

    started = time.time()
    assert isinstance(advance(spec, client.states, storage, send, Attempt(), started), SweepProgress)
    promoted = [job.job_id for job in sent[4:]]
    assert len(promoted) == 2
    client.states.started(promoted[0])  # one promoted trial runs, the other waits in the queue
    result = advance(spec, client.states, storage, send, Attempt(), started - 61)  # a minute later
    assert isinstance(result, SweepResult) and len(sent) == 4 + 2, "nothing submitted past the limit"
    first_rung = {trial: read_card(storage, spec.trial_job_id(trial, 0)).best["fid"] for trial in range(4)}  # type: ignore[index]
    best = min(first_rung, key=first_rung.__getitem__)
    assert result.trial == best and result.winner == spec.trial_job_id(best, 0), "the best of what has ended"
    assert [client.state(job_id) for job_id in promoted] == ["STARTED", "CANCELLED"]
    assert client.store.cancel_requested(promoted[0]), "the running one is asked to stop"
    report = decode_json(SweepReport, storage.get_text(report_json_key(spec.job_id)), "report.json")
    assert report.stopped == "its time limit (60 s) passed during rung 2 of 3"
    assert [outcome.trial for outcome in report.trials] == sorted(first_rung, key=first_rung.__getitem__)
    assert sorted(outcome.state for outcome in report.trials) == ["CANCELLED", "CANCELLED", "SUCCESS", "SUCCESS"]
    assert "**Stopped early: its time limit (60 s) passed during rung 2 of 3.**" in storage.get_text(
        report_markdown_key(spec.job_id))

    late = sweep_spec(time_limit_s=1.0)
    with pytest.raises(SweepFailed, match="passed during rung 1 of 3, before any trial had a figure to rank it by; give "):
        advance(late, client.states, storage, sent.append, Attempt(), time.time() - 2)
    assert all(client.store.get(late.trial_job_id(trial, 0)) is None for trial in range(4)), "none submitted"


def test_a_rung_without_a_success_fails_the_sweep_naming_a_job(client, tmp_path):
    spec = sweep_spec()
    advance(spec, client.states, FileStorage(tmp_path), lambda train: None, Attempt(), 0.0)
    for trial in range(4):
        finish(client, spec.trial_job_id(trial, 0), None)
    with pytest.raises(SweepFailed, match=f"no trial of rung 1 succeeded; job {spec.trial_job_id(0, 0)} ended FAILURE"):
        advance(spec, client.states, FileStorage(tmp_path), lambda train: None, Attempt(), 0.0)


def test_cancelling_a_sweep_cancels_its_trials_and_one_submitted_after_it(client, tmp_path):
    spec = sweep_spec()
    client._enqueue("sweep", spec)
    storage = FileStorage(tmp_path)
    advance(spec, client.states, storage, lambda train: None, Attempt(), 0.0)
    client.states.started(spec.trial_job_id(0, 0))  # one trial running: it is asked to stop, and stops by itself
    assert client.cancel(spec.job_id) == "CANCELLED"
    assert [client.state(spec.trial_job_id(trial, 0)) for trial in range(4)] == ["STARTED"] + ["CANCELLED"] * 3
    assert client.store.cancel_requested(spec.trial_job_id(0, 0))
    # a scheduler that looked before the cancel and submits a trial after it: the trial finds the flag
    late = SweepSpec.from_dict({**spec.to_dict(), "space": {"lr": [1e-4, 2e-4, 3e-4], "mode_seeking": [0.0, 1.0]}})
    advance(late, client.states, storage, lambda train: None, Attempt(), 0.0)
    assert client.state(late.trial_job_id(5, 0)) == "CANCELLED"
    assert cancel_sweep(client.states, spec, "again") == "CANCELLED"


# ---- a whole sweep, in-process ----


def run_sweep(client: Client, spec: SweepSpec, storage: FileStorage) -> SweepReport:
    """Run SPEC to its end, each trial job trained (or studied) in-process, at once, as a worker would."""
    def send(job: TrainSpec | EvaluateSpec) -> None:
        run = run_training if isinstance(job, TrainSpec) else run_utility
        client.states.succeeded(job.job_id, run(job, Settings(), storage))  # type: ignore[arg-type]

    while True:
        outcome = advance(spec, client.states, storage, send, Attempt(), 0.0)
        if not isinstance(outcome, SweepProgress):
            break
    return decode_json(SweepReport, storage.get_text(report_json_key(spec.job_id)), "report.json")


def test_a_sweep_trains_its_trials_promotes_the_best_and_reports_the_winner_as_a_model(client, tmp_path):
    storage = FileStorage(tmp_path)
    spec = sweep_spec()
    report = run_sweep(client, spec, storage)

    assert [outcome.steps for outcome in report.trials] == [40, 20, 10, 10]
    winner = report.trials[0]
    assert report.winner == winner.trial and report.winner_model == spec.trial_job_id(winner.trial, 2)
    assert winner.jobs == [spec.trial_job_id(winner.trial, rung) for rung in range(3)]
    card = read_card(storage, report.winner_model)
    assert card.steps == 40 and card.curve == winner.curve and [p["step"] for p in card.curve] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert winner.best == min(point["fid"] for point in card.curve)
    # the promoted pair were the best two of the first rung, by their figures at 10 steps
    first_rung = {outcome.trial: min(p["fid"] for p in outcome.curve if p["step"] <= 10) for outcome in report.trials}
    assert sorted(outcome.trial for outcome in report.trials[:2]) == sorted(sorted(first_rung, key=first_rung.get)[:2])
    assert report.compute_steps == 4 * 10 + 2 * 10 + 1 * 20 == spec.planned_steps() and report.grid_steps == 4 * 40
    assert report.winner_spec["steps"] == 40 and "job_id" not in report.winner_spec
    TrainSpec.from_dict({"job_id": "t-again", **report.winner_spec})  # the winner's recipe, ready to train again
    markdown = storage.get_text(report_markdown_key(spec.job_id))
    assert f"**Winner: trial {winner.trial}**" in markdown and f"augment generate --model {report.winner_model}" in markdown
    assert storage.get_bytes(f"reports/{spec.job_id}/curves.png")[:4] == b"\x89PNG"


def test_a_utility_sweep_reports_each_trials_study_score_and_its_fid_curves(client, tmp_path):
    storage = FileStorage(tmp_path)
    spec = sweep_spec(base={**TINY, "teacher": 1, "teacher_steps": 5}, select="utility", utility_seeds=1, utility_steps=5,
                      space={"mode_seeking": [0.0, 1.0]})
    report = run_sweep(client, spec, storage)
    for outcome in report.trials:
        studied = [json.loads(storage.get_text(report_json_key(spec.score_job_id(outcome.trial, rung))))
                   for rung in range(len(outcome.jobs))]
        assert outcome.best == studied[-1]["gan_share"], "a trial stands by the study of its furthest job"
        assert [study["gan"] for study in studied] == outcome.jobs
    markdown = storage.get_text(report_markdown_key(spec.job_id))
    assert "ranked by utility: the GAN share" in markdown and "best utility" in markdown
    assert "![validation fid curves](curves.png)" in markdown


def test_trials_take_the_first_trials_teacher_once_it_is_trained(client, tmp_path):
    storage = FileStorage(tmp_path)
    spec = sweep_spec(base={**TINY, "teacher": 1, "teacher_steps": 5})
    sent: list[TrainSpec] = []
    advance(spec, client.states, storage, sent.append, Attempt(), 0.0)
    first = spec.trial_job_id(0, 0)
    assert [train.job_id for train in sent] == [first], "the others wait for the first trial's teacher"
    client.states.progress(first, StageProgress("training the teacher (1 classifiers)", 3, 5))
    advance(spec, client.states, storage, sent.append, Attempt(), 0.0)
    assert len(sent) == 1
    client.states.progress(first, TrainProgress(step=1, total_steps=10, epoch=0, loss_d=1.0, loss_g=1.0, d_x=0.5,
                                                d_g_z=0.5, images_per_s=1.0, eta_s=1.0))
    advance(spec, client.states, storage, sent.append, Attempt(), 0.0)
    assert [(train.job_id, train.teacher_from) for train in sent[1:]] == [(spec.trial_job_id(t, 0), first) for t in (1, 2, 3)]


def test_a_sweep_trains_one_teacher_for_all_its_trials(client, tmp_path):
    storage = FileStorage(tmp_path)
    spec = sweep_spec(base={**TINY, "teacher": 1, "teacher_steps": 5})
    report = run_sweep(client, spec, storage)
    teachers = {job: storage.list(f"models/{job}/teachers") for outcome in report.trials for job in outcome.jobs}
    first = spec.trial_job_id(0, 0)
    assert [job for job, keys in teachers.items() if keys] == [first], "the first trial's teacher, trained once"
    assert {read_card(storage, job).teacher["key"] for job in teachers} == set(teachers[first])  # type: ignore[index]


def test_a_draw_from_a_huge_grid_never_builds_it_and_a_huge_grid_needs_trials():
    space = {name: list(range(10)) for name in ("log_every", "checkpoint_every", "nz", "batch_size", "teacher_width")}
    space["log_every"] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # 10^5 points
    space = {name: [value + 1 for value in values] for name, values in space.items()}
    drawn = sweep_spec(space=space, trials=3).settings
    assert len(drawn) == 3 and all(set(point) == set(space) for point in drawn)
    with pytest.raises(SpecError, match="its grid has 100,000 points, more than 1,000 trials; give trials"):
        sweep_spec(space=space)


def test_the_grid_is_in_product_order_with_the_last_field_fastest():
    spec = sweep_spec(space={"lr": [1e-4, 2e-4], "mode_seeking": [0.0, 0.5, 1.0]})
    assert [(p["lr"], p["mode_seeking"]) for p in spec.settings] == [
        (1e-4, 0.0), (1e-4, 0.5), (1e-4, 1.0), (2e-4, 0.0), (2e-4, 0.5), (2e-4, 1.0)]


def test_a_budget_of_gan_steps_gives_the_most_steps_whose_plan_fits_it():
    fields = {"job_id": "s-budget", "base": TINY, "space": {"lr": [1e-4, 2e-4], "mode_seeking": [0.0, 1.0]}, "eta": 2}
    steps = steps_within(1000, fields)
    assert SweepSpec.from_dict({**fields, "steps": steps}).planned_steps() <= 1000
    assert SweepSpec.from_dict({**fields, "steps": steps + 1}).planned_steps() > 1000
    with pytest.raises(SpecError, match="budget: 10 GAN steps is less than the smallest plan"):
        steps_within(10, {**fields, "min_steps": 5})
