"""Leases: exclusive, expiring claims on a piece of work, renewed by a heartbeat while it runs.

A training job holds ``<job>:train`` and a shard task ``<job>:shard:<N>`` (see :class:`shared.jobs.Keys` for
where they live). Redis may hand one message to two workers (a redelivery after the visibility timeout, a
duplicated message); the lease makes the second wait instead of doing the same work beside the first.
"""

from __future__ import annotations

import threading

import redis

from shared.jobs import JobStore


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
        """Take the claim and start renewing it every ``ttl_s / 3``; False if someone else holds it."""
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
        """Stop renewing and give the claim up (if it is still ours), so the next worker need not wait it out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.release_lease(self.name, self.owner)
        except redis.RedisError:
            pass  # it expires by itself
