"""Job records: what Celery does not keep about a job, in Redis (or in memory for the demo).

- **records**: every submitted job (for ``augment list``), its cancellation flag, and one-shot fields
  (:class:`~shared.keys.JobField`) that the tasks of a job coordinate through;
- **the state record**: the job's state in Celery's result-backend format, written by :mod:`shared.lifecycle`
  through :meth:`JobStore.put_state`, one script that refuses a stale or late write;
- **the shard ledger**: a generation job's finished shards, what its manifest is built from;
- **the history**: a training job's progress records, the dashboard's curves;
- **pointers and the commit**: a training job's current checkpoint and teacher, and what a job leaves when it
  finishes, each moved only by the lease holder (:class:`shared.liveness.Fence`) of an unfinished job.

Every write here is idempotent, so a command that redis-py sends again after a timeout cannot apply twice, and
every write a worker makes carries its fence, so a write that arrives after its sender lost its lease is refused.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import redis

from shared.broker import redis_client
from shared.keys import JobField, Keys
from shared.liveness import OPEN_LUA, Fence, Liveness, MemoryLiveness, RedisLiveness, fenced_lua
from shared.settings import Settings


def new_job_id(kind: str) -> str:
    """A fresh job id; a kind letter makes ids readable in listings and logs: t-..., g-..., e-..."""
    return f"{kind[0]}-{uuid.uuid4().hex[:12]}"


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


@dataclass(frozen=True)
class StateWrite:
    """One write of a job's state record (built by :mod:`shared.lifecycle`).

    It lands unless the job has its final state (a repeat of the very write that set it lands again, unchanged),
    unless FENCE no longer holds its lease, and unless STEP is behind the furthest step reported.
    """

    key: str  # where the record lies (Celery's result-backend key of the job)
    payload: str  # the record, encoded as the backend encodes it
    ttl_s: int
    final: str | None = None  # the final state this write sets, None for a state on the way
    fence: Fence | None = None
    step: int | None = None


class JobStore(Protocol):
    """Job records, state, the shard ledger and history; ``liveness`` holds the leases that fence their writes."""

    liveness: Liveness

    # records
    def add(self, record: JobRecord, once: bool = False) -> bool:
        """Record a submitted job; ONCE: only if no job of its id is recorded (a job whose id is derived, as a sweep's
        trials', submitted again by a scheduler that resumed). Whether it was recorded."""
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """The record of JOB_ID; None for an unknown job."""
        ...

    def recent(self, limit: int = 50) -> list[JobRecord]:
        """The LIMIT most recently submitted jobs, newest first."""
        ...

    def active(self, limit: int = 1000) -> list[str]:
        """The ids of up to LIMIT jobs that have no final state, oldest first."""
        ...

    def request_cancel(self, job_id: str) -> None:
        """Flag the job for cancellation; its tasks check the flag and stop."""
        ...

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job's cancellation was requested."""
        ...

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        """Set the job's field NAME unless it is set to another value; True for the caller whose VALUE it holds
        (so a repeated call answers as the first did: give each caller a value of its own)."""
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

    # state
    def put_state(self, job_id: str, write: StateWrite) -> bool:
        """Write the job's state record as WRITE says, if it may land; whether it did."""
        ...

    def get_state(self, job_id: str, key: str) -> str | None:
        """The job's state record as stored under KEY, None if it has none."""
        ...

    def set_pointer(self, job_id: str, name: str, value: str, fence: Fence) -> bool:
        """Point the job's field NAME at VALUE if FENCE holds its lease and the job is unfinished; whether it did."""
        ...

    def commit(self, job_id: str, payload: str, fence: Fence | None = None) -> str | None:
        """Fix PAYLOAD as what the job leaves, unless it was fixed already or FENCE lost its lease; returns what
        is fixed now (this payload, another's, or None)."""
        ...

    # the shard ledger
    def put_shard(self, job_id: str, index: int, record: ShardRecord, fence: Fence) -> int | None:
        """Record shard INDEX as complete, replacing an earlier record of it; how many shards are recorded, or
        None when the write was refused (FENCE lost its lease, or the job's outcome is fixed)."""
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

    def forget_shard(self, job_id: str, index: int, record: ShardRecord) -> None:
        """Drop shard INDEX from the ledger if it still holds RECORD (its object was lost), taking its images off
        the count once; a record written meanwhile stays."""
        ...

    # history
    def append_history(self, job_id: str, record: dict[str, Any], fence: Fence) -> None:
        """Add one training progress record (step, loss_d, ...) to the job's history, if FENCE holds its lease."""
        ...

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's progress records in the order they came; a resumed job repeats the steps after its checkpoint."""
        ...


class RedisJobStore(JobStore):
    """Job records in Redis: a hash per job and sorted sets of ids by submission time."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.liveness = RedisLiveness(client)

    def add(self, record: JobRecord, once: bool = False) -> bool:
        keys = (Keys.job(record.job_id), Keys.jobs(), Keys.active())
        return bool(self.client.eval(_ADD, len(keys), *keys, record.kind, json.dumps(record.spec), repr(record.submitted_at),
                                     record.job_id, "1" if once else ""))

    def get(self, job_id: str) -> JobRecord | None:
        data: dict[str, str] = self.client.hgetall(Keys.job(job_id))  # type: ignore[assignment]
        if not data or JobField.KIND not in data:
            return None
        return JobRecord(job_id, data[JobField.KIND], json.loads(data[JobField.SPEC]), float(data[JobField.SUBMITTED_AT]))

    def recent(self, limit: int = 50) -> list[JobRecord]:
        ids: list[str] = self.client.zrevrange(Keys.jobs(), 0, limit - 1)  # type: ignore[assignment]
        return [record for record in map(self.get, ids) if record is not None]

    def active(self, limit: int = 1000) -> list[str]:
        return list(self.client.zrange(Keys.active(), 0, limit - 1))  # type: ignore[arg-type]

    def request_cancel(self, job_id: str) -> None:
        self.client.hset(Keys.job(job_id), JobField.CANCEL_REQUESTED, "1")

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.hget(Keys.job(job_id), JobField.CANCEL_REQUESTED))

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        return bool(self.client.eval(_SET_ONCE, 1, Keys.job(job_id), name, value))

    def get_field(self, job_id: str, name: str) -> str | None:
        return self.client.hget(Keys.job(job_id), name)  # type: ignore[return-value]

    def set_field(self, job_id: str, name: str, value: str) -> None:
        self.client.hset(Keys.job(job_id), name, value)

    def clear_field(self, job_id: str, name: str) -> None:
        self.client.hdel(Keys.job(job_id), name)

    def put_state(self, job_id: str, write: StateWrite) -> bool:
        keys = (write.key, Keys.job(job_id), write.fence.key if write.fence else write.key, Keys.active())
        return bool(self.client.eval(
            _PUT_STATE, len(keys), *keys, write.payload, write.ttl_s, write.final or "", write.fence.token if write.fence else "",
            "" if write.step is None else write.step, job_id,
        ))

    def get_state(self, job_id: str, key: str) -> str | None:
        return self.client.get(key)  # type: ignore[return-value]

    def set_pointer(self, job_id: str, name: str, value: str, fence: Fence) -> bool:
        return bool(self.client.eval(_SET_POINTER, 2, fence.key, Keys.job(job_id), fence.token, name, value))

    def commit(self, job_id: str, payload: str, fence: Fence | None = None) -> str | None:
        keys = (fence.key if fence else Keys.job(job_id), Keys.job(job_id))
        return self.client.eval(_COMMIT, 2, *keys, fence.token if fence else "", payload)  # type: ignore[return-value]

    def put_shard(self, job_id: str, index: int, record: ShardRecord, fence: Fence) -> int | None:
        keys = (fence.key, Keys.job(job_id), Keys.shards(job_id))
        recorded = self.client.eval(_PUT_SHARD, 3, *keys, fence.token, str(index), msgspec.json.encode(record), record.count)
        return None if recorded is None else int(recorded)

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

    def forget_shard(self, job_id: str, index: int, record: ShardRecord) -> None:
        keys = (Keys.shards(job_id), Keys.job(job_id))
        self.client.eval(_FORGET_SHARD, 2, *keys, str(index), msgspec.json.encode(record), record.count)

    def append_history(self, job_id: str, record: dict[str, Any], fence: Fence) -> None:
        self.client.eval(_APPEND_HISTORY, 3, fence.key, Keys.job(job_id), Keys.history(job_id), fence.token, json.dumps(record))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        raw: list[str] = self.client.lrange(Keys.history(job_id), 0, -1)  # type: ignore[assignment]
        return [json.loads(record) for record in raw]


# The scripts: KEYS[1] is the writer's lease (its fence), KEYS[2] the job's record, unless a script says otherwise.
_FENCED = fenced_lua("KEYS[1]", "ARGV[1]")
# KEYS: job, jobs, active. ARGV: kind, spec, submitted at, id, once
_ADD = f"""
if ARGV[5] ~= '' and redis.call('hexists', KEYS[1], '{JobField.KIND}') == 1 then return 0 end
redis.call('hset', KEYS[1], '{JobField.KIND}', ARGV[1], '{JobField.SPEC}', ARGV[2], '{JobField.SUBMITTED_AT}', ARGV[3])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
_SET_ONCE = "redis.call('hsetnx', KEYS[1], ARGV[1], ARGV[2]) return redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] and 1 or 0"
# KEYS: state key, job, lease (or the state key again: unfenced), active set. ARGV: payload, ttl, final, token, step, id
_PUT_STATE = f"""
if redis.call('hexists', KEYS[2], '{JobField.OUTCOME}') == 1 then
  return (ARGV[3] ~= '' and redis.call('get', KEYS[1]) == ARGV[1]) and 1 or 0
end
if not {fenced_lua('KEYS[3]', 'ARGV[4]')} then return 0 end
if ARGV[5] ~= '' then
  local furthest = redis.call('hget', KEYS[2], '{JobField.PROGRESS_STEP}')
  if furthest and tonumber(furthest) > tonumber(ARGV[5]) then return 0 end
  redis.call('hset', KEYS[2], '{JobField.PROGRESS_STEP}', ARGV[5])
end
if ARGV[3] ~= '' then
  redis.call('hset', KEYS[2], '{JobField.OUTCOME}', ARGV[3])
  redis.call('zrem', KEYS[4], ARGV[6])
end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
_SET_POINTER = f"""
if not ({_FENCED} and {OPEN_LUA}) then return 0 end
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
_COMMIT = f"""
if redis.call('hexists', KEYS[2], '{JobField.OUTCOME}') == 0 and {_FENCED} then
  redis.call('hsetnx', KEYS[2], '{JobField.COMMIT}', ARGV[2])
end
return redis.call('hget', KEYS[2], '{JobField.COMMIT}')
"""
# A shard's record and the job's image counter change together; a repeat of the same write changes nothing.
_PUT_SHARD = f"""
if not ({_FENCED} and {OPEN_LUA}) then return false end
local last = redis.call('hget', KEYS[3], ARGV[2])
if last ~= ARGV[3] then
  local change = tonumber(ARGV[4])
  if last then change = change - cjson.decode(last)['count'] end
  redis.call('hset', KEYS[3], ARGV[2], ARGV[3])
  redis.call('hincrby', KEYS[2], '{JobField.IMAGES_DONE}', change)
end
return redis.call('hlen', KEYS[3])
"""
_FORGET_SHARD = f"""
if not {OPEN_LUA} then return 0 end
if redis.call('hget', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('hincrby', KEYS[2], '{JobField.IMAGES_DONE}', -tonumber(ARGV[3]))
return 1
"""
# A record sent again after a timeout is the list's last one already: it is not added twice.
_APPEND_HISTORY = f"""
if not ({_FENCED} and {OPEN_LUA}) then return 0 end
if redis.call('lindex', KEYS[3], -1) == ARGV[2] then return 0 end
redis.call('rpush', KEYS[3], ARGV[2])
return 1
"""


class MemoryJobStore(JobStore):
    """The same records in process memory, for the embedded demo (broker ``memory://``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.liveness = MemoryLiveness(self._lock)
        self._records: dict[str, JobRecord] = {}
        self._cancelled: set[str] = set()
        self._shards: dict[str, dict[int, ShardRecord]] = {}
        self._fields: dict[tuple[str, str], str] = {}
        self._states: dict[str, str] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}

    def add(self, record: JobRecord, once: bool = False) -> bool:
        with self._lock:
            if once and record.job_id in self._records:
                return False
            self._records[record.job_id] = record
            return True

    def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def recent(self, limit: int = 50) -> list[JobRecord]:
        return sorted(self._records.values(), key=lambda record: record.submitted_at, reverse=True)[:limit]

    def active(self, limit: int = 1000) -> list[str]:
        with self._lock:
            open_jobs = [record for record in self._records.values() if (record.job_id, JobField.OUTCOME) not in self._fields]
        return [record.job_id for record in sorted(open_jobs, key=lambda record: record.submitted_at)][:limit]

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancelled

    def set_once(self, job_id: str, name: str, value: str) -> bool:
        with self._lock:
            return self._fields.setdefault((job_id, name), value) == value

    def get_field(self, job_id: str, name: str) -> str | None:
        return self._fields.get((job_id, name))

    def set_field(self, job_id: str, name: str, value: str) -> None:
        with self._lock:
            self._fields[job_id, name] = value

    def clear_field(self, job_id: str, name: str) -> None:
        with self._lock:
            self._fields.pop((job_id, name), None)

    def _open(self, job_id: str, fence: Fence | None) -> bool:
        """The memory twin of the scripts' first checks: FENCE holds its lease and the job is unfinished."""
        return ((fence is None or self.liveness.holds(fence)) and (job_id, JobField.OUTCOME) not in self._fields
                and (job_id, JobField.COMMIT) not in self._fields)

    def put_state(self, job_id: str, write: StateWrite) -> bool:
        with self._lock:
            if (job_id, JobField.OUTCOME) in self._fields:
                return write.final is not None and self._states.get(write.key) == write.payload
            if write.fence is not None and not self.liveness.holds(write.fence):
                return False
            if write.step is not None:
                if int(self._fields.get((job_id, JobField.PROGRESS_STEP), write.step)) > write.step:
                    return False
                self._fields[job_id, JobField.PROGRESS_STEP] = str(write.step)
            if write.final is not None:
                self._fields[job_id, JobField.OUTCOME] = write.final
            self._states[write.key] = write.payload
            return True

    def get_state(self, job_id: str, key: str) -> str | None:
        return self._states.get(key)

    def set_pointer(self, job_id: str, name: str, value: str, fence: Fence) -> bool:
        with self._lock:
            if not self._open(job_id, fence):
                return False
            self._fields[job_id, name] = value
            return True

    def commit(self, job_id: str, payload: str, fence: Fence | None = None) -> str | None:
        with self._lock:
            if (job_id, JobField.OUTCOME) not in self._fields and (fence is None or self.liveness.holds(fence)):
                self._fields.setdefault((job_id, JobField.COMMIT), payload)
            return self._fields.get((job_id, JobField.COMMIT))

    def put_shard(self, job_id: str, index: int, record: ShardRecord, fence: Fence) -> int | None:
        with self._lock:
            if not self._open(job_id, fence):
                return None
            shards = self._shards.setdefault(job_id, {})
            shards[index] = record
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

    def forget_shard(self, job_id: str, index: int, record: ShardRecord) -> None:
        with self._lock:
            if self._open(job_id, None) and self._shards.get(job_id, {}).get(index) == record:
                del self._shards[job_id][index]

    def append_history(self, job_id: str, record: dict[str, Any], fence: Fence) -> None:
        with self._lock:
            history = self._history.setdefault(job_id, [])
            if self._open(job_id, fence) and (not history or history[-1] != record):
                history.append(dict(record))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._history.get(job_id, [])]


_MEMORY_STORE = MemoryJobStore()


def open_job_store(settings: Settings, patient: bool = False) -> JobStore:
    """The job store of SETTINGS' broker; PATIENT (workers) rides out a Redis restart, see ``redis_client``."""
    if settings.broker_url.startswith("memory"):
        return _MEMORY_STORE
    return RedisJobStore(redis_client(settings, patient))
