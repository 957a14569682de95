"""Shared pytest fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.records import JobStore, MemoryJobStore, RedisJobStore
from tests.support.processes import WorkerProcess, service_env, spinning_on
from tests.support.servers import RedisServer, S3Server

# ---- real servers ----
# Session-scoped, real processes on free 127.0.0.1 ports (see tests/support/servers.py).
# Tests may stop()/kill()/start() them (outage tests): a restart keeps the port,
# URL/endpoint, credentials and data.  Such tests must leave them running again
# (try/finally: server.start() -- start() is a no-op if already running).
# Data is shared across the session: use unique keys / bucket names.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """redis-server with AOF (appendfsync always); `.url`, `.port`, `.restart()`."""
    srv = RedisServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """SeaweedFS S3: `.endpoint`, `.access_key`, `.secret_key`, `.client()`."""
    srv = S3Server()
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


# ---- the system under test ----
@pytest.fixture
def redis_job_store(redis_server: RedisServer) -> RedisJobStore:
    """A job store on an empty database of the real Redis."""
    return RedisJobStore(redis.Redis.from_url(redis_server.fresh_db_url(), decode_responses=True))


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def job_store(request: pytest.FixtureRequest) -> JobStore:
    """Each job store: the demo's in-process one, and one on the real Redis (an integration test)."""
    if request.param == "memory":
        return MemoryJobStore()
    return request.getfixturevalue("redis_job_store")  # type: ignore[no-any-return]


@pytest.fixture
def augment_env(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> dict[str, str]:
    """Environment for `augment` processes: an empty Redis database and a fresh S3 bucket of their own."""
    return service_env(
        redis_server.fresh_db_url(), s3_server, f"s3://test-{uuid.uuid4().hex[:12]}/augment",
        AUGMENT_DATA_DIR=str(tmp_path / "data"),
    )


@pytest.fixture
def start_worker(augment_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `augment worker` processes on demand; all are killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(queues: str = "train,generate,evaluate,sweep", env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(env or augment_env, tmp_path / f"worker-{len(started)}.log", queues)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def busy_core() -> Iterator[int]:
    """The last core this process may use, kept busy by another process for the test."""
    core = max(os.sched_getaffinity(0))
    with spinning_on(core):
        yield core


# ---- small trained models ----


@pytest.fixture(scope="session")
def fake_classifier() -> tuple[Any, Any, Any]:
    """The `fake` dataset's train and test splits and a classifier trained on the former (seconds on a CPU)."""
    from shared.settings import Settings
    from worker.classifier import train_classifier
    from worker.data import load_dataset

    train = load_dataset("fake", Settings(), "train")
    test = load_dataset("fake", Settings(), "test")
    return train, test, train_classifier(train.images, train.labels, 10, steps=150, batch_size=64)
