"""A job's state, owned by this module: every transition is made here, as rq's ``Job.set_status`` makes them, and
``augment status``, ``watch`` and the dashboard read it back here. Celery carries the messages only: its tasks keep
no results of their own (``ignore_result``), so nothing else writes a job's state.

The record is kept under Celery's result-backend key of the job id, in the backend's format and state names, so that
what older workers wrote still reads:

=============  ============  ========================================================
transition     state         info
=============  ============  ========================================================
queued         PENDING       nothing (no record yet), or why the job went back
running        STARTED       then PROGRESS with the kind's progress record
retrying       RETRY         why (an error)
handed back    PENDING       why (a worker shutting down); the next worker resumes it
succeeded      SUCCESS       the kind's result (shared.contracts)
failed         FAILURE       the error
cancelled      CANCELLED     why
=============  ============  ========================================================

A final state (succeeded, failed, cancelled) is set once, through the job's ``outcome`` field, in the same script on the
Redis server as the record: the first one stands, and a late or duplicated task (a redelivered message, the second of
two shard tasks, a request the kernel retransmitted after a partition) cannot overwrite it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from shared.contracts import Result
from shared.keys import JobField
from shared.liveness import Fence
from shared.progress import Progress, TrainProgress, progress_to_dict
from shared.records import JobRecord, JobStore, StateWrite
from shared.sweeps import SweepSpec


class JobState(str, Enum):
    """The state of a job, in the names of Celery's result backend (plus ``CANCELLED``, this project's own).

    A ``str`` subclass, so a state read back as a plain string compares equal to its member.
    """

    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.CANCELLED})
# The bare names, typed as the plain strings Celery hands back, for callers that compare a state with them.
PENDING: str = JobState.PENDING
STARTED: str = JobState.STARTED
PROGRESS: str = JobState.PROGRESS
RETRY: str = JobState.RETRY
SUCCESS: str = JobState.SUCCESS
FAILURE: str = JobState.FAILURE
CANCELLED: str = JobState.CANCELLED


class StopReason(str, Enum):
    """Why a running job stops before its end."""

    CANCELLED = "cancelled"  # `augment cancel`, or the dashboard's cancel
    PREEMPTED = "preempted"  # its worker is shutting down (SIGTERM: docker stop, a spot notice): handed back
    LEASE_LOST = "lease lost"  # Redis lost its lease (a long outage): another delivery may hold the job now

    def __str__(self) -> str:
        return self.value


class JobStopped(Exception):
    """Raised inside a running job that stops before its end; REASON says why, and what happens next."""

    def __init__(self, reason: StopReason, message: str):
        super().__init__(f"{message} ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class JobStates:
    """The states of the jobs of one broker. BACKEND is the Celery app's result backend: its key and encoding are
    the record's, so that Celery's own readers still read it; STORE makes every write, each in one fenced step.

    A transition that passes a FENCE (the lease of the training attempt that makes it) lands only while that lease
    is held: an attempt cut off by a partition, whose lease lapsed and was taken, changes nothing when it comes back.
    """

    backend: Any
    store: JobStore

    # ---- transitions ----

    def started(self, job_id: str, fence: Fence | None = None) -> bool:
        return self._write(job_id, JobState.STARTED, {}, fence=fence)

    def progress(self, job_id: str, progress: Progress | None = None, fence: Fence | None = None) -> bool:
        """A running job's latest progress record (None: running, no record yet). A training step behind the
        furthest one reported (a takeover resuming from its checkpoint) is not shown: progress never goes back."""
        step = progress.step if isinstance(progress, TrainProgress) else None
        return self._write(job_id, JobState.PROGRESS, {} if progress is None else progress_to_dict(progress), fence=fence,
                           step=step)

    def retrying(self, job_id: str, reason: BaseException, fence: Fence | None = None) -> bool:
        """Tried again later, for REASON (the backend keeps a retry's reason as an error, as a failure's)."""
        return self._write(job_id, JobState.RETRY, self.backend.prepare_exception(reason), fence=fence)

    def handed_back(self, job_id: str, reason: str, fence: Fence | None = None) -> bool:
        """Queued again: the job's message went back to its queue and the next worker to take it resumes it."""
        return self._write(job_id, JobState.PENDING, {"reason": reason}, fence=fence)

    def succeeded(self, job_id: str, result: Result) -> bool:
        return self._write(job_id, JobState.SUCCESS, result.to_dict(), final=True)

    def failed(self, job_id: str, error: BaseException, fence: Fence | None = None) -> bool:
        return self._write(job_id, JobState.FAILURE, self.backend.prepare_exception(error), final=True, fence=fence)

    def cancelled(self, job_id: str, reason: str) -> bool:
        return self._write(job_id, JobState.CANCELLED, {"reason": reason}, final=True)

    def cancel(self, job_id: str, reason: str = "cancelled before it started") -> str:
        """Ask a job to stop: a running one stops within seconds; one no worker holds now (queued, or handed back) is
        cancelled at once, for REASON, and a worker that takes its message later skips it. The state after the ask."""
        self.store.request_cancel(job_id)
        state = self.read(job_id)[0]
        if state != JobState.PENDING:
            return state
        return CANCELLED if self.cancelled(job_id, reason) else self.read(job_id)[0]  # or it ended on its own just now

    def _write(self, job_id: str, state: JobState, result: Any, final: bool = False, fence: Fence | None = None,
               step: int | None = None) -> bool:
        """Write STATE unless the job has its final state (a job cancelled while it waited, whose worker took it a
        moment later, stays cancelled), FENCE lost its lease, or STEP is behind; whether it was written."""
        meta = self.backend._get_result_meta(result=result, state=str(state), traceback=None, request=None)
        meta["task_id"] = job_id
        write = StateWrite(key=self._key(job_id), payload=self.backend.encode(meta), ttl_s=int(self.backend.expires or 0) or _KEPT_S,
                           final=str(state) if final else None, fence=fence, step=step)
        return self.store.put_state(job_id, write)

    def _key(self, job_id: str) -> str:
        key = self.backend.get_key_for_task(job_id)
        return key.decode() if isinstance(key, bytes) else str(key)

    # ---- reading ----

    def ended(self, job_id: str) -> bool:
        """Whether the job has its final state (its remaining tasks stop)."""
        return self.store.get_field(job_id, JobField.OUTCOME) is not None

    def read(self, job_id: str) -> tuple[str, Any]:
        """The job's state and its info: a progress record or reason (dict), a result (dict) or an error."""
        payload = self.store.get_state(job_id, self._key(job_id))
        if payload is None:
            return JobState.PENDING, None
        meta = self.backend.decode_result(payload)
        return str(meta["status"]), meta.get("result")


def cancel_sweep(states: JobStates, spec: SweepSpec, reason: str) -> str:
    """Cancel sweep SPEC, and every trial job it has submitted; the sweep's state after it. A trial its scheduler
    submits a moment later finds the sweep's flag and is cancelled there (worker.sweep), so none escapes."""
    states.store.request_cancel(spec.job_id)
    for job_id in spec.trial_job_ids():
        if states.store.get(job_id) is not None:
            states.cancel(job_id, f"its sweep {spec.job_id} was cancelled")
    states.cancelled(spec.job_id, reason)
    return states.read(spec.job_id)[0]


_KEPT_S = 30 * 24 * 3600  # a state record outlives its job by this much where the backend sets no expiry


def describe_status(record: JobRecord | None, state: str, info: Any) -> dict[str, Any]:
    """Merge a job record with its state into the dict that ``augment status --json`` prints."""
    status: dict[str, Any] = {"state": state}
    if record is not None:
        status.update(asdict(record))
    if state == JobState.FAILURE:
        status["error"] = f"{type(info).__name__}: {info}" if isinstance(info, BaseException) else str(info)
    elif isinstance(info, dict):
        status["result" if state == JobState.SUCCESS else "progress"] = info
    return status
