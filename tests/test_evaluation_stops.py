"""A running evaluation stops as a training job does: `augment cancel` within seconds, SIGTERM hands it back, and the
next worker resumes its GAN from the checkpoint. Real CLI processes, Redis, S3 and worker processes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.processes import WorkerProcess, run_cli
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# Only ends a wait that would otherwise hang: each test cancels a stage sized to run for hours (a million steps), so
# the job ending CANCELLED at all is the proof that the cancel stopped it mid-stage.
CANCEL_BOUND_S = 120.0


def status_of(env: dict[str, str], job_id: str) -> dict[str, Any]:
    return json.loads(run_cli(env, "status", job_id, "--json").stdout)


def wait_for_stage(env: dict[str, str], job_id: str, stage: str, worker: WorkerProcess, timeout_s: float = 240) -> None:
    """Until JOB_ID reports progress in a stage that starts with STAGE, past its first step."""
    def reached() -> bool:
        status = status_of(env, job_id)
        progress = status.get("progress") or {}
        if str(progress.get("stage", "")).startswith(stage) and (progress.get("done") or 0) > 0:
            return True
        assert status["state"] not in {"SUCCESS", "FAILURE", "CANCELLED"}, status
        return False

    wait_for(reached, timeout_s, lambda: f"{job_id} to reach {stage!r}; its worker logged:\n{worker.log_tail()}", every_s=0.3)


def submit_small_utility(env: dict[str, str], gan_steps: int) -> str:
    """A utility evaluation on fake data whose GAN trains GAN_STEPS steps and whose other stages take seconds."""
    return run_cli(env, "evaluate", "utility", "--dataset", "fake", "--per-class", "6", "--seeds", "1",
                   "--gan-steps", str(gan_steps), "--gan-width", "8", "--classifier-steps", "10", "--reference-steps", "10",
                   "--samples-per-class", "4", "--test-limit", "50").stdout.strip()


def assert_cancelled_mid_stage(env: dict[str, str], job_id: str, worker: WorkerProcess) -> None:
    assert run_cli(env, "cancel", job_id).returncode in (0, 3)
    wait_for(lambda: status_of(env, job_id)["state"] == "CANCELLED", CANCEL_BOUND_S,
             lambda: f"{job_id} to stop:\n{worker.log_tail()}", every_s=0.2)
    watched = run_cli(env, "watch", job_id, "--interval", "0.3", timeout=60)
    assert watched.returncode == 3, watched.stderr  # the CLI's exit code for a cancelled job


def test_cancel_stops_a_running_quality_evaluation_mid_stage(augment_env, start_worker):
    worker = start_worker(queues="train,evaluate")
    model = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "2", "--width", "8", "--teacher", "0").stdout.strip()
    assert run_cli(augment_env, "watch", model, "--interval", "0.3", timeout=180).returncode == 0
    job_id = run_cli(augment_env, "evaluate", "quality", "--model", model, "--reference-steps", "1000000",
                     "--samples-per-class", "4", "--test-limit", "50").stdout.strip()
    wait_for_stage(augment_env, job_id, "training the reference classifier", worker)
    assert_cancelled_mid_stage(augment_env, job_id, worker)


def test_cancel_stops_a_utility_evaluation_while_its_gan_trains(augment_env, start_worker):
    worker = start_worker(queues="evaluate")
    job_id = submit_small_utility(augment_env, gan_steps=1_000_000)
    wait_for_stage(augment_env, job_id, "training the GAN", worker)
    assert_cancelled_mid_stage(augment_env, job_id, worker)
    assert f"job {job_id}-gan stopped at step" in worker.log_path.read_text()


def test_sigterm_hands_a_utility_evaluation_back_and_the_next_worker_resumes_its_gan(augment_env, start_worker):
    holder = start_worker(queues="evaluate")
    # 400 steps: on this machine's slowest CPU the SIGTERM lands near step 50; a CPU three times faster must still be
    # training when it does
    job_id = submit_small_utility(augment_env, gan_steps=400)
    wait_for_stage(augment_env, job_id, "training the GAN", holder)
    assert holder.stop(timeout=60) is not None, "the worker exited by itself"
    logged = holder.log_path.read_text()
    assert f"job {job_id}: worker shutting down; handed the evaluation back" in logged, holder.log_tail()
    stopped = re.search(rf"job {job_id}-gan stopped at step (\d+) \(preempted\)", logged)
    assert stopped is not None, holder.log_tail()

    taker = start_worker(queues="evaluate")
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.3", timeout=300)
    assert watched.returncode == 0, watched.stderr + taker.log_tail()
    assert f"job {job_id}-gan: resuming from step {stopped.group(1)}" in taker.log_path.read_text()
    assert status_of(augment_env, job_id)["state"] == "SUCCESS"
