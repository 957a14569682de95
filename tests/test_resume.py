"""Exact resume, the accelerate way: train K steps, interrupt (a crash, SIGTERM, SIGKILL), resume, compare with an
uninterrupted run."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
import redis
import torch

from shared.models import read_card
from shared.progress import TrainProgress
from shared.records import RedisJobStore
from shared.settings import Settings
from shared.specs import TrainSpec
from shared.storage import FileStorage, Storage, open_storage
from tests.support.processes import WorkerProcess, run_cli
from tests.support.threads import ONE_THREAD, TWO_THREADS
from tests.support.waiting import wait_for
from worker import checkpoint
from worker.train import TrainHooks, run_training

TENSOR_GROUPS = ("generator", "generator_ema", "discriminator")


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"]
    for group in TENSOR_GROUPS:
        assert a[group].keys() == b[group].keys()
        for name in a[group]:
            assert torch.equal(a[group][name], b[group][name]), f"{group}.{name} differs"
    for optimizer in ("opt_g", "opt_d"):
        for index, slot in a[optimizer]["state"].items():
            for name, value in slot.items():
                assert torch.equal(value, b[optimizer]["state"][index][name]), f"{optimizer}[{index}].{name} differs"
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])


class Crash(Exception):
    pass


def spec_for(job_id: str, **overrides: Any) -> TrainSpec:
    fields = dict(job_id=job_id, dataset="fake", steps=40, width=8, batch_size=16, log_every=5,
                  checkpoint_every=10, seed=11, diffaugment="translation,cutout,color", ema=0.999)
    return TrainSpec(**{**fields, **overrides})


def crash_at(step: int) -> TrainHooks:
    def crash(info: TrainProgress) -> None:
        if info.step >= step:
            raise Crash()

    return TrainHooks(progress=crash)


def test_resume_in_process_equals_uninterrupted(tmp_path):
    storage = FileStorage(tmp_path)
    run_training(spec_for("t-whole"), ONE_THREAD, storage)

    with pytest.raises(Crash):
        run_training(spec_for("t-split"), ONE_THREAD, storage, crash_at(25))
    interrupted = checkpoint.load(storage, "t-split")
    assert interrupted is not None and interrupted["step"] == 20  # the latest checkpoint is the step-20 one
    run_training(spec_for("t-split"), TWO_THREADS, storage)  # a worker that would choose another count

    whole, split = checkpoint.load(storage, "t-whole"), checkpoint.load(storage, "t-split")
    assert whole is not None and split is not None
    assert_same_training_state(whole, split)
    assert read_card(storage, "t-split").threads == whole["threads"] == 1


def test_a_job_resumed_before_its_first_checkpoint_keeps_its_teachers_thread_count(tmp_path):
    storage = FileStorage(tmp_path)
    spec = spec_for("t-taught", steps=20, teacher=1, teacher_steps=5)
    run_training(spec_for("t-whole", steps=20, teacher=1, teacher_steps=5), ONE_THREAD, storage)
    with pytest.raises(Crash):  # after its teacher is stored, before the step-10 checkpoint
        run_training(spec, ONE_THREAD, storage, crash_at(5))
    assert checkpoint.load(storage, "t-taught") is None and storage.list("models/t-taught/teachers")
    run_training(spec, TWO_THREADS, storage)

    whole, taught = checkpoint.load(storage, "t-whole"), checkpoint.load(storage, "t-taught")
    assert whole is not None and taught is not None
    assert_same_training_state(whole, taught)
    assert read_card(storage, "t-taught").threads == 1


def test_a_job_started_beside_a_busy_core_leaves_it_out(tmp_path, busy_core):
    cores = os.sched_getaffinity(0)
    run_training(spec_for("t-beside", steps=10), Settings(), FileStorage(tmp_path))
    # one thread fewer than the cores it may use (the worker's bound), at least one: never the busy core's
    assert 1 <= read_card(FileStorage(tmp_path), "t-beside").threads <= max(1, len(cores) - 1)


def test_resume_refuses_a_checkpoint_from_another_spec(tmp_path):
    storage = FileStorage(tmp_path)
    run_training(spec_for("t-same", steps=10), Settings(), storage)
    with pytest.raises(ValueError, match="different spec"):
        run_training(spec_for("t-same", steps=20), Settings(), storage)


def wait_for_step(env: dict[str, str], job_id: str, step: int, timeout_s: float = 120) -> None:
    def reached() -> bool:
        status = json.loads(run_cli(env, "status", job_id, "--json").stdout)
        if (status.get("progress") or {}).get("step", 0) >= step:
            return True
        assert status["state"] not in {"SUCCESS", "FAILURE"}, status
        return False

    wait_for(reached, timeout_s, f"{job_id} to reach step {step}", every_s=0.2)


def wait_for_checkpoint_past(storage: Storage, job_id: str, step: int, timeout_s: float = 120) -> int:
    """The step of the first checkpoint written after ``step``, polled straight from storage: the CLI's status takes
    long enough that a fast CPU trains to the end in between."""
    def later() -> int | None:
        saved = checkpoint.load(storage, job_id)
        return int(saved["step"]) if saved is not None and saved["step"] > step else None

    return wait_for(later, timeout_s, f"a checkpoint of {job_id} past step {step}", every_s=0.02)


@pytest.mark.integration
def test_training_preempted_then_killed_resumes_exactly(augment_env, start_worker):
    # The shipped visibility timeout. SIGTERM first (docker stop, a spot notice): the job checkpoints and is
    # handed back at once. Then SIGKILL: its message comes back one visibility timeout after the last heartbeat.
    # Without a teacher: its 3 x 200 steps ran before step 1 and outlasted the wait on a slower CPU, and resuming
    # the GAN is what is tested here (tests/test_teacher.py covers the teacher's resume).
    env = augment_env
    # 400 steps: the taker must not finish between its first checkpoint after the resume and the kill, on a fast CPU.
    # A validation measurement every 30 steps: between checkpoints, so a resumed attempt measures some points again.
    args = ["train", "--dataset", "fake", "--steps", "400", "--width", "8", "--batch-size", "32",
            "--checkpoint-every", "50", "--seed", "5", "--ema", "0.999", "--log-every", "10", "--teacher", "0",
            "--validate-every", "30", "--reference-steps", "30"]
    workers = [start_worker(queues="train"), start_worker(queues="train")]
    job_id = run_cli(env, *args).stdout.strip()
    wait_for_step(env, job_id, 40)
    store = RedisJobStore(redis.Redis.from_url(env["AUGMENT_BROKER_URL"], decode_responses=True))
    holder = next(worker for worker in workers if store.liveness.beats(job_id)["train"].owner.startswith(f"augment-{worker.pid}@"))
    taker = workers[1 - workers.index(holder)]
    assert holder.stop(timeout=60) is not None, "the preempted worker exited by itself"
    assert f"job {job_id}: worker shutting down; checkpointed and handed the job back" in holder.log_path.read_text()
    storage = open_storage(Settings.from_env(env))
    # the step it stopped at, from its own log: the taker may have resumed and checkpointed again already
    stopped = re.search(rf"job {job_id} stopped at step (\d+) \(preempted\)", holder.log_path.read_text())
    assert stopped is not None, holder.log_tail()
    preempted_at = int(stopped.group(1))
    wait_for_log(taker, f"job {job_id}: resuming from step {preempted_at}")  # the step it stopped at, not an older one

    killed_at = wait_for_checkpoint_past(storage, job_id, preempted_at)
    taker.kill()
    assert preempted_at < killed_at < 400 and not storage.exists(f"models/{job_id}/model.json")
    last = start_worker(queues="train")
    watched = run_cli(env, "watch", job_id, "--interval", "0.3", timeout=300)
    assert watched.returncode == 0, watched.stderr + last.log_tail()
    assert f"job {job_id}: resuming from step {killed_at}" in last.log_path.read_text()

    # the uninterrupted run, on a worker pinned to the thread count the job chose when it first started: a job's
    # weights depend on it, and the job kept it through both resumptions whatever its new workers would choose
    resumed_card = read_card(storage, job_id)
    last.kill()
    start_worker(queues="train", env={**env, "AUGMENT_TORCH_THREADS": str(resumed_card.threads)})
    reference_id = run_cli(env, *args).stdout.strip()
    assert run_cli(env, "watch", reference_id, "--interval", "0.3", timeout=300).returncode == 0
    reference_card = read_card(storage, reference_id)
    resumed = checkpoint.from_bytes(storage.get_bytes(resumed_card.checkpoint), "resumed")
    reference = checkpoint.from_bytes(storage.get_bytes(reference_card.checkpoint), "reference")
    assert_same_training_state(resumed, reference)
    # the same validation curve, and the same best checkpoint
    assert [point["step"] for point in resumed_card.curve] == [*range(30, 400, 30), 400]
    assert resumed_card.curve == reference_card.curve and resumed_card.best == reference_card.best
    best = checkpoint.from_bytes(storage.get_bytes(resumed_card.best_checkpoint or ""), "resumed best")
    best_reference = checkpoint.from_bytes(storage.get_bytes(reference_card.best_checkpoint or ""), "reference best")
    assert best["step"] == resumed_card.best["step"]  # type: ignore[index]
    assert all(torch.equal(best["generator"][name], tensor) for name, tensor in best_reference["generator"].items())
    assert storage.list(f"models/{job_id}/best") == [resumed_card.best_checkpoint]

    sampler = start_worker(queues="generate")
    generated = run_cli(env, "generate", "--model", job_id, "--count", "20").stdout.strip()
    assert run_cli(env, "watch", generated, "--interval", "0.3", timeout=120).returncode == 0, sampler.log_tail()
    assert f"model {job_id}: sampling from its best checkpoint, {resumed_card.best_checkpoint}" in sampler.log_path.read_text()


def wait_for_log(worker: WorkerProcess, line: str, timeout_s: float = 120) -> None:
    wait_for(lambda: line in worker.log_path.read_text(), timeout_s,
             lambda: f"{worker.log_path.name} to log {line!r}; it logged:\n{worker.log_tail()}", every_s=0.2)
