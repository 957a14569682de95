"""Job records and job status.

A job is one Celery task whose task id is the job id. Celery's result backend holds its state and progress
(``PROGRESS`` meta while it runs, the result on ``SUCCESS``); this module adds what Celery does not keep:
a record of every submitted job (for ``augment list``), a cancellation flag the worker polls, the ledger of
a generation job's finished shards (what its manifest is built from), one-shot flags, and leases: expiring,
heartbeat-renewed claims that keep two workers from running the same training job or shard at once.
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

    def record_shard(self, job_id: str, index: int, record: dict[str, Any]) -> int:
        """Record shard INDEX as complete (the first record stands); returns how many shards are recorded."""
        ...

    def shard_records(self, job_id: str) -> dict[int, dict[str, Any]]: ...
    def shard_record(self, job_id: str, index: int) -> dict[str, Any] | None: ...

    def shard_totals(self, job_id: str) -> tuple[int, int]:
        """(shards, images) recorded so far, kept as counters so that polling a big job stays cheap."""
        ...
    def forget_shard(self, job_id: str, index: int) -> None: ...

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        """Set the job's field NAME unless it is set; True for the one caller that set it."""
        ...

    def get_field(self, job_id: str, name: str) -> str | None: ...
    def set_field(self, job_id: str, name: str, value: str) -> None: ...
    def clear_field(self, job_id: str, name: str) -> None: ...
    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool: ...

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend the lease if OWNER still holds it; False when it expired or another owner took it."""
        ...

    def release_lease(self, name: str, owner: str) -> None: ...

    def append_history(self, job_id: str, record: dict[str, Any]) -> None:
        """Add one training progress record (step, loss_d, loss_g, d_x, d_g_z) to the job's history."""
        ...

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's progress records in the order they came; a resumed job repeats the steps after its checkpoint."""
        ...


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

    def _shards_key(self, job_id: str) -> str:
        return f"{KEY_PREFIX}:job:{job_id}:shards"

    def record_shard(self, job_id: str, index: int, record: dict[str, Any]) -> int:
        keys = (self._shards_key(job_id), self._key(job_id))
        return int(self.client.eval(_RECORD_SHARD, 2, *keys, str(index), json.dumps(record, sort_keys=True), int(record["count"])))

    def shard_records(self, job_id: str) -> dict[int, dict[str, Any]]:
        raw: dict[str, str] = self.client.hgetall(self._shards_key(job_id))  # type: ignore[assignment]
        return {int(index): json.loads(record) for index, record in raw.items()}

    def shard_record(self, job_id: str, index: int) -> dict[str, Any] | None:
        record: str | None = self.client.hget(self._shards_key(job_id), str(index))  # type: ignore[assignment]
        return None if record is None else json.loads(record)

    def shard_totals(self, job_id: str) -> tuple[int, int]:
        with self.client.pipeline() as pipe:
            pipe.hlen(self._shards_key(job_id))
            pipe.hget(self._key(job_id), "images_done")
            shards, images = pipe.execute()
        return int(shards), int(images or 0)

    def forget_shard(self, job_id: str, index: int) -> None:
        self.client.eval(_FORGET_SHARD, 2, self._shards_key(job_id), self._key(job_id), str(index))

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        return bool(self.client.hsetnx(self._key(job_id), name, value))

    def get_field(self, job_id: str, name: str) -> str | None:
        return self.client.hget(self._key(job_id), name)  # type: ignore[return-value]

    def set_field(self, job_id: str, name: str, value: str) -> None:
        self.client.hset(self._key(job_id), name, value)

    def clear_field(self, job_id: str, name: str) -> None:
        self.client.hdel(self._key(job_id), name)

    def _lease_key(self, name: str) -> str:
        return f"{KEY_PREFIX}:lease:{name}"

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(self.client.set(self._lease_key(name), owner, nx=True, px=int(ttl_s * 1000)))

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(self.client.eval(_RENEW_IF_OWNER, 1, self._lease_key(name), owner, int(ttl_s * 1000)))

    def release_lease(self, name: str, owner: str) -> None:
        self.client.eval(_DELETE_IF_OWNER, 1, self._lease_key(name), owner)

    def _history_key(self, job_id: str) -> str:
        return f"{KEY_PREFIX}:job:{job_id}:history"

    def append_history(self, job_id: str, record: dict[str, Any]) -> None:
        self.client.rpush(self._history_key(job_id), json.dumps(record))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        raw: list[str] = self.client.lrange(self._history_key(job_id), 0, -1)  # type: ignore[assignment]
        return [json.loads(record) for record in raw]


# A shard's record and the job's image counter change together, in one step on the server.
_RECORD_SHARD = """
if redis.call('hsetnx', KEYS[1], ARGV[1], ARGV[2]) == 1 then redis.call('hincrby', KEYS[2], 'images_done', ARGV[3]) end
return redis.call('hlen', KEYS[1])
"""
_FORGET_SHARD = """
local record = redis.call('hget', KEYS[1], ARGV[1])
if record then
  redis.call('hdel', KEYS[1], ARGV[1])
  redis.call('hincrby', KEYS[2], 'images_done', -cjson.decode(record)['count'])
end
return 0
"""
# Compare-and-act in one step on the server, so a lease that expired and was taken over is never touched.
_RENEW_IF_OWNER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_DELETE_IF_OWNER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class MemoryJobStore:
    """The same records in process memory, for the embedded demo (broker ``memory://``)."""

    def __init__(self) -> None:
        self._records: dict[str, JobRecord] = {}
        self._cancelled: set[str] = set()
        self._shards: dict[str, dict[int, dict[str, Any]]] = {}
        self._fields: dict[tuple[str, str], str] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, expiry on the monotonic clock)
        self._history: dict[str, list[dict[str, Any]]] = {}
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

    def record_shard(self, job_id: str, index: int, record: dict[str, Any]) -> int:
        with self._lock:
            shards = self._shards.setdefault(job_id, {})
            shards.setdefault(index, dict(record))
            return len(shards)

    def shard_records(self, job_id: str) -> dict[int, dict[str, Any]]:
        with self._lock:
            return {index: dict(record) for index, record in self._shards.get(job_id, {}).items()}

    def shard_record(self, job_id: str, index: int) -> dict[str, Any] | None:
        with self._lock:
            record = self._shards.get(job_id, {}).get(index)
            return None if record is None else dict(record)

    def shard_totals(self, job_id: str) -> tuple[int, int]:
        with self._lock:
            shards = self._shards.get(job_id, {})
            return len(shards), sum(int(record["count"]) for record in shards.values())

    def forget_shard(self, job_id: str, index: int) -> None:
        with self._lock:
            self._shards.get(job_id, {}).pop(index, None)

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        with self._lock:
            if (job_id, name) in self._fields:
                return False
            self._fields[job_id, name] = value
            return True

    def get_field(self, job_id: str, name: str) -> str | None:
        return self._fields.get((job_id, name))

    def set_field(self, job_id: str, name: str, value: str) -> None:
        with self._lock:
            self._fields[job_id, name] = value

    def clear_field(self, job_id: str, name: str) -> None:
        with self._lock:
            self._fields.pop((job_id, name), None)

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        with self._lock:
            holder = self._leases.get(name)
            if holder is not None and holder[1] > time.monotonic():
                return False
            self._leases[name] = (owner, time.monotonic() + ttl_s)
            return True

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        with self._lock:
            holder = self._leases.get(name)
            if holder is None or holder[0] != owner or holder[1] <= time.monotonic():
                return False
            self._leases[name] = (owner, time.monotonic() + ttl_s)
            return True

    def release_lease(self, name: str, owner: str) -> None:
        with self._lock:
            if self._leases.get(name, ("", 0.0))[0] == owner:
                del self._leases[name]

    def append_history(self, job_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._history.setdefault(job_id, []).append(dict(record))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._history.get(job_id, [])]


class Lease:
    """An exclusive, expiring claim on NAME, renewed by a heartbeat thread for as long as it is held.

    A worker that dies stops renewing, so the claim lapses after ``ttl_s`` and another worker can take over;
    a live worker keeps it however long its job runs. ``lost`` turns true if a renewal finds the claim gone
    (e.g. Redis lost it), so the holder can stop instead of running beside a second owner.
    """

    def __init__(self, store: JobStore, name: str, owner: str, ttl_s: float = 30.0):
        self.store, self.name, self.owner, self.ttl_s = store, name, owner, ttl_s
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.store.acquire_lease(self.name, self.owner, self.ttl_s):
            return False
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.store.renew_lease(self.name, self.owner, self.ttl_s):
                    self.lost = True
                    return
            except redis.RedisError:
                continue  # Redis restarting: keep trying until the lease would have lapsed anyway

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.release_lease(self.name, self.owner)
        except redis.RedisError:
            pass  # it expires by itself


_MEMORY_STORE = MemoryJobStore()


def open_job_store(settings: Settings, patient: bool = False) -> JobStore:
    """The job store of SETTINGS' broker; PATIENT (workers) rides out a Redis restart, see ``redis_client``."""
    if settings.broker_url.startswith("memory"):
        return _MEMORY_STORE
    return RedisJobStore(redis_client(settings, patient))


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
