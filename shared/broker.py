"""The Celery configuration shared by the producer and the workers.

Both sides build their app with :func:`make_celery`, so serializer, queues and the Redis visibility timeout
cannot drift apart. The producer sends tasks by name and never imports the worker's task code (or torch).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from kombu import Queue
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.settings import Settings, redact_url
from shared.transport import TRANSPORT

TRAIN_TASK = "augment.train"
GENERATE_TASK = "augment.generate"
# a generation job fans out into one task per shard and a finaliser that writes the manifest
GENERATE_SHARD_TASK = "augment.generate_shard"
GENERATE_FINALIZE_TASK = "augment.generate_finalize"
EVALUATE_TASK = "augment.evaluate"
# a sweep's scheduler: a short look at its trials, which comes back every poll_s until the sweep ends
SWEEP_TASK = "augment.sweep"
TRAIN_QUEUE = "train"
GENERATE_QUEUE = "generate"
EVALUATE_QUEUE = "evaluate"
SWEEP_QUEUE = "sweep"
QUEUES = (TRAIN_QUEUE, GENERATE_QUEUE, EVALUATE_QUEUE, SWEEP_QUEUE)
QUEUE_OF_TASK = {
    TRAIN_TASK: TRAIN_QUEUE,
    GENERATE_TASK: GENERATE_QUEUE,
    GENERATE_SHARD_TASK: GENERATE_QUEUE,
    GENERATE_FINALIZE_TASK: GENERATE_QUEUE,
    EVALUATE_TASK: EVALUATE_QUEUE,
    SWEEP_TASK: SWEEP_QUEUE,
}
CONNECT_TIMEOUT_S = 3.0


def shard_task_id(job_id: str, index: int, nonce: str) -> str:
    """The message id of one of a generation job's shard tasks: reconciliation finds a shard's message by it."""
    return f"{job_id}-shard-{index:06d}-{nonce}"


def finalize_task_id(job_id: str, nonce: str) -> str:
    """The message id of a generation job's finaliser."""
    return f"{job_id}-finalize-{nonce}"
# A command that got no answer in this long fails (and a patient client sends it again on a new connection).
COMMAND_TIMEOUT_S = 10.0
# The kernel gives a connection up once what it sent has gone unacknowledged this long. Shorter than the command
# timeout on purpose: by the time redis-py abandons a connection, its kernel has stopped retransmitting, so a
# request cannot reach Redis after a partition heals and run beside the copy that was sent again (measured: a
# forget_shard that arrived 21.7 s after a heal). Keepalive probes find a silent peer of an idle connection.
UNACKED_TIMEOUT_MS = 8_000


def keepalive_options() -> dict[int, int]:
    """TCP options for every Redis connection (where the platform has them: the producer may run on a laptop)."""
    wanted = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": UNACKED_TIMEOUT_MS}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def restore_interval_s(visibility_timeout_s: int) -> int:
    """Seconds between a worker's sweeps for messages whose holder died."""
    return max(1, min(5, visibility_timeout_s // 4))


def redelivery_after_s(settings: Settings) -> float:
    """At most this long after a holder's last heartbeat, its unfinished message is back in its queue."""
    return settings.visibility_timeout_s + restore_interval_s(settings.visibility_timeout_s)


class BrokerUnreachable(RuntimeError):
    """Redis could not be reached; the message names the URL (password masked) and the fix."""


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        # A message whose holder stopped heartbeating this long ago is handed to another worker; a live holder
        # keeps its messages invisible however long they run (shared.transport). Producer and worker agree on it.
        "visibility_timeout": settings.visibility_timeout_s,
        # Every worker sweeps for such messages every few seconds; kombu's defaults sweep every 100 s, which
        # would leave a dead worker's task waiting long after its visibility timeout.
        "unacked_restore_interval": restore_interval_s(settings.visibility_timeout_s),
        "unacked_restore_throttle": 1,
        # A worker killed inside a sweep leaves the sweep's lock behind; kombu's 300 s expiry would stop every
        # sweep for that long. A sweep takes milliseconds, and two at once are safe (each restore is a transaction).
        "unacked_mutex_expire": 10,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": 30,  # longer than a BRPOP's own wait; keepalive finds a silent Redis sooner
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
    }
    redis_broker = urlsplit(settings.broker_url).scheme in {"redis", "rediss"}
    return {
        "broker_url": settings.broker_url,
        # kombu's Redis transport, except that a malformed queue item is dropped instead of stopping the worker
        **({"broker_transport": TRANSPORT} if redis_broker else {}),
        "result_backend": "cache+memory://" if settings.broker_url.startswith("memory") else settings.broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "redis_socket_connect_timeout": CONNECT_TIMEOUT_S,
        "redis_socket_timeout": 30,
        "redis_socket_keepalive": True,  # the backend only encodes and names the state records: shared.lifecycle writes
        "broker_connection_timeout": CONNECT_TIMEOUT_S,
        "broker_connection_retry_on_startup": True,
        # JSON only: a message from the queue is untrusted input and must never be unpickled.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": {name: {"queue": queue} for name, queue in QUEUE_OF_TASK.items()},
        "task_queues": tuple(Queue(name) for name in QUEUES),
        "task_default_queue": TRAIN_QUEUE,
        # A task is acknowledged after it finishes, so a worker that dies mid-task leaves it for another worker.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Tasks keep no results (ignore_result): a job's state is written by shared.lifecycle alone, into this backend.
        "result_expires": 30 * 24 * 3600,
        "broker_connection_max_retries": 3,
        # Job state and progress writes ride out a Redis restart (seconds) instead of failing the job.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_max_sleep_between_retries_ms": 2000,
    }


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    app = Celery("augment", include=include or [])
    app.conf.update(celery_config(settings))
    return app


def redis_client(settings: Settings, patient: bool = False) -> redis.Redis:
    """A client for job records, with short timeouts so a dead Redis fails fast instead of hanging.

    PATIENT clients (the workers') retry a lost connection with backoff for about half a minute, so that a
    Redis restart pauses a job instead of failing it; a person at a terminal gets the error at once. Sending a
    command again is safe because every write of the job system is idempotent (shared.records), and the TCP options
    make sure the first copy of a command is dead before the second goes out.
    """
    patience: dict[str, Any] = {
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    } if patient else {}
    return redis.Redis.from_url(
        settings.broker_url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S, decode_responses=True,
        socket_keepalive=True, socket_keepalive_options=keepalive_options(), **patience
    )


def check_broker(settings: Settings) -> redis.Redis:
    """Ping Redis once; raise :class:`BrokerUnreachable` with a one-line reason on failure."""
    client = redis_client(settings)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise BrokerUnreachable(
            f"Redis at {redact_url(settings.broker_url)} refused the password; fix AUGMENT_BROKER_URL"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise BrokerUnreachable(
            f"Redis at {redact_url(settings.broker_url)} is unreachable ({reason}); "
            "start it or point AUGMENT_BROKER_URL at a running Redis"
        ) from None
    return client
