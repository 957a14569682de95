"""Thin Celery tasks: parse and validate the spec, wire progress, cancellation, leases and retries, call the plain
functions of :mod:`worker.train` and :mod:`worker.generate`.

The job id is the task id of the job's first task (``augment.train`` or ``augment.generate``). Progress goes to
the result backend as state ``PROGRESS``; a cancelled job ends in state ``CANCELLED``. A generation job fans out
into shard tasks and a finaliser, which give the job its final state; the first final state stands.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Ignore, Reject
from celery.signals import worker_shutting_down
from celery.utils.log import get_task_logger

from shared.broker import (
    EVALUATE_TASK,
    GENERATE_FINALIZE_TASK,
    GENERATE_QUEUE,
    GENERATE_SHARD_TASK,
    GENERATE_TASK,
    TRAIN_TASK,
)
from shared.jobs import JobCancelled, JobField, JobState, JobStore, open_job_store
from shared.leases import Lease
from shared.progress import Progress, TrainProgress, progress_to_dict
from shared.settings import Settings
from shared.specs import EvaluateSpec, GenerateSpec, TrainSpec
from shared.storage import Storage, StorageUnavailable, open_storage
from worker.app import app
from worker.checkpoint import ModelNotFound, check_model
from worker.evaluate import run_quality, run_utility
from worker.generate import GeneratorCache, ShardBusy, finalize_job, plan_job, run_shard
from worker.train import STAT_NAMES, TrainHooks, pick_device, run_training

log = get_task_logger(__name__)
# A worker rides out a restart of the object store for this long per call before a task gives up (and retries).
STORAGE_RETRY_WINDOW_S = 60.0
TASK_RETRIES = 8
TRAIN_LEASE_TTL_S = 15.0  # renewed every 5 s while the job runs; lapses 15 s after its worker dies
HISTORY_FIELDS = ("step", *STAT_NAMES)
# Generators stay loaded between shard tasks: a worker reads each model from storage once.
GENERATORS = GeneratorCache()
# Set when the worker is told to stop (SIGTERM: docker stop, Kubernetes, a spot-instance notice): a running
# training job then checkpoints and hands its message back instead of holding the shutdown for hours.
PREEMPTED = threading.Event()


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    PREEMPTED.set()


def _owner(task: Task) -> str:
    return f"{task.request.hostname}/{uuid.uuid4().hex[:8]}"


def _open() -> tuple[Settings, JobStore, Storage]:
    settings = Settings.from_env()
    return (settings, *_clients(settings))


@functools.lru_cache(maxsize=4)
def _clients(settings: Settings) -> tuple[JobStore, Storage]:
    """One job store and one storage client per process and settings, shared by its tasks and threads (both are
    thread-safe and reconnect by themselves): new connections and a bucket check cost a shard task ~2 ms."""
    return open_job_store(settings, patient=True), open_storage(settings, retry_window_s=STORAGE_RETRY_WINDOW_S)


def _finish(store: JobStore, job_id: str, state: JobState, result: Any) -> None:
    """Give job JOB_ID its final state, unless it has one: a late or duplicated task cannot overwrite it."""
    if not store.set_once(job_id, JobField.OUTCOME, state):
        return
    if state == JobState.FAILURE:
        app.backend.mark_as_failure(job_id, result)
    else:
        app.backend.store_result(job_id, result, state)


def _later(task: Task, seconds: float, exc: Exception | None = None, max_retries: int | None = None) -> Exception:
    """Retry TASK in about SECONDS.

    A retry is a message with a countdown that a worker holds unacknowledged until it is due; the transport's
    heartbeat keeps it invisible meanwhile, and it comes back if that worker dies. Retries of busy (leased) jobs
    are unlimited: they end when the holder finishes or dies.
    """
    options = {} if max_retries is None else {"max_retries": max_retries}
    return task.retry(exc=exc, countdown=seconds, **options)  # type: ignore[no-any-return]


def _note_redelivery(task: Task, job_id: str) -> None:
    if (task.request.delivery_info or {}).get("redelivered"):
        log.warning("job %s: redelivered (its previous worker stopped or handed it back)", job_id)


def _backoff(task: Task) -> float:
    return float(min(60, 2 ** task.request.retries))


def _retry_or_fail(task: Task, store: JobStore, job_id: str, exc: Exception) -> Exception:
    """Retry a task that met an outage with exponential backoff; after TASK_RETRIES fail its job."""
    if isinstance(exc, StorageUnavailable) and task.request.retries < TASK_RETRIES:
        return _later(task, _backoff(task), exc, TASK_RETRIES)
    _finish(store, job_id, JobState.FAILURE, exc)
    return exc


@app.task(name=TRAIN_TASK, bind=True, max_retries=None)
def train(self: Task, spec: Any) -> dict[str, Any]:
    parsed = TrainSpec.from_dict(spec)  # a SpecError fails the task with a one-line reason; retrying cannot fix it
    _check_task_id(self, parsed.job_id)
    settings, store, storage = _open()
    _note_redelivery(self, parsed.job_id)
    if store.cancel_requested(parsed.job_id):
        _cancelled(self, f"job {parsed.job_id} was cancelled before it started")
    # A second delivery of a running job (a duplicated message, or one handed out again while Redis was
    # unreachable for longer than the visibility timeout) waits for the lease instead of training beside it.
    lease = Lease(store, parsed.job_id, "train", _owner(self), TRAIN_LEASE_TTL_S)
    if not lease.acquire():
        log.info("job %s is running on another worker; checking again later", parsed.job_id)
        raise _later(self, TRAIN_LEASE_TTL_S)
    try:
        hooks = TrainHooks(
            progress=lambda info: _report_training(self, store, parsed.job_id, info),
            stage=lambda info: _report(self, info),
            should_stop=lambda: PREEMPTED.is_set() or lease.lost or _cancel_requested(store, parsed.job_id),
        )
        return run_training(parsed, settings, storage, hooks)
    except JobCancelled as exc:
        if PREEMPTED.is_set():
            # the checkpoint is written: the next worker to take the message resumes from this very step
            log.warning("job %s: worker shutting down; checkpointed and handed the job back (%s)", parsed.job_id, exc)
            raise Reject("worker shutting down: handed to another worker, which resumes from the checkpoint", requeue=True) from None
        if lease.lost:
            # Redis lost the lease (a long outage) and another delivery may hold it now: stop, and come back
            # later as a new message, which resumes from the checkpoint if the job is still unfinished.
            log.warning("job %s: lost its lease; stopping here and retrying later", parsed.job_id)
            raise _later(self, TRAIN_LEASE_TTL_S) from None
        _cancelled(self, str(exc))
    except StorageUnavailable as exc:  # the checkpoint lets the retry continue where this run stopped
        raise _later(self, _backoff(self), exc, TASK_RETRIES) from None
    finally:
        lease.release()


def _report(task: Task, progress: Progress) -> None:
    try:
        task.update_state(state=JobState.PROGRESS, meta=progress_to_dict(progress))
    except redis.RedisError as exc:  # a progress report lost to a Redis outage is not worth the job
        log.warning("progress report skipped: Redis unreachable (%s)", type(exc).__name__)


def _report_training(task: Task, store: JobStore, job_id: str, info: TrainProgress) -> None:
    """Report progress and keep its vital signs in the job's history, which the dashboard draws its curves from."""
    _report(task, info)
    try:
        store.append_history(job_id, {name: getattr(info, name) for name in HISTORY_FIELDS})
    except redis.RedisError as exc:
        log.warning("history record skipped: Redis unreachable (%s)", type(exc).__name__)


def _cancel_requested(store: JobStore, job_id: str) -> bool:
    try:
        return store.cancel_requested(job_id)
    except redis.RedisError:
        return False  # asked again a second later; Redis is back by then or the job goes on


def _check_task_id(task: Task, job_id: str) -> None:
    if job_id != task.request.id:
        raise ValueError(f"spec job_id {job_id} does not match task id {task.request.id}")


def _cancelled(task: Task, reason: str) -> NoReturn:
    log.info("%s", reason)
    task.update_state(state=JobState.CANCELLED, meta={"reason": reason})
    raise Ignore()


def _dispatcher(spec: GenerateSpec) -> Callable[[int], None]:
    spec_data = spec.to_dict()

    def dispatch(index: int) -> None:
        app.send_task(
            GENERATE_SHARD_TASK, kwargs={"spec": spec_data, "shard": index, "queued_at": time.time()},
            task_id=f"{spec.job_id}-shard-{index:06d}-{uuid.uuid4().hex[:6]}", queue=GENERATE_QUEUE,
        )

    return dispatch


@app.task(name=GENERATE_TASK, bind=True)
def generate(self: Task, spec: Any) -> None:
    """Plan a generation job: check its model, dispatch its shard tasks. The finaliser ends the job."""
    parsed = GenerateSpec.from_dict(spec)
    _check_task_id(self, parsed.job_id)
    _, store, storage = _open()
    if store.get_field(parsed.job_id, JobField.OUTCOME):
        raise Ignore()  # a redelivered planner of a job that has ended
    if store.cancel_requested(parsed.job_id):
        _cancelled(self, f"job {parsed.job_id} was cancelled before it started")
    try:
        check_model(storage, parsed.model)
    except ModelNotFound as exc:
        _finish(store, parsed.job_id, JobState.FAILURE, exc)
        raise
    if store.get_field(parsed.job_id, JobField.STARTED_AT) is None:
        self.update_state(state=JobState.PROGRESS, meta={})  # before any shard runs, so it cannot overwrite the end state
    total = plan_job(parsed, store, _dispatcher(parsed))
    log.info("job %s: dispatched %d shard tasks", parsed.job_id, total)
    raise Ignore()  # the job's state is the finaliser's to set


@app.task(name=GENERATE_SHARD_TASK, bind=True, ignore_result=True, max_retries=None)
def generate_shard(self: Task, spec: Any, shard: int, queued_at: float | None = None) -> None:
    parsed = GenerateSpec.from_dict(spec)
    _, store, storage = _open()
    _note_redelivery(self, parsed.job_id)
    outcome = store.get_field(parsed.job_id, JobField.OUTCOME)
    if outcome:
        log.info("job %s has ended (%s): shard %d is left as it is", parsed.job_id, outcome, shard)
        return
    if store.cancel_requested(parsed.job_id):
        _finish(store, parsed.job_id, JobState.CANCELLED, {"reason": f"job {parsed.job_id} was cancelled; its shards are not listed"})
        return
    try:
        _, last = run_shard(parsed, shard, storage, store, GENERATORS, pick_device(), _owner(self), queued_at)
    except ShardBusy as exc:
        # the other worker finishes it, or dies and its lease lapses: then this retry makes the shard
        raise _later(self, 5, exc) from None
    except Exception as exc:
        raise _retry_or_fail(self, store, parsed.job_id, exc) from None
    if last and store.set_once(parsed.job_id, JobField.FINALIZE_SENT, "1"):
        app.send_task(GENERATE_FINALIZE_TASK, kwargs={"spec": spec}, queue=GENERATE_QUEUE)


@app.task(name=GENERATE_FINALIZE_TASK, bind=True, ignore_result=True)
def generate_finalize(self: Task, spec: Any) -> None:
    parsed = GenerateSpec.from_dict(spec)
    _, store, storage = _open()
    if store.get_field(parsed.job_id, JobField.OUTCOME):
        return
    if store.cancel_requested(parsed.job_id):
        _finish(store, parsed.job_id, JobState.CANCELLED, {"reason": f"job {parsed.job_id} was cancelled before its manifest"})
        return
    try:
        result = finalize_job(parsed, storage, store, _dispatcher(parsed))
    except Exception as exc:
        raise _retry_or_fail(self, store, parsed.job_id, exc) from None
    if result is not None:
        _finish(store, parsed.job_id, JobState.SUCCESS, result)


@app.task(name=EVALUATE_TASK, bind=True)
def evaluate(self: Task, spec: Any) -> dict[str, Any]:
    """A quality or utility evaluation; its report lands under reports/<job>/."""
    parsed = EvaluateSpec.from_dict(spec)
    _check_task_id(self, parsed.job_id)
    settings, store, storage = _open()
    if store.cancel_requested(parsed.job_id):
        _cancelled(self, f"job {parsed.job_id} was cancelled before it started")
    run = run_quality if parsed.mode == "quality" else run_utility
    try:
        return run(parsed, settings, storage, lambda info: _report(self, info),
                   lambda: PREEMPTED.is_set() or _cancel_requested(store, parsed.job_id))
    except JobCancelled as exc:
        if PREEMPTED.is_set():
            # a utility study's GAN has its checkpoint and the reference classifier is stored: the next worker
            # to take the message resumes the GAN from there
            log.warning("job %s: worker shutting down; handed the evaluation back (%s)", parsed.job_id, exc)
            raise Reject("worker shutting down: handed to another worker", requeue=True) from None
        _cancelled(self, str(exc))
    except StorageUnavailable as exc:  # the GAN's checkpoint and the stored reference classifier make a retry cheap
        raise _later(self, _backoff(self), exc, TASK_RETRIES) from None
