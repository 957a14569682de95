"""Sweeps through the fleet, on real parts: `augment` CLI processes, real Redis, real SeaweedFS S3, real worker
processes, one of them SIGKILLed in the middle of a sweep."""

from __future__ import annotations

import json

import pytest

from shared.contracts import SweepReport, decode_json
from shared.layout import report_json_key
from shared.settings import Settings
from shared.storage import open_storage
from shared.sweeps import SweepSpec
from tests.support.processes import job_store, parts_held_by, run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# 4 trials (2 x 2), rungs of 20, 40 and 80 steps (eta 2): 4 jobs, then 2, then 1. Tiny networks on fake data, no
# teacher, a point of the validation curve every 5 steps, a checkpoint every 10 (a killed trial resumes from one).
SWEEP = ("sweep", "--dataset", "fake", "--width", "8", "--batch-size", "16", "--teacher", "0", "--reference-steps", "20",
         "--validate-every", "5", "--log-every", "5", "--checkpoint-every", "10", "--steps", "80", "--min-steps", "20",
         "--eta", "2", "--poll-s", "0.5", "--param", "lr=1e-4,3e-4", "--param", "mode-seeking=0,1")


def submit(env: dict[str, str], *args: str) -> SweepSpec:
    submitted = run_cli(env, *args)
    assert submitted.returncode == 0, submitted.stderr
    assert "4 trials, rungs of 20, 40, 80 steps, 160 GAN steps planned (a full grid: 320)" in submitted.stderr
    status = json.loads(run_cli(env, "status", submitted.stdout.strip(), "--json").stdout)
    return SweepSpec.from_dict(status["spec"])


def watch(env: dict[str, str], job_id: str) -> dict:
    watched = run_cli(env, "watch", job_id, "--interval", "0.5", timeout=600)
    assert watched.returncode == 0, watched.stderr
    return json.loads(run_cli(env, "status", job_id, "--json").stdout)


def report_of(env: dict[str, str], job_id: str) -> SweepReport:
    storage = open_storage(Settings.from_env(env))
    return decode_json(SweepReport, storage.get_text(report_json_key(job_id)), "report.json")


def test_a_sweep_with_a_worker_killed_midway_ends_with_the_winner_of_an_undisturbed_run(augment_env, start_worker):
    # Figure for figure needs each trial to train with the same torch threads in both sweeps: pinned here, since a
    # worker left to choose takes a thread per core free when the trial starts, which the other trials decide
    pinned = {**augment_env, "AUGMENT_TORCH_THREADS": "1"}
    doomed, survivor = start_worker(env=pinned), start_worker(env=pinned)
    store = job_store(augment_env)
    killed = submit(augment_env, *SWEEP)

    def trial_on_doomed() -> str | None:  # a trial of the first rung in the making on the doomed worker
        return next((job_id for job_id in killed.trial_job_ids() if parts_held_by(doomed, store, job_id)), None)

    hit = wait_for(trial_on_doomed, 300, "a trial running on the first worker", every_s=0.02)
    doomed.kill()
    status = watch(augment_env, killed.job_id)
    assert status["state"] == "SUCCESS", status
    assert f"job {hit}: redelivered" in survivor.log_path.read_text(), "the survivor took the killed trial over"

    undisturbed = submit(augment_env, *SWEEP)
    assert watch(augment_env, undisturbed.job_id)["state"] == "SUCCESS"

    first, second = report_of(augment_env, killed.job_id), report_of(augment_env, undisturbed.job_id)
    assert (first.winner, first.trials[0].settings) == (second.winner, second.trials[0].settings)
    # not only the same winner: the same leaderboard, figure for figure (every trial's training is seeded, and a
    # trial resumed from its checkpoint continues exactly)
    assert [(o.trial, o.steps, o.best, o.best_step) for o in first.trials] == \
        [(o.trial, o.steps, o.best, o.best_step) for o in second.trials]
    assert [o.steps for o in first.trials] == [80, 40, 20, 20] and first.compute_steps == 4 * 20 + 2 * 20 + 40
    result = status["result"]
    assert result["winner"] == first.winner_model == killed.trial_job_id(first.winner, 2)
    # the winner is a model like any other: it generates
    generated = run_cli(augment_env, "generate", "--model", result["winner"], "--count", "20")
    assert generated.returncode == 0, generated.stderr
    assert watch(augment_env, generated.stdout.strip())["state"] == "SUCCESS"
    printed = run_cli(augment_env, "report", killed.job_id)
    assert printed.returncode == 0 and f"**Winner: trial {first.winner}**" in printed.stdout
    assert printed.stdout.count("\n| ") == 1 + 4, "a header and one row per trial"


def test_cancelling_a_sweep_stops_every_trial(augment_env, start_worker):
    start_worker(queues="train,sweep")
    start_worker(queues="train,sweep")
    store = job_store(augment_env)
    # trials long enough to be running when the cancel comes
    args = [arg for arg in SWEEP]
    args[args.index("--steps") + 1], args[args.index("--min-steps") + 1] = "80000", "20000"
    submitted = run_cli(augment_env, *args)
    assert submitted.returncode == 0, submitted.stderr
    spec = SweepSpec.from_dict(json.loads(run_cli(augment_env, "status", submitted.stdout.strip(), "--json").stdout)["spec"])

    def running() -> list[str]:
        return [job_id for job_id in spec.trial_job_ids() if store.liveness.beats(job_id)]

    wait_for(lambda: len(running()) == 2, 300, "two trials running, one per worker")
    cancelled = run_cli(augment_env, "cancel", spec.job_id)
    assert cancelled.returncode == 0, cancelled.stderr

    submitted_trials = [job_id for job_id in spec.trial_job_ids() if store.get(job_id) is not None]
    assert len(submitted_trials) == 4  # the first rung, two of them queued behind the running pair

    def states() -> list[str]:
        return [json.loads(run_cli(augment_env, "status", job_id, "--json").stdout)["state"] for job_id in submitted_trials]

    wait_for(lambda: states() == ["CANCELLED"] * 4, 120, lambda: f"every trial cancelled, not {states()}")
    assert json.loads(run_cli(augment_env, "status", spec.job_id, "--json").stdout)["state"] == "CANCELLED"
    wait_for(lambda: not running(), 60, "no trial left running")
    assert [job_id for job_id in spec.trial_job_ids() if store.get(job_id) is not None] == submitted_trials, \
        "no trial submitted after the cancel"


@pytest.mark.parametrize(("args", "message"), [
    (("--param", "widht=8,16"), "invalid sweep spec: space: widht: not a training setting; `augment train --help` lists them"),
    (("--param", "width=8,2"), "invalid sweep spec: trial 1 (width=2): width: 2 is out of range; use 4 to 512"),
    (("--param", "width"), "invalid sweep spec: space: 'width' is not FIELD=V1,V2,...; use e.g. width=32,64"),
    (("--param", "seed=0,1"), "invalid sweep spec: space: seed cannot be searched"),
    (("--space", "missing.json"), "invalid sweep spec: space: cannot read missing.json: No such file or directory"),
    (("--param", "width=8", "--min-steps", "100"), "invalid sweep spec: min_steps: 100 is more than steps=80"),
    (("--param", "width=8", "--budget", "500"), "give --budget (the whole sweep's GAN steps) or --steps (its winner's), not both"),
    (("--param", "width=8", "--budget", "soon"), "--budget 'soon' is neither GAN steps nor a time; give e.g. 16000, 90m or 2h"),
])
def test_a_sweep_that_cannot_run_is_one_line_and_exit_2_with_nothing_enqueued(augment_env, args, message):
    base = SWEEP[:SWEEP.index("--param")]
    refused = run_cli(augment_env, *base, *args)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith(f"augment: error: {message}") and refused.stderr.count("\n") == 1, refused.stderr
    assert job_store(augment_env).recent() == []
