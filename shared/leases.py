"""Leases: exclusive, expiring claims on a part of a job, renewed by a heartbeat while it runs.

A training job holds the part ``train`` and a shard task ``shard:<N>`` (see :class:`shared.jobs.Keys` for where
they live). Redis may hand one message to two workers (a duplicated message, or a redelivery while Redis was
unreachable for longer than the visibility timeout); the lease makes the second wait instead of doing the
same work beside the first. Each renewal also records the part's heartbeat, which outlives a dead worker:
:func:`stalls` reads it to tell a part that is running from one whose worker stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from shared.jobs import Beat, JobStore


class Lease:
    """An exclusive, expiring claim on PART of job JOB_ID, renewed by a heartbeat thread while it is held.

    A worker that dies stops renewing, so the claim lapses after ``ttl_s`` and another worker can take over;
    a live worker keeps it however long its job runs. ``lost`` turns true if a renewal finds the claim gone
    (e.g. Redis lost it), so the holder can stop instead of running beside a second owner.
    """

    def __init__(self, store: JobStore, job_id: str, part: str, owner: str, ttl_s: float = 30.0):
        self.store, self.job_id, self.part, self.owner, self.ttl_s = store, job_id, part, owner, ttl_s
        self.name = f"{job_id}:{part}"
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the claim and start renewing it every ``ttl_s / 3``; False if someone else holds it."""
        if not self.store.acquire_lease(self.name, self.owner, self.ttl_s):
            return False
        self._beat()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        self.store.beat(self.job_id, self.part, Beat(self.owner, time.time(), self.ttl_s / 3))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.store.renew_lease(self.name, self.owner, self.ttl_s):
                    self.lost = True
                    return
                self._beat()
            except redis.RedisError:
                continue  # Redis restarting: keep trying until the lease would have lapsed anyway

    def release(self) -> None:
        """Stop renewing and give the claim up (if it is still ours), so the next worker need not wait it out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.end_beat(self.job_id, self.part, self.owner)
            self.store.release_lease(self.name, self.owner)
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
    owner: str  # the worker that stopped, "augment-123@host/1a2b3c4d"
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
    store: JobStore,
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
    for part, beat in store.beats(job_id).items():
        silent = now - beat.at
        if silent > MISSED_BEATS * beat.every_s + 1 and not finished(part):
            found.append(Stall(part, beat.owner, silent, max(0.0, redelivery_after_s - silent)))
    return sorted(found, key=lambda stall: -stall.silent_s)
