"""Thin Celery tasks: parse and validate the spec, wire progress, cancellation, leases and retries, call the plain
functions of :mod:`worker.train`, :mod:`worker.generate`, :mod:`worker.evaluate` and :mod:`worker.sweep`.

The job id is the task id of the job's first task (``augment.train``, ``augment.generate``, ``augment.evaluate``,
``augment.sweep``). Every change of a job's state goes through :class:`shared.lifecycle.JobStates`; the tasks keep no
Celery results (``ignore_result``), so Celery only carries the messages. A generation job fans out into shard tasks
and a finaliser, which give the job its final state; a sweep's task comes back every poll until its trials (ordinary
training jobs) have ended; the first final state stands, for every kind.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import worker_ready, worker_shutting_down
from celery.utils.log import get_task_logger

from shared.broker import (
    EVALUATE_TASK,
    GENERATE_FINALIZE_TASK,
    GENERATE_QUEUE,
    GENERATE_SHARD_TASK,
    GENERATE_TASK,
    SWEEP_TASK,
    TRAIN_TASK,
    finalize_task_id,
    shard_task_id,
)
from shared.contracts import KINDS, Result, SweepResult, kind_of
from shared.keys import JobField
from shared.lifecycle import JobStates, JobStopped, StopReason, cancel_sweep
from shared.liveness import Attempt, Fence, Lease
from shared.models import check_model
from shared.progress import Progress, TrainProgress
from shared.records import JobStore, RedisJobStore, open_job_store
from shared.settings import Settings
from shared.specs import EvaluateSpec, GenerateSpec, TrainSpec
from shared.storage import Storage, StorageUnavailable, open_storage
from shared.sweeps import SweepSpec
from worker.app import app
from worker.evaluate import run_quality, run_utility
from worker.generate import GeneratorCache, ShardBusy, finalize_job, plan_job, run_shard
from worker.publish import write_card
from worker.reconcile import Missing, queue_of, reconcile_forever
from worker.report import publish_report
from worker.sweep import advance
from worker.train import STAT_NAMES, TrainHooks, pick_device, run_training

log = get_task_logger(__name__)
# A worker rides out a restart of the object store for this long per call before a task gives up (and retries).
STORAGE_RETRY_WINDOW_S = 60.0
TASK_RETRIES = 8
LEASE_TTL_S = 15.0  # a job's lease: renewed every 5 s while it runs; lapses 15 s after its worker dies
HISTORY_FIELDS = ("step", *STAT_NAMES)
JobSpec = TypeVar("JobSpec", TrainSpec, GenerateSpec, EvaluateSpec)
# Generators stay loaded between shard tasks: a worker reads each model from storage once.
GENERATORS = GeneratorCache()
# Set when the worker is told to stop (SIGTERM: docker stop, Kubernetes, a spot-instance notice): a running
# training job then checkpoints and hands its message back instead of holding the shutdown for hours.
PREEMPTED = threading.Event()


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    PREEMPTED.set()


@worker_ready.connect
def _start_reconciling(sender: Any = None, **_: Any) -> None:
    """Every worker takes part in reconciliation (worker.reconcile): one of them sweeps in each period."""
    store = _open()[1]
    if isinstance(store, RedisJobStore):
        def send(missing: Missing) -> None:
            app.send_task(missing.task, kwargs=missing.kwargs, task_id=missing.task_id, queue=queue_of(missing))

        owner = f"{getattr(sender, 'hostname', 'worker')}/{uuid.uuid4().hex[:8]}"
        threading.Thread(target=reconcile_forever, args=(store, send, owner, PREEMPTED), name="reconcile", daemon=True).start()


def _owner(task: Task) -> str:
    return f"{task.request.hostname}/{uuid.uuid4().hex[:8]}"


def _open() -> tuple[Settings, JobStore, Storage, JobStates]:
    settings = Settings.from_env()
    return (settings, *_clients(settings))


@functools.lru_cache(maxsize=4)
def _clients(settings: Settings) -> tuple[JobStore, Storage, JobStates]:
    """One job store and one storage client per process and settings, shared by its tasks and threads (both are
    thread-safe and reconnect by themselves): new connections and a bucket check cost a shard task ~2 ms."""
    store = open_job_store(settings, patient=True)
    return store, open_storage(settings, retry_window_s=STORAGE_RETRY_WINDOW_S), JobStates(app.backend, store)


def _job_task(run: Callable[..., None]) -> Callable[..., None]:
    """A job's first task (its id is the job's): an error that nothing in it handles fails the job, which Celery no
    longer records (``ignore_result``). Celery's own control flow (retry, ignore, reject) passes through."""

    @functools.wraps(run)
    def task(self: Task, *args: Any, **kwargs: Any) -> None:
        try:
            run(self, *args, **kwargs)
        except (Retry, Ignore, Reject):
            raise
        except Exception as exc:
            _open()[3].failed(self.request.id, exc)
            raise  # Celery logs it with its traceback

    return task


def _later(task: Task, seconds: float, exc: Exception | None = None, max_retries: int | None = None,
           states: JobStates | None = None, fence: Fence | None = None) -> Exception:
    """Retry TASK in about SECONDS; STATES, for a job's first task, records that the job is retrying (if FENCE, the
    attempt's lease, still holds the job).

    A retry is a message with a countdown that a worker holds unacknowledged until it is due; the transport's
    heartbeat keeps it invisible meanwhile, and it comes back if that worker dies. Retries of busy (leased) jobs
    are unlimited: they end when the holder finishes or dies.
    """
    if states is not None and (max_retries is None or task.request.retries < max_retries):
        states.retrying(task.request.id, exc or RuntimeError("running on another worker; checking again later"), fence)
    options = {} if max_retries is None else {"max_retries": max_retries}
    return task.retry(exc=exc, countdown=seconds, **options)  # type: ignore[no-any-return]


def _note_redelivery(task: Task, job_id: str) -> None:
    if (task.request.delivery_info or {}).get("redelivered"):
        log.warning("job %s: redelivered (its previous worker stopped or handed it back)", job_id)


def _backoff(task: Task) -> float:
    return float(min(60, 2 ** task.request.retries))


def _retry_or_fail(task: Task, states: JobStates, job_id: str, exc: Exception) -> Exception:
    """Retry a task that met an outage with exponential backoff; after TASK_RETRIES fail its job."""
    if isinstance(exc, StorageUnavailable) and task.request.retries < TASK_RETRIES:
        return _later(task, _backoff(task), exc, TASK_RETRIES)
    states.failed(job_id, exc)
    return exc


@app.task(name=TRAIN_TASK, bind=True, max_retries=None, ignore_result=True)
@_job_task
def train(self: Task, spec: Any) -> None:
    parsed, settings, store, storage, states = _begin(self, TrainSpec, spec)

    def run(lease: Lease, attempt: Attempt) -> Result:
        fence = lease.held
        return run_training(parsed, settings, storage, TrainHooks(
            progress=lambda info: _report_training(states, parsed.job_id, info, fence),
            stage=lambda info: _report(states, parsed.job_id, info, fence),
            should_stop=lambda: _stop_reason(store, parsed.job_id, lease),
            attempt=attempt,
        ))

    _run_leased(self, parsed.job_id, "train", run, lambda committed: write_card(storage, parsed.job_id, committed),
                ("checkpointed and handed the job back", "worker shutting down: handed to another worker, which resumes "
                 "from the checkpoint"))


def _run_leased(task: Task, job_id: str, part: str, run: Callable[[Lease, Attempt], Result], finish: Callable[[str], Result],
                preempted: tuple[str, str]) -> None:
    """Run a job's first task under the lease on PART: RUN does the work as one attempt, FINISH publishes what an
    earlier attempt fixed (it stopped after its commit, before the job's final state). PREEMPTED says what a
    worker shutting down did (for its log) and why the job is queued again (for its state).

    A second delivery of a running job (a duplicated message, or one handed out again while its worker was cut off
    for longer than the visibility timeout) waits for the lease instead of running beside it, and writes no state:
    the job's state is the holder's. Every write of the holder carries its fence, so an attempt that lost its lease
    changes nothing: not the state, not what the job leaves, and its error does not fail the job.
    """
    _, store, storage, states = _open()
    lease = Lease(store.liveness, job_id, part, _owner(task), LEASE_TTL_S)
    if not lease.acquire():
        log.info("job %s is running on another worker; checking again later", job_id)
        raise _later(task, LEASE_TTL_S)
    fence = lease.held
    try:
        committed = store.get_field(job_id, JobField.COMMIT)
        if committed is not None:
            states.succeeded(job_id, finish(committed))
            return
        states.started(job_id, fence)
        attempt = Attempt(fence.epoch, lease.valid, lambda payload: store.commit(job_id, payload, fence))
        states.succeeded(job_id, run(lease, attempt))
    except JobStopped as exc:
        if exc.reason == StopReason.PREEMPTED:
            # what it needs to go on is written (a training checkpoint): the next worker to take the message resumes
            log.warning("job %s: worker shutting down; %s (%s)", job_id, preempted[0], exc)
            _hand_back(states, job_id, preempted[1], fence)
        if exc.reason == StopReason.LEASE_LOST:
            # Another attempt may hold the job now: this one writes nothing more, and comes back as a new message,
            # which waits for the lease, skips the job once it has ended, or (the lease only lapsed while Redis was
            # out of reach, and nobody took it) resumes it at once.
            log.warning("job %s: lost its lease; stopping here and retrying (%s)", job_id, exc)
            raise _later(task, 1) from None
        _cancelled(states, job_id, str(exc))
    except StorageUnavailable as exc:  # a checkpoint, or a stored reference classifier, makes the retry cheap
        raise _later(task, _backoff(task), exc, TASK_RETRIES, states, fence) from None
    except (Retry, Ignore, Reject):
        raise
    except Exception as exc:
        if not states.failed(job_id, exc, fence):
            log.warning("job %s: attempt failed after losing its lease (%s); the job is another attempt's", job_id, exc)
            raise Ignore() from None
        raise
    finally:
        lease.release()


def _begin(task: Task, spec_type: type[JobSpec], spec: Any) -> tuple[JobSpec, Settings, JobStore, Storage, JobStates]:
    """A job's first task begins: SPEC parsed as SPEC_TYPE (a SpecError fails the job with a one-line reason;
    retrying cannot fix it) and held to the task's id. It stops here if the job has its final state (a redelivered
    message of an ended job) or was cancelled while it waited in the queue."""
    parsed = spec_type.from_dict(spec)
    _check_task_id(task, parsed.job_id)
    settings, store, storage, states = _open()
    _note_redelivery(task, parsed.job_id)
    if states.ended(parsed.job_id):
        raise Ignore()
    if store.cancel_requested(parsed.job_id):
        _cancelled(states, parsed.job_id, f"job {parsed.job_id} was cancelled before it started")
    return parsed, settings, store, storage, states


def _stop_reason(store: JobStore, job_id: str, lease: Lease | None = None) -> StopReason | None:
    if PREEMPTED.is_set():
        return StopReason.PREEMPTED
    if lease is not None and lease.lost:
        return StopReason.LEASE_LOST
    return StopReason.CANCELLED if _cancel_requested(store, job_id) else None


def _hand_back(states: JobStates, job_id: str, reason: str, fence: Fence | None = None) -> NoReturn:
    """Put the job's message back on its queue, for the next worker to take."""
    states.handed_back(job_id, reason, fence)
    raise Reject(reason, requeue=True)


def _report(states: JobStates, job_id: str, progress: Progress, fence: Fence | None = None) -> None:
    try:
        states.progress(job_id, progress, fence)
    except redis.RedisError as exc:  # a progress report lost to a Redis outage is not worth the job
        log.warning("progress report skipped: Redis unreachable (%s)", type(exc).__name__)


def _report_training(states: JobStates, job_id: str, info: TrainProgress, fence: Fence) -> None:
    """Report progress and keep its vital signs in the job's history, which the dashboard draws its curves from."""
    _report(states, job_id, info, fence)
    try:
        record = {name: getattr(info, name) for name in HISTORY_FIELDS}
        if info.quality is not None and info.quality.step == info.step:  # the step the curve was measured at
            record["quality"] = asdict(info.quality)
        states.store.append_history(job_id, record, fence)
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


def _cancelled(states: JobStates, job_id: str, reason: str) -> NoReturn:
    log.info("%s", reason)
    states.cancelled(job_id, reason)
    raise Ignore()


def _dispatcher(spec: GenerateSpec) -> Callable[[int], None]:
    spec_data = spec.to_dict()

    def dispatch(index: int) -> None:
        app.send_task(
            GENERATE_SHARD_TASK, kwargs={"spec": spec_data, "shard": index, "queued_at": time.time()},
            task_id=shard_task_id(spec.job_id, index, uuid.uuid4().hex[:6]), queue=GENERATE_QUEUE,
        )

    return dispatch


@app.task(name=GENERATE_TASK, bind=True, ignore_result=True)
@_job_task
def generate(self: Task, spec: Any) -> None:
    """Plan a generation job: check its model, dispatch its shard tasks. The finaliser ends the job."""
    parsed, _, store, storage, states = _begin(self, GenerateSpec, spec)
    check_model(storage, parsed.model)  # ModelNotFound fails the job
    if store.get_field(parsed.job_id, JobField.STARTED_AT) is None:
        states.progress(parsed.job_id)  # before any shard runs: the shard ledger is its progress from then on
    total = plan_job(parsed, store, _dispatcher(parsed))
    log.info("job %s: dispatched %d shard tasks", parsed.job_id, total)


@app.task(name=GENERATE_SHARD_TASK, bind=True, ignore_result=True, max_retries=None)
def generate_shard(self: Task, spec: Any, shard: int, queued_at: float | None = None) -> None:
    parsed = GenerateSpec.from_dict(spec)
    _, store, storage, states = _open()
    _note_redelivery(self, parsed.job_id)
    outcome = store.get_field(parsed.job_id, JobField.OUTCOME)
    if outcome:
        log.info("job %s has ended (%s): shard %d is left as it is", parsed.job_id, outcome, shard)
        return
    if store.cancel_requested(parsed.job_id):
        states.cancelled(parsed.job_id, f"job {parsed.job_id} was cancelled; its shards are not listed")
        return
    try:
        _, last = run_shard(parsed, shard, storage, store, GENERATORS, pick_device(), _owner(self), queued_at)
    except ShardBusy as exc:
        # the other worker finishes it, or dies and its lease lapses: then this retry makes the shard
        raise _later(self, 5, exc) from None
    except Exception as exc:
        raise _retry_or_fail(self, states, parsed.job_id, exc) from None
    if last and store.set_once(parsed.job_id, JobField.FINALIZE_SENT, self.request.id):
        app.send_task(GENERATE_FINALIZE_TASK, kwargs={"spec": spec}, task_id=finalize_task_id(parsed.job_id, uuid.uuid4().hex[:6]),
                      queue=GENERATE_QUEUE)


@app.task(name=GENERATE_FINALIZE_TASK, bind=True, ignore_result=True)
def generate_finalize(self: Task, spec: Any) -> None:
    parsed = GenerateSpec.from_dict(spec)
    _, store, storage, states = _open()
    if states.ended(parsed.job_id):
        return
    if store.cancel_requested(parsed.job_id):
        states.cancelled(parsed.job_id, f"job {parsed.job_id} was cancelled before its manifest")
        return
    try:
        result = finalize_job(parsed, storage, store, _dispatcher(parsed))
    except Exception as exc:
        raise _retry_or_fail(self, states, parsed.job_id, exc) from None
    if result is not None:
        states.succeeded(parsed.job_id, result)


@app.task(name=SWEEP_TASK, bind=True, ignore_result=True, max_retries=None)
@_job_task
def sweep(self: Task, spec: Any) -> None:
    """One look at a sweep's trials (worker.sweep.advance), under the sweep's lease; until the sweep ends, the task
    comes back in poll_s. Between looks no worker is held: a message waits, and reconciliation sees it."""
    parsed = SweepSpec.from_dict(spec)
    _check_task_id(self, parsed.job_id)
    _, store, storage, states = _open()
    if states.ended(parsed.job_id):
        raise Ignore()
    if store.cancel_requested(parsed.job_id):
        cancel_sweep(states, parsed, f"sweep {parsed.job_id} was cancelled")
        raise Ignore()
    lease = Lease(store.liveness, parsed.job_id, "sweep", _owner(self), LEASE_TTL_S)
    if not lease.acquire():
        raise _later(self, parsed.poll_s)  # another worker is looking now
    fence = lease.held
    kind = KINDS["sweep"]
    try:
        committed = store.get_field(parsed.job_id, JobField.COMMIT)
        if committed is not None:  # an earlier look wrote the report and died before the sweep's final state
            states.succeeded(parsed.job_id, kind.decode_result(publish_report(storage, parsed.job_id, committed), parsed.job_id))
            return
        record = store.get(parsed.job_id)
        attempt = Attempt(fence.epoch, lease.valid, lambda payload: store.commit(parsed.job_id, payload, fence))
        outcome = advance(parsed, states, storage, lambda job: KINDS[job.kind].send(app, job.to_dict()), attempt,
                          record.submitted_at if record is not None else time.time())
        if isinstance(outcome, SweepResult):
            states.succeeded(parsed.job_id, outcome)
            return
        states.progress(parsed.job_id, outcome, fence)
    except JobStopped:  # its lease lapsed while it wrote the report: the next look finishes it
        pass
    except StorageUnavailable as exc:
        raise _later(self, _backoff(self), exc) from None
    finally:
        lease.release()
    raise _later(self, parsed.poll_s)


@app.task(name=EVALUATE_TASK, bind=True, ignore_result=True)
@_job_task
def evaluate(self: Task, spec: Any) -> None:
    """A quality or utility evaluation; its report lands under reports/<job>/."""
    parsed, settings, store, storage, states = _begin(self, EvaluateSpec, spec)
    evaluation = run_quality if parsed.mode == "quality" else run_utility
    kind = kind_of("evaluate", spec)

    def run(lease: Lease, attempt: Attempt) -> Result:
        return evaluation(parsed, settings, storage, lambda info: _report(states, parsed.job_id, info, lease.held),
                          lambda: _stop_reason(store, parsed.job_id, lease), attempt)

    # a utility study's GAN has its checkpoint and the reference classifier is stored: the next worker resumes there
    _run_leased(self, parsed.job_id, "evaluate", run,
                lambda committed: kind.decode_result(publish_report(storage, parsed.job_id, committed), parsed.job_id),
                ("handed the evaluation back", "worker shutting down: handed to another worker"))
