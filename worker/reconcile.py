"""Reconciliation: every part of an unfinished job that has no message and no lease is found and sent again.

Fencing makes a late write harmless; it cannot make a lost message come back. A message can still vanish: kombu
pops a message and then records it as unacknowledged, two steps that a partition can split; a worker's late
acknowledgement can remove the record of a message that was restored and delivered again meanwhile. Whatever the
cause, the symptom is the same, and this module looks for it, not for its causes (measured before fencing: a
40-shard job stuck at 39/40 forever, no message, lease or heartbeat left for the missing shard):

- a training or evaluation job, or a generation job's planner, with no message in any queue or in the unacked
  hash (a running task's message stays there until it ends) and no lease;
- a generation shard without a ledger record, lease or message;
- a generation job whose ledger is complete, with no finaliser's message.

Who and how often: every worker runs :func:`reconcile_forever`; one of them per period of ``RECONCILE_EVERY_S``
wins a lock in Redis and sweeps. A part found missing is sent again only when the next sweep finds it still missing,
so a message that is between two steps (popped and not yet recorded, published a moment after its job record) is
never doubled; a duplicate would be harmless anyway, as every task is idempotent. What it costs Redis: per sweep, a
read of the active-job set and, per unfinished job, a few reads (its record, its lease, its ledger's keys); the queues
and the unacked hash are read whole (O(queued messages)) only in a sweep that has a suspect, which a healthy fleet has
only while a job waits in a queue behind others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from shared.broker import (
    GENERATE_FINALIZE_TASK,
    GENERATE_QUEUE,
    GENERATE_SHARD_TASK,
    QUEUE_OF_TASK,
    QUEUES,
    finalize_task_id,
    shard_task_id,
)
from shared.contracts import KINDS
from shared.keys import JobField, Keys
from shared.liveness import shard_part
from shared.records import JobRecord, RedisJobStore
from shared.specs import GenerateSpec

log = logging.getLogger("augment.reconcile")
RECONCILE_EVERY_S = 30.0
FIRST_TASK = {kind.record_kind: kind.task for kind in KINDS.values()}  # a job's first task, by its record's kind
# kombu's Redis transport: a queue's priority lists, and the hash of delivered, unacknowledged messages
PRIORITY_SEPARATOR, PRIORITY_STEPS, UNACKED = "\x06\x16", (3, 6, 9), "unacked"


@dataclass(frozen=True)
class Missing:
    """A part of a job that must have a message: its key in the suspects' hash, the message id it would have (or the
    prefix every id of its messages starts with), and how to send it again."""

    part: str  # "<job>|train", "<job>|shard:3", "<job>|finalize"
    message_id: str  # an exact id, or a prefix ending in "-"
    task: str
    kwargs: dict[str, Any]
    task_id: str  # the id of the message sent again

    def has_message(self, ids: set[str]) -> bool:
        if self.message_id.endswith("-"):
            return any(message.startswith(self.message_id) for message in ids)
        return self.message_id in ids


def missing_parts(store: RedisJobStore, record: JobRecord) -> list[Missing]:
    """The parts of unfinished job RECORD that hold no lease and have no ledger record: each must have a message."""
    job_id, client = record.job_id, store.client
    fields: dict[str, str] = client.hgetall(Keys.job(job_id))  # type: ignore[assignment]
    if JobField.OUTCOME in fields:
        return []
    first = Missing(f"{job_id}|job", job_id, FIRST_TASK[record.kind], {"spec": record.spec}, job_id)
    if record.kind != "generate":
        return [] if client.exists(Keys.lease(f"{job_id}:{record.kind}")) else [first]  # its lease is named after its kind
    spec = GenerateSpec.from_dict(record.spec)
    if int(fields.get(JobField.DISPATCHED, 0)) < spec.shard_count:
        return [first]  # its planner has not sent every shard
    recorded = {int(index) for index in client.hkeys(Keys.shards(job_id))}  # type: ignore[union-attr]
    if len(recorded) == spec.shard_count or JobField.COMMIT in fields:
        nonce = uuid.uuid4().hex[:6]
        return [Missing(f"{job_id}|finalize", finalize_task_id(job_id, ""), GENERATE_FINALIZE_TASK, {"spec": record.spec},
                        finalize_task_id(job_id, nonce))]
    unrecorded = [index for index in range(spec.shard_count) if index not in recorded]
    with client.pipeline(transaction=False) as pipe:
        for index in unrecorded:
            pipe.exists(Keys.lease(f"{job_id}:{shard_part(index)}"))
        leased = pipe.execute()
    return [Missing(f"{job_id}|{shard_part(index)}", shard_task_id(job_id, index, ""), GENERATE_SHARD_TASK,
                    {"spec": record.spec, "shard": index, "queued_at": time.time()},
                    shard_task_id(job_id, index, uuid.uuid4().hex[:6]))
            for index, held in zip(unrecorded, leased, strict=True) if not held]


def message_ids(client: redis.Redis) -> set[str]:
    """The ids of every message waiting in a queue or delivered and not yet acknowledged."""
    raw: list[str] = []
    for queue in QUEUES:
        for name in (queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)):
            raw += client.lrange(name, 0, -1)  # type: ignore[arg-type,operator]
    ids = {_message_id(json.loads(item)) for item in raw}
    ids |= {_message_id(json.loads(item)[0]) for item in client.hvals(UNACKED)}  # type: ignore[union-attr]
    return ids - {""}


def _message_id(message: Any) -> str:
    return str(message.get("headers", {}).get("id", "")) if isinstance(message, dict) else ""


def reconcile(store: RedisJobStore, send: Callable[[Missing], None], now: float | None = None,
              after_s: float = RECONCILE_EVERY_S) -> list[Missing]:
    """One sweep: send again what the previous sweep, AFTER_S or more ago, also found without message or lease;
    returns what was sent."""
    now = time.time() if now is None else now
    client = store.client
    suspects = [missing for job_id in store.active() if (record := store.get(job_id)) is not None
                for missing in missing_parts(store, record)]
    if suspects:
        ids = message_ids(client)
        suspects = [missing for missing in suspects if not missing.has_message(ids)]
    seen: dict[str, str] = client.hgetall(Keys.suspects())  # type: ignore[assignment]
    due = [missing for missing in suspects if missing.part in seen and now - float(seen[missing.part]) >= after_s]
    for missing in due:
        log.warning("reconcile: %s has no message and no lease; sending it again as %s", missing.part, missing.task_id)
        send(missing)
    _remember(client, [missing for missing in suspects if missing not in due], seen, now)
    return due


def _remember(client: redis.Redis, suspects: Iterable[Missing], seen: dict[str, str], now: float) -> None:
    """Keep the suspects of this sweep (with when each was first seen), and only those."""
    fresh = {missing.part: seen.get(missing.part, repr(now)) for missing in suspects}
    with client.pipeline() as pipe:
        pipe.delete(Keys.suspects())
        if fresh:
            pipe.hset(Keys.suspects(), mapping=fresh)  # type: ignore[arg-type]
        pipe.execute()


def reconcile_forever(store: RedisJobStore, send: Callable[[Missing], None], owner: str, stop: threading.Event,
                      every_s: float = RECONCILE_EVERY_S) -> None:
    """Sweep every EVERY_S in the one worker that wins the period's lock, until STOP is set."""
    while not stop.wait(every_s):
        try:
            if store.client.set(Keys.reconcile_lock(), owner, nx=True, px=int(every_s * 1000 * 0.9)):
                reconcile(store, send, after_s=every_s)
        except redis.RedisError as exc:
            log.warning("reconcile: Redis unreachable (%s); trying again in %.0f s", type(exc).__name__, every_s)


def queue_of(missing: Missing) -> str:
    return QUEUE_OF_TASK.get(missing.task, GENERATE_QUEUE)
