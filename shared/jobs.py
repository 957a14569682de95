"""Job records and job status.

A job is one Celery task whose task id is the job id. Celery's result backend holds its state and progress
(``PROGRESS`` meta while it runs, the result on ``SUCCESS``); this module adds what Celery does not keep:
a record of every submitted job (for ``augment list``) and a cancellation flag the worker polls.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis

from shared.broker import redis_client
from shared.settings import Settings

PENDING, STARTED, PROGRESS, SUCCESS, FAILURE, CANCELLED, REVOKED = (
    "PENDING", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "CANCELLED", "REVOKED",
)
TERMINAL_STATES = frozenset({SUCCESS, FAILURE, CANCELLED, REVOKED})
KEY_PREFIX = "augment"


class JobCancelled(Exception):
    """Raised inside a running job when its cancellation was requested."""


def new_job_id(kind: str) -> str:
    # a kind letter makes ids readable in listings and logs: t-..., g-...
    return f"{kind[0]}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    kind: str
    spec: dict[str, Any]
    submitted_at: float


class JobStore(Protocol):
    def add(self, record: JobRecord) -> None: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def recent(self, limit: int = 50) -> list[JobRecord]: ...
    def request_cancel(self, job_id: str) -> None: ...
    def cancel_requested(self, job_id: str) -> bool: ...


class RedisJobStore:
    """Job records in Redis: a hash per job and a sorted set of ids by submission time."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def _key(self, job_id: str) -> str:
        return f"{KEY_PREFIX}:job:{job_id}"

    def add(self, record: JobRecord) -> None:
        payload: dict[bytes | bytearray | memoryview | str | int | float, str] = {
            "kind": record.kind, "spec": json.dumps(record.spec), "submitted_at": repr(record.submitted_at),
        }
        with self.client.pipeline() as pipe:
            pipe.hset(self._key(record.job_id), mapping=payload)
            pipe.zadd(f"{KEY_PREFIX}:jobs", {record.job_id: record.submitted_at})
            pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        data: dict[str, str] = self.client.hgetall(self._key(job_id))  # type: ignore[assignment]
        if not data or "kind" not in data:
            return None
        return JobRecord(job_id, data["kind"], json.loads(data["spec"]), float(data["submitted_at"]))

    def recent(self, limit: int = 50) -> list[JobRecord]:
        ids: list[str] = self.client.zrevrange(f"{KEY_PREFIX}:jobs", 0, limit - 1)  # type: ignore[assignment]
        return [record for record in map(self.get, ids) if record is not None]

    def request_cancel(self, job_id: str) -> None:
        self.client.hset(self._key(job_id), "cancel_requested", "1")

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.hget(self._key(job_id), "cancel_requested"))


class MemoryJobStore:
    """The same records in process memory, for the embedded demo (broker ``memory://``)."""

    def __init__(self) -> None:
        self._records: dict[str, JobRecord] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def add(self, record: JobRecord) -> None:
        with self._lock:
            self._records[record.job_id] = record

    def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def recent(self, limit: int = 50) -> list[JobRecord]:
        return sorted(self._records.values(), key=lambda record: record.submitted_at, reverse=True)[:limit]

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancelled


_MEMORY_STORE = MemoryJobStore()


def open_job_store(settings: Settings) -> JobStore:
    if settings.broker_url.startswith("memory"):
        return _MEMORY_STORE
    return RedisJobStore(redis_client(settings))


def make_record(job_id: str, kind: str, spec: dict[str, Any]) -> JobRecord:
    return JobRecord(job_id=job_id, kind=kind, spec=spec, submitted_at=time.time())


def describe_status(record: JobRecord | None, state: str, info: Any) -> dict[str, Any]:
    """Merge a job record with its Celery state into the dict that ``augment status --json`` prints."""
    status: dict[str, Any] = {"state": state}
    if record is not None:
        status.update(asdict(record))
    if state == FAILURE:
        status["error"] = f"{type(info).__name__}: {info}" if isinstance(info, BaseException) else str(info)
    elif isinstance(info, dict):
        status["result" if state == SUCCESS else "progress"] = info
    return status
