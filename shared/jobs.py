"""Jobs: the states a job goes through, its record in Redis, and the keys everything about a job lives under.

A job is one Celery task whose task id is the job id. Its state and progress lie in Celery's result backend,
written by :mod:`shared.lifecycle` alone; this module adds what Celery does not keep:

- **records**: every submitted job (for ``augment list``), its cancellation flag, and one-shot fields
  (:class:`JobField`) that the tasks of a job coordinate through;
- **the shard ledger**: a generation job's finished shards, what its manifest is built from;
- **leases and heartbeats**: the store side of :class:`shared.leases.Lease`, expiring claims that keep two
  workers from running the same training job or shard at once, and the last heartbeat of each running part,
  which tells a live worker from one that stopped (``augment status`` shows the latter).

Every Redis key is built by :class:`Keys`, and every state and field is named once, here.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Protocol

import msgspec
import redis

from shared.broker import redis_client
from shared.settings import Settings


class JobState(str, Enum):
    """The state of a job, as Celery's result backend stores it (plus ``CANCELLED``, this project's own).

    A ``str`` subclass, so a state read back from Celery (a plain string) compares equal to its member.
    """

    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"
    REVOKED = "REVOKED"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.CANCELLED, JobState.REVOKED})
# The bare names, typed as the plain strings Celery hands back, for callers that compare a state with them.
PENDING: str = JobState.PENDING
STARTED: str = JobState.STARTED
PROGRESS: str = JobState.PROGRESS
SUCCESS: str = JobState.SUCCESS
FAILURE: str = JobState.FAILURE
CANCELLED: str = JobState.CANCELLED
REVOKED: str = JobState.REVOKED


class JobField(str, Enum):
    """The fields of a job's record (one Redis hash per job, see :meth:`Keys.job`)."""

    KIND = "kind"  # train, generate or evaluate
    SPEC = "spec"  # the validated spec, as JSON
    SUBMITTED_AT = "submitted_at"
    CANCEL_REQUESTED = "cancel_requested"
    # A generation job's final state, set once by whichever of its tasks ends it; later tasks see it and stop.
    OUTCOME = "outcome"
    STARTED_AT = "started_at"  # when a generation job's planner first ran (its images/s is measured from here)
    DISPATCHED = "dispatched"  # how many shard tasks the planner has sent, so a rerun planner goes on from there
    FINALIZE_SENT = "finalize_sent"  # the finaliser was dispatched (once)
    IMAGES_DONE = "images_done"  # images in the shard ledger, kept beside it so progress is one read

    def __str__(self) -> str:
        return self.value


class Keys:
    """Every Redis key of the job system, built in one place."""

    PREFIX = "augment"

    @staticmethod
    def job(job_id: str) -> str:
        """The hash of a job's record (fields: :class:`JobField`)."""
        return f"{Keys.PREFIX}:job:{job_id}"

    @staticmethod
    def jobs() -> str:
        """The sorted set of every job id, scored by submission time."""
        return f"{Keys.PREFIX}:jobs"

    @staticmethod
    def shards(job_id: str) -> str:
        """The shard ledger of a generation job: shard index -> its record (JSON)."""
        return f"{Keys.PREFIX}:job:{job_id}:shards"

    @staticmethod
    def history(job_id: str) -> str:
        """A training job's progress records (JSON), in the order they came: the dashboard's curves."""
        return f"{Keys.PREFIX}:job:{job_id}:history"

    @staticmethod
    def lease(name: str) -> str:
        """A lease: its value is the owner, its expiry the lapse time."""
        return f"{Keys.PREFIX}:lease:{name}"

    @staticmethod
    def beats(job_id: str) -> str:
        """The last heartbeat of each running part of a job: part -> {owner, at, every_s} (JSON)."""
        return f"{Keys.PREFIX}:job:{job_id}:beats"


def new_job_id(kind: str) -> str:
    """A fresh job id; a kind letter makes ids readable in listings and logs: t-..., g-..., e-..."""
    return f"{kind[0]}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Beat:
    """The last heartbeat of a running part of a job: who runs it, when it last beat, how often it beats."""

    owner: str
    at: float  # time.time() of the beat
    every_s: float


class ShardRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A finished shard in a generation job's ledger: what its manifest lists, and who made it when."""

    name: str
    count: int
    size: int
    sha256: str
    class_counts: dict[str, int]  # class index as a string -> images
    queued_at: float | None = None  # time.time() of its task's dispatch, start and end
    started_at: float | None = None
    finished_at: float | None = None
    worker: str = ""  # the worker's hostname


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    kind: str
    spec: dict[str, Any]
    submitted_at: float


def make_record(job_id: str, kind: str, spec: dict[str, Any]) -> JobRecord:
    """The record of a job submitted now."""
    return JobRecord(job_id=job_id, kind=kind, spec=spec, submitted_at=time.time())


class JobStore(Protocol):
    """Job records, the shard ledger and leases; in Redis (:class:`RedisJobStore`) or in memory (the demo)."""

    # records
    def add(self, record: JobRecord) -> None:
        """Record a submitted job."""
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """The record of JOB_ID; None for an unknown job."""
        ...

    def recent(self, limit: int = 50) -> list[JobRecord]:
        """The LIMIT most recently submitted jobs, newest first."""
        ...

    def request_cancel(self, job_id: str) -> None:
        """Flag the job for cancellation; its tasks check the flag and stop."""
        ...

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job's cancellation was requested."""
        ...

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        """Set the job's field NAME unless it is set; True for the one caller that set it."""
        ...

    def get_field(self, job_id: str, name: str) -> str | None:
        """The job's field NAME, None when unset."""
        ...

    def set_field(self, job_id: str, name: str, value: str) -> None:
        """Set the job's field NAME, whatever it was."""
        ...

    def clear_field(self, job_id: str, name: str) -> None:
        """Unset the job's field NAME."""
        ...

    # the shard ledger
    def record_shard(self, job_id: str, index: int, record: ShardRecord) -> int:
        """Record shard INDEX as complete (the first record stands); returns how many shards are recorded."""
        ...

    def shard_records(self, job_id: str) -> dict[int, ShardRecord]:
        """Every recorded shard of the job, by index."""
        ...

    def shard_record(self, job_id: str, index: int) -> ShardRecord | None:
        """The record of shard INDEX, None if it is not recorded."""
        ...

    def shard_totals(self, job_id: str) -> tuple[int, int]:
        """(shards, images) recorded so far, kept as counters so that polling a big job stays cheap."""
        ...

    def forget_shard(self, job_id: str, index: int) -> None:
        """Drop shard INDEX from the ledger (its object was lost), taking its images off the count once."""
        ...

    # leases
    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take lease NAME for OWNER for TTL_S seconds, unless someone holds it; True if taken."""
        ...

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend the lease if OWNER still holds it; False when it expired or another owner took it."""
        ...

    def release_lease(self, name: str, owner: str) -> None:
        """Give lease NAME up, if OWNER holds it (a lease that lapsed and was taken stays the taker's)."""
        ...

    def beat(self, job_id: str, part: str, beat: Beat) -> None:
        """Record a heartbeat of PART of the job (``train``, ``shard:8``); it replaces the part's last one."""
        ...

    def end_beat(self, job_id: str, part: str, owner: str) -> None:
        """Forget PART's heartbeat, if OWNER made it: the part stopped on purpose (done, failed, handed back)."""
        ...

    def beats(self, job_id: str) -> dict[str, Beat]:
        """The last heartbeat of each part of the job that started and did not stop on purpose."""
        ...

    def append_history(self, job_id: str, record: dict[str, Any]) -> None:
        """Add one training progress record (step, loss_d, loss_g, d_x, d_g_z) to the job's history."""
        ...

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's progress records in the order they came; a resumed job repeats the steps after its checkpoint."""
        ...


class RedisJobStore(JobStore):
    """Job records in Redis: a hash per job and a sorted set of ids by submission time."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def add(self, record: JobRecord) -> None:
        payload: dict[bytes | bytearray | memoryview | str | int | float, str] = {
            JobField.KIND: record.kind, JobField.SPEC: json.dumps(record.spec), JobField.SUBMITTED_AT: repr(record.submitted_at),
        }
        with self.client.pipeline() as pipe:
            pipe.hset(Keys.job(record.job_id), mapping=payload)
            pipe.zadd(Keys.jobs(), {record.job_id: record.submitted_at})
            pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        data: dict[str, str] = self.client.hgetall(Keys.job(job_id))  # type: ignore[assignment]
        if not data or JobField.KIND not in data:
            return None
        return JobRecord(job_id, data[JobField.KIND], json.loads(data[JobField.SPEC]), float(data[JobField.SUBMITTED_AT]))

    def recent(self, limit: int = 50) -> list[JobRecord]:
        ids: list[str] = self.client.zrevrange(Keys.jobs(), 0, limit - 1)  # type: ignore[assignment]
        return [record for record in map(self.get, ids) if record is not None]

    def request_cancel(self, job_id: str) -> None:
        self.client.hset(Keys.job(job_id), JobField.CANCEL_REQUESTED, "1")

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.hget(Keys.job(job_id), JobField.CANCEL_REQUESTED))

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        return bool(self.client.hsetnx(Keys.job(job_id), name, value))

    def get_field(self, job_id: str, name: str) -> str | None:
        return self.client.hget(Keys.job(job_id), name)  # type: ignore[return-value]

    def set_field(self, job_id: str, name: str, value: str) -> None:
        self.client.hset(Keys.job(job_id), name, value)

    def clear_field(self, job_id: str, name: str) -> None:
        self.client.hdel(Keys.job(job_id), name)

    def record_shard(self, job_id: str, index: int, record: ShardRecord) -> int:
        keys = (Keys.shards(job_id), Keys.job(job_id))
        return int(self.client.eval(_RECORD_SHARD, 2, *keys, str(index), msgspec.json.encode(record), record.count))

    def shard_records(self, job_id: str) -> dict[int, ShardRecord]:
        raw: dict[str, str] = self.client.hgetall(Keys.shards(job_id))  # type: ignore[assignment]
        return {int(index): msgspec.json.decode(record, type=ShardRecord) for index, record in raw.items()}

    def shard_record(self, job_id: str, index: int) -> ShardRecord | None:
        record: str | None = self.client.hget(Keys.shards(job_id), str(index))  # type: ignore[assignment]
        return None if record is None else msgspec.json.decode(record, type=ShardRecord)

    def shard_totals(self, job_id: str) -> tuple[int, int]:
        with self.client.pipeline() as pipe:
            pipe.hlen(Keys.shards(job_id))
            pipe.hget(Keys.job(job_id), JobField.IMAGES_DONE)
            shards, images = pipe.execute()
        return int(shards), int(images or 0)

    def forget_shard(self, job_id: str, index: int) -> None:
        self.client.eval(_FORGET_SHARD, 2, Keys.shards(job_id), Keys.job(job_id), str(index))

    def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(self.client.set(Keys.lease(name), owner, nx=True, px=int(ttl_s * 1000)))

    def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(self.client.eval(_RENEW_IF_OWNER, 1, Keys.lease(name), owner, int(ttl_s * 1000)))

    def release_lease(self, name: str, owner: str) -> None:
        self.client.eval(_DELETE_IF_OWNER, 1, Keys.lease(name), owner)

    def beat(self, job_id: str, part: str, beat: Beat) -> None:
        with self.client.pipeline() as pipe:
            pipe.hset(Keys.beats(job_id), part, json.dumps(asdict(beat)))
            pipe.expire(Keys.beats(job_id), BEATS_KEPT_S)
            pipe.execute()

    def end_beat(self, job_id: str, part: str, owner: str) -> None:
        self.client.eval(_END_BEAT_IF_OWNER, 1, Keys.beats(job_id), part, owner)

    def beats(self, job_id: str) -> dict[str, Beat]:
        raw: dict[str, str] = self.client.hgetall(Keys.beats(job_id))  # type: ignore[assignment]
        return {part: Beat(**json.loads(beat)) for part, beat in raw.items()}

    def append_history(self, job_id: str, record: dict[str, Any]) -> None:
        self.client.rpush(Keys.history(job_id), json.dumps(record))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        raw: list[str] = self.client.lrange(Keys.history(job_id), 0, -1)  # type: ignore[assignment]
        return [json.loads(record) for record in raw]


# A shard's record and the job's image counter change together, in one step on the server.
_RECORD_SHARD = f"""
if redis.call('hsetnx', KEYS[1], ARGV[1], ARGV[2]) == 1 then redis.call('hincrby', KEYS[2], '{JobField.IMAGES_DONE}', ARGV[3]) end
return redis.call('hlen', KEYS[1])
"""
_FORGET_SHARD = f"""
local record = redis.call('hget', KEYS[1], ARGV[1])
if record then
  redis.call('hdel', KEYS[1], ARGV[1])
  redis.call('hincrby', KEYS[2], '{JobField.IMAGES_DONE}', -cjson.decode(record)['count'])
end
return 0
"""
# Compare-and-act in one step on the server, so a lease that expired and was taken over is never touched.
_RENEW_IF_OWNER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_DELETE_IF_OWNER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_END_BEAT_IF_OWNER = """
local beat = redis.call('hget', KEYS[1], ARGV[1])
if beat and cjson.decode(beat)['owner'] == ARGV[2] then return redis.call('hdel', KEYS[1], ARGV[1]) end
return 0
"""
# Heartbeats of parts that never stopped on purpose (their worker died) are kept this long after the last one.
BEATS_KEPT_S = 7 * 24 * 3600


class MemoryJobStore(JobStore):
    """The same records in process memory, for the embedded demo (broker ``memory://``)."""

    def __init__(self) -> None:
        self._records: dict[str, JobRecord] = {}
        self._cancelled: set[str] = set()
        self._shards: dict[str, dict[int, ShardRecord]] = {}
        self._fields: dict[tuple[str, str], str] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, expiry on the monotonic clock)
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._beats: dict[str, dict[str, Beat]] = {}
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

    def record_shard(self, job_id: str, index: int, record: ShardRecord) -> int:
        with self._lock:
            shards = self._shards.setdefault(job_id, {})
            shards.setdefault(index, record)
            return len(shards)

    def shard_records(self, job_id: str) -> dict[int, ShardRecord]:
        with self._lock:
            return dict(self._shards.get(job_id, {}))

    def shard_record(self, job_id: str, index: int) -> ShardRecord | None:
        with self._lock:
            return self._shards.get(job_id, {}).get(index)

    def shard_totals(self, job_id: str) -> tuple[int, int]:
        with self._lock:
            shards = self._shards.get(job_id, {})
            return len(shards), sum(record.count for record in shards.values())

    def forget_shard(self, job_id: str, index: int) -> None:
        with self._lock:
            self._shards.get(job_id, {}).pop(index, None)

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

    def beat(self, job_id: str, part: str, beat: Beat) -> None:
        with self._lock:
            self._beats.setdefault(job_id, {})[part] = beat

    def end_beat(self, job_id: str, part: str, owner: str) -> None:
        with self._lock:
            beats = self._beats.get(job_id, {})
            if part in beats and beats[part].owner == owner:
                del beats[part]

    def beats(self, job_id: str) -> dict[str, Beat]:
        with self._lock:
            return dict(self._beats.get(job_id, {}))


_MEMORY_STORE = MemoryJobStore()


def open_job_store(settings: Settings, patient: bool = False) -> JobStore:
    """The job store of SETTINGS' broker; PATIENT (workers) rides out a Redis restart, see ``redis_client``."""
    if settings.broker_url.startswith("memory"):
        return _MEMORY_STORE
    return RedisJobStore(redis_client(settings, patient))


def describe_status(record: JobRecord | None, state: str, info: Any) -> dict[str, Any]:
    """Merge a job record with its Celery state into the dict that ``augment status --json`` prints."""
    status: dict[str, Any] = {"state": state}
    if record is not None:
        status.update(asdict(record))
    if state == JobState.FAILURE:
        status["error"] = f"{type(info).__name__}: {info}" if isinstance(info, BaseException) else str(info)
    elif isinstance(info, dict):
        status["result" if state == JobState.SUCCESS else "progress"] = info
    return status
