"""The dashboard's view of the worker fleet: who answers Celery's inspect, what each serves and runs, and the job
leases that show what a worker busy training runs (a solo worker cannot answer inspect mid-task)."""

from __future__ import annotations

import threading
import time
from typing import Any

from producer.client import Client
from shared.keys import Keys
from shared.records import RedisJobStore

WORKERS_TTL_S = 3.0  # one inspect broadcast every few seconds at most, however many pages poll
INSPECT_TIMEOUT_S = 1.0


class Fleet:
    def __init__(self, client: Client):
        self.client = client
        self._lock = threading.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def workers(self) -> list[dict[str, Any]]:
        """Live workers: Celery's inspect replies, plus the job leases that workers renew while they run a task
        (a solo worker cannot answer inspect while it trains, but its lease shows what it runs)."""
        with self._lock:
            fetched_at, cached = self._cached
            if time.monotonic() - fetched_at < WORKERS_TTL_S:
                return cached
        workers = self._inspect_workers()
        with self._lock:
            self._cached = (time.monotonic(), workers)
        return workers

    def _inspect_workers(self) -> list[dict[str, Any]]:
        inspect = self.client.app.control.inspect(timeout=INSPECT_TIMEOUT_S)
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
        found: dict[str, dict[str, Any]] = {}

        def worker(name: str) -> dict[str, Any]:
            return found.setdefault(name, {"name": name, "answered": False, "pool": "", "concurrency": None,
                                           "queues": [], "running": []})

        for name, info in stats.items():
            entry = worker(name)
            pool = info.get("pool") or {}
            # "celery.concurrency.solo:TaskPool" -> "solo"
            implementation = str(pool.get("implementation", "")).split(":", 1)[0].rsplit(".", 1)[-1]
            entry |= {"answered": True, "pool": implementation,
                      "concurrency": pool.get("max-concurrency"), "pid": info.get("pid")}
        for name, declared in queues.items():
            worker(name)["queues"] = sorted(str(queue.get("name")) for queue in declared)
        for name, tasks in active.items():
            worker(name)["running"] += [f"{task.get('name')} {task.get('id')}" for task in tasks]
        for lease, owner in self._leases().items():
            worker(owner.split("/", 1)[0])["running"].append(f"lease {lease}")
        for entry in found.values():
            entry["running"] = sorted(set(entry["running"]))
        return sorted(found.values(), key=lambda entry: entry["name"])

    def _leases(self) -> dict[str, str]:
        """Lease name -> owner ("worker-hostname/nonce") of every lease held now."""
        store = self.client.store
        if not isinstance(store, RedisJobStore):
            return {}
        prefix = Keys.lease("")
        leases = {}
        for key in store.client.scan_iter(match=f"{prefix}*", count=500):
            owner = store.client.get(key)
            if owner is not None:
                leases[str(key)[len(prefix):]] = str(owner)
        return leases
