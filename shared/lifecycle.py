"""A job's state, owned by this module: every transition is made here, as rq's ``Job.set_status`` makes them, and
``augment status``, ``watch`` and the dashboard read it back here. Celery carries the messages only: its tasks keep
no results of their own (``ignore_result``), so nothing else writes a job's state.

The record is kept in Celery's result backend under the job id, in the state names the backend uses, so that what
older workers wrote still reads:

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

A final state (succeeded, failed, cancelled) is set once, through the job's ``outcome`` field: the first one stands,
and a late or duplicated task (a redelivered message, the second of two shard tasks) cannot overwrite it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from shared.contracts import Result
from shared.jobs import JobField, JobState, JobStore
from shared.progress import Progress, progress_to_dict


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
    """The states of the jobs of one broker. BACKEND is the Celery app's result backend, where the record lies."""

    backend: Any
    store: JobStore

    # ---- transitions ----

    def started(self, job_id: str) -> None:
        self._going_on(job_id, JobState.STARTED, {})

    def progress(self, job_id: str, progress: Progress | None = None) -> None:
        """A running job's latest progress record (None: running, no record yet)."""
        self._going_on(job_id, JobState.PROGRESS, {} if progress is None else progress_to_dict(progress))

    def retrying(self, job_id: str, reason: BaseException) -> None:
        """Tried again later, for REASON (the backend keeps a retry's reason as an error, as a failure's)."""
        if not self.ended(job_id):
            self.backend.mark_as_retry(job_id, reason)

    def handed_back(self, job_id: str, reason: str) -> None:
        """Queued again: the job's message went back to its queue and the next worker to take it resumes it."""
        self._going_on(job_id, JobState.PENDING, {"reason": reason})

    def _going_on(self, job_id: str, state: JobState, info: dict[str, Any]) -> None:
        """A state on the way, unless the job has ended: a job cancelled while it waited, whose worker took it a
        moment later, stays cancelled (that worker stops at its next look at the cancel flag)."""
        if not self.ended(job_id):
            self.backend.store_result(job_id, info, state)

    def succeeded(self, job_id: str, result: Result) -> bool:
        return self._end(job_id, JobState.SUCCESS, result.to_dict())

    def failed(self, job_id: str, error: BaseException) -> bool:
        if not self.store.set_once(job_id, JobField.OUTCOME, JobState.FAILURE):
            return False
        self.backend.mark_as_failure(job_id, error)
        return True

    def cancelled(self, job_id: str, reason: str) -> bool:
        return self._end(job_id, JobState.CANCELLED, {"reason": reason})

    def _end(self, job_id: str, state: JobState, info: dict[str, Any]) -> bool:
        """Give JOB_ID its final STATE unless it has one; returns whether this call did."""
        if not self.store.set_once(job_id, JobField.OUTCOME, state):
            return False
        self.backend.store_result(job_id, info, state)
        return True

    # ---- reading ----

    def ended(self, job_id: str) -> bool:
        """Whether the job has its final state (its remaining tasks stop)."""
        return self.store.get_field(job_id, JobField.OUTCOME) is not None

    def read(self, job_id: str) -> tuple[str, Any]:
        """The job's state and its info: a progress record or reason (dict), a result (dict) or an error."""
        meta = self.backend.get_task_meta(job_id)
        return str(meta["status"]), meta.get("result")
