"""Liveness: leases with fencing tokens, heartbeats, and the stalls they reveal.

A training job holds the part ``train`` and a shard task ``shard:<N>``. Redis may hand one message to two workers
(a duplicated message, a redelivery while a worker was cut off for longer than the visibility timeout); the lease
makes the second wait instead of doing the same work beside the first.

A lease alone does not protect a write (Kleppmann, "How to do distributed locking"): a worker cut off by a
partition keeps running, finds its lease gone only at its next renewal, and what it sent before may still arrive.
So each lease taken gets an **epoch**, one more than the part's last, and its value is the holder's fencing token
``owner#epoch``. Every write an attempt makes carries the token, and the script that makes the write on the Redis
server first compares it with the lease's value: a stale attempt's write is refused where it lands, in the same
step, never by a read followed by a write (Kafka's producer epochs, an SQS receipt handle).

Each renewal also records the part's heartbeat, which outlives a dead worker: :func:`stalls` reads it to tell a part
that is running from one whose worker stopped. A heartbeat is fenced too, and never moves back in time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import redis

from shared.keys import JobField, Keys, epoch_field

# Heartbeats of parts that never stopped on purpose (their worker died) are kept this long after the last one.
BEATS_KEPT_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Fence:
    """What a write must carry to land: the lease it was made under and the holder's token (``owner#epoch``)."""

    lease: str  # the lease's name, "<job>:<part>"
    token: str

    @property
    def key(self) -> str:
        return Keys.lease(self.lease)

    @property
    def epoch(self) -> int:
        return int(self.token.rsplit("#", 1)[1])


def fenced_lua(lease_key: str, token_arg: str) -> str:
    """A Lua condition that holds when the write's token (TOKEN_ARG, '' for an unfenced write) holds its lease
    (LEASE_KEY): the one check every fenced script makes first."""
    return f"({token_arg} == '' or redis.call('get', {lease_key}) == {token_arg})"


# A finished job takes no more fenced writes: its final state, or the commit of what it leaves, is set.
OPEN_LUA = (f"(redis.call('hexists', KEYS[2], '{JobField.OUTCOME}') == 0 "
            f"and redis.call('hexists', KEYS[2], '{JobField.COMMIT}') == 0)")


@dataclass(frozen=True)
class Attempt:
    """One attempt at a job, as the code that writes its objects sees it: EPOCH names the attempt's objects,
    MAY_WRITE says whether its lease is surely still held (asked before a storage write no script can fence), and
    COMMIT fixes what the job leaves (a model card, a report) unless the lease was lost, answering what is fixed.
    The default is an attempt alone (a test, a benchmark, the study's own GAN): epoch 0, every write its own."""

    epoch: int = 0
    may_write: Callable[[], bool] = lambda: True
    commit: Callable[[str], str | None] = lambda payload: payload


@dataclass(frozen=True)
class Beat:
    """The last heartbeat of a running part of a job: who runs it (its token), when it last beat, how often."""

    owner: str
    at: float  # time.time() of the beat
    every_s: float


class Liveness(Protocol):
    """The store side of leases and heartbeats: in Redis (:class:`RedisLiveness`) or in memory (the demo)."""

    def take(self, job_id: str, part: str, owner: str, ttl_s: float) -> str | None:
        """Take the lease on PART of JOB_ID for TTL_S unless someone holds it; the new token, or None."""
        ...

    def renew(self, fence: Fence, ttl_s: float) -> bool:
        """Extend the lease if FENCE still holds it; False when it lapsed or another attempt took it."""
        ...

    def release(self, fence: Fence) -> None:
        """Give the lease up, if FENCE holds it (a lease that lapsed and was taken stays the taker's)."""
        ...

    def holds(self, fence: Fence) -> bool:
        """Whether FENCE holds its lease now (a check before a write that no script can fence, such as storage's)."""
        ...

    def beat(self, job_id: str, part: str, fence: Fence, beat: Beat) -> None:
        """Record a heartbeat of PART, if FENCE holds its lease and BEAT is newer than the part's last one."""
        ...

    def end_beat(self, job_id: str, part: str, fence: Fence) -> None:
        """Forget PART's heartbeat, if FENCE made it: the part stopped on purpose (done, failed, handed back)."""
        ...

    def beats(self, job_id: str) -> dict[str, Beat]:
        """The last heartbeat of each part of the job that started and did not stop on purpose."""
        ...


class RedisLiveness(Liveness):
    """Leases and heartbeats in Redis, each change one script on the server."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def take(self, job_id: str, part: str, owner: str, ttl_s: float) -> str | None:
        keys = (Keys.lease(f"{job_id}:{part}"), Keys.job(job_id))
        token = self.client.eval(_TAKE, 2, *keys, owner, epoch_field(part), int(ttl_s * 1000))
        return None if token is None else str(token)

    def renew(self, fence: Fence, ttl_s: float) -> bool:
        return bool(self.client.eval(_RENEW_IF_HOLDER, 1, fence.key, fence.token, int(ttl_s * 1000)))

    def release(self, fence: Fence) -> None:
        self.client.eval(_DELETE_IF_HOLDER, 1, fence.key, fence.token)

    def holds(self, fence: Fence) -> bool:
        return self.client.get(fence.key) == fence.token

    def beat(self, job_id: str, part: str, fence: Fence, beat: Beat) -> None:
        self.client.eval(_BEAT, 2, fence.key, Keys.beats(job_id), fence.token, part, json.dumps(asdict(beat)), repr(beat.at),
                         BEATS_KEPT_S)

    def end_beat(self, job_id: str, part: str, fence: Fence) -> None:
        self.client.eval(_END_BEAT_IF_HOLDER, 1, Keys.beats(job_id), part, fence.token)

    def beats(self, job_id: str) -> dict[str, Beat]:
        raw: dict[str, str] = self.client.hgetall(Keys.beats(job_id))  # type: ignore[assignment]
        return {part: Beat(**json.loads(beat)) for part, beat in raw.items()}


# The epoch counts every lease ever taken on the part, so a token is never handed out twice.
_TAKE = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local token = ARGV[1] .. '#' .. redis.call('hincrby', KEYS[2], ARGV[2], 1)
redis.call('set', KEYS[1], token, 'PX', ARGV[3])
return token
"""
_RENEW_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_DELETE_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# A beat that arrives late (a retransmission) carries an older time than the holder's last one: it must not make a
# live part look silent.
_BEAT = f"""
if not {fenced_lua('KEYS[1]', 'ARGV[1]')} then return 0 end
local last = redis.call('hget', KEYS[2], ARGV[2])
if last then
  last = cjson.decode(last)
  if last['owner'] == ARGV[1] and tonumber(last['at']) >= tonumber(ARGV[4]) then return 0 end
end
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
redis.call('expire', KEYS[2], ARGV[5])
return 1
"""
_END_BEAT_IF_HOLDER = """
local beat = redis.call('hget', KEYS[1], ARGV[1])
if beat and cjson.decode(beat)['owner'] == ARGV[2] then return redis.call('hdel', KEYS[1], ARGV[1]) end
return 0
"""


class MemoryLiveness(Liveness):
    """The same in process memory, for the embedded demo; LOCK is shared with the records it fences."""

    def __init__(self, lock: threading.RLock):
        self.lock = lock
        self.leases: dict[str, tuple[str, float]] = {}  # name -> (token, expiry on the monotonic clock)
        self._epochs: dict[str, int] = {}
        self._beats: dict[str, dict[str, Beat]] = {}

    def take(self, job_id: str, part: str, owner: str, ttl_s: float) -> str | None:
        name = f"{job_id}:{part}"
        with self.lock:
            holder = self.leases.get(name)
            if holder is not None and holder[1] > time.monotonic():
                return None
            self._epochs[name] = self._epochs.get(name, 0) + 1
            token = f"{owner}#{self._epochs[name]}"
            self.leases[name] = (token, time.monotonic() + ttl_s)
            return token

    def holds(self, fence: Fence) -> bool:
        with self.lock:
            holder = self.leases.get(fence.lease)
            return holder is not None and holder[0] == fence.token and holder[1] > time.monotonic()

    def renew(self, fence: Fence, ttl_s: float) -> bool:
        with self.lock:
            if not self.holds(fence):
                return False
            self.leases[fence.lease] = (fence.token, time.monotonic() + ttl_s)
            return True

    def release(self, fence: Fence) -> None:
        with self.lock:
            if self.holds(fence):
                del self.leases[fence.lease]

    def beat(self, job_id: str, part: str, fence: Fence, beat: Beat) -> None:
        with self.lock:
            last = self._beats.get(job_id, {}).get(part)
            if self.holds(fence) and (last is None or last.owner != beat.owner or last.at < beat.at):
                self._beats.setdefault(job_id, {})[part] = beat

    def end_beat(self, job_id: str, part: str, fence: Fence) -> None:
        with self.lock:
            beats = self._beats.get(job_id, {})
            if part in beats and beats[part].owner == fence.token:
                del beats[part]

    def beats(self, job_id: str) -> dict[str, Beat]:
        with self.lock:
            return dict(self._beats.get(job_id, {}))


class Lease:
    """An exclusive, expiring claim on PART of job JOB_ID, renewed by a heartbeat thread while it is held.

    A worker that dies stops renewing, so the claim lapses after ``ttl_s`` and another worker can take over;
    a live worker keeps it however long its job runs. ``lost`` turns true if a renewal finds the claim gone
    (it lapsed while Redis was out of reach, and may have been taken), so the holder stops instead of running
    beside a second owner. ``fence`` is what every write of the holder carries.
    """

    def __init__(self, liveness: Liveness, job_id: str, part: str, owner: str, ttl_s: float = 30.0):
        self.liveness, self.job_id, self.part, self.owner, self.ttl_s = liveness, job_id, part, owner, ttl_s
        self.name = f"{job_id}:{part}"
        self.lost = False
        self.fence: Fence | None = None
        self.renewed_at = 0.0  # time.monotonic() when the lease was last taken or renewed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the claim and start renewing it every ``ttl_s / 3``; False if someone else holds it."""
        token = self.liveness.take(self.job_id, self.part, self.owner, self.ttl_s)
        if token is None:
            return False
        self.fence = Fence(self.name, token)
        self.renewed_at = time.monotonic()
        self._beat()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return True

    @property
    def held(self) -> Fence:
        """The fence of a lease that was acquired."""
        if self.fence is None:
            raise RuntimeError(f"lease {self.name} was not acquired")
        return self.fence

    def _beat(self) -> None:
        self.liveness.beat(self.job_id, self.part, self.held, Beat(self.held.token, time.time(), self.ttl_s / 3))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.liveness.renew(self.held, self.ttl_s):
                    self.lost = True
                    return
                self.renewed_at = time.monotonic()
                self._beat()
            except redis.RedisError:
                continue  # Redis out of reach: keep trying; a lapsed lease shows at the next renewal

    def valid(self) -> bool:
        """Whether the lease is surely still ours, judged on this host without a round trip: renewed less than two
        thirds of its time to live ago (a margin for clocks that run at slightly different rates). An attempt asks
        before a storage write that no script can fence; what readers trust is fenced in Redis all the same."""
        return not self.lost and time.monotonic() - self.renewed_at < self.ttl_s * 2 / 3

    def release(self) -> None:
        """Stop renewing and give the claim up (if it is still ours), so the next worker need not wait it out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.fence is None:
            return
        try:
            self.liveness.end_beat(self.job_id, self.part, self.fence)
            self.liveness.release(self.fence)
        except redis.RedisError:
            pass  # it expires by itself


def shard_part(index: int) -> str:
    """The name of shard INDEX as a part of its job: its lease, its heartbeat, its stall."""
    return f"shard:{index}"


def shard_of(part: str) -> int | None:
    """The shard index a part names (:func:`shard_part`), None for another part ("train")."""
    kind, _, index = part.partition(":")
    return int(index) if kind == "shard" and index.isdigit() else None


# Missed heartbeats before a part counts as stalled: one late beat on a loaded machine is not a dead worker.
MISSED_BEATS = 2


@dataclass(frozen=True)
class Stall:
    """A part of a job whose worker stopped heartbeating: its message waits to be handed to another worker."""

    part: str  # "train", "shard:8"
    owner: str  # the worker that stopped, "augment-123@host/1a2b3c4d#2"
    silent_s: float  # seconds since its last heartbeat
    redelivery_in_s: float  # seconds until its message is due for another worker (0: due, waiting for one)

    @property
    def note(self) -> str:
        """One line for a person: "shard 8: its worker stopped heartbeating 12 s ago; redelivery pending"."""
        name = "training" if self.part == "train" else self.part.replace(":", " ")
        worker = self.owner.split("/")[0]
        when = (f"due in about {self.redelivery_in_s:.0f} s" if self.redelivery_in_s >= 1
                else "due now, waiting for a free worker")
        return f"{name}: its worker {worker} stopped heartbeating {self.silent_s:.0f} s ago; redelivery pending ({when})"


def stalls(
    liveness: Liveness,
    job_id: str,
    redelivery_after_s: float,
    finished: Callable[[str], bool] = lambda part: False,
    now: float | None = None,
) -> list[Stall]:
    """The parts of job JOB_ID whose worker stopped heartbeating, oldest silence first.

    REDELIVERY_AFTER_S is how long after a holder's last heartbeat its message goes to another worker (the
    visibility timeout plus a sweep). A part that FINISHED says is done is not stalled, even if its worker died
    before it could say so.
    """
    now = time.time() if now is None else now
    found = []
    for part, beat in liveness.beats(job_id).items():
        silent = now - beat.at
        if silent > MISSED_BEATS * beat.every_s + 1 and not finished(part):
            found.append(Stall(part, beat.owner, silent, max(0.0, redelivery_after_s - silent)))
    return sorted(found, key=lambda stall: -stall.silent_s)
