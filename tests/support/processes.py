"""Real `augment` processes for tests: CLI invocations and worker processes.

Both run in this machine's network namespace, or, given ``netns_host=``, on a
host of a :class:`tests.support.netns.Network` (through ``ip netns exec``,
which execs Python: the worker's pid and process group stay its own, so
killing it works the same).  They then reach Redis and S3 at the addresses in
their environment, so give them servers started on hosts of the same network.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from shared.records import RedisJobStore
from tests.support.servers import S3Server
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from tests.support.netns import Host

REPO = Path(__file__).resolve().parents[2]  # the checkout: processes run from its root


def service_env(broker_url: str, s3: S3Server, storage_url: str, **extra: str) -> dict[str, str]:
    """This process's environment, less any AUGMENT_* of its own, pointed at BROKER_URL and the S3 server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUGMENT_")}
    env.update({
        "AUGMENT_BROKER_URL": broker_url,
        "AUGMENT_STORAGE_URL": storage_url,
        "AUGMENT_S3_ENDPOINT": s3.endpoint,
        "AUGMENT_S3_ACCESS_KEY": s3.access_key,
        "AUGMENT_S3_SECRET_KEY": s3.secret_key,
        "AUGMENT_S3_SECURE": "false",
        "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return env


def _on(netns_host: Host | None, argv: Sequence[str]) -> list[str]:
    """ARGV as it is spawned: as is, or prefixed to run on NETNS_HOST."""
    return netns_host.command(argv) if netns_host is not None else list(argv)


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120, netns_host: Host | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `augment ARGS...` as a separate process, the way a user does (on NETNS_HOST if given)."""
    return subprocess.run(
        _on(netns_host, [sys.executable, "-m", "producer.cli", *args]),
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


class WorkerProcess:
    """`augment worker` in its own process group, logging to a file."""

    def __init__(
        self, env: dict[str, str], log_path: Path, queues: str = "train,generate,evaluate,sweep", *options: str,
        netns_host: Host | None = None,
    ):
        self.env = env
        self.netns_host = netns_host  # run on this test bed host (tests/support/netns.py), else here
        self.log_path = log_path
        self.queues = queues
        self.options = options  # more `augment worker` options, e.g. "--pool", "threads"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> WorkerProcess:
        """Start the process and return at once (:meth:`start` also waits until it is ready)."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            _on(self.netns_host, [sys.executable, "-m", "producer.cli", "worker", "--queues", self.queues, "--loglevel", "INFO",
                                  *self.options]),
            env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    def start(self, timeout: float = 90) -> WorkerProcess:
        self.launch()
        try:
            self.wait_ready(timeout)
        except AssertionError:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Until the launched worker logs that it is ready; RuntimeError with its log if it exits first."""
        process = self.process
        assert process is not None

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}:\n{self.log_tail()}")
            return b" ready." in self.log_path.read_bytes()

        wait_for(ready, timeout_s, lambda: f"{self.log_path.name} to be ready; it logged:\n{self.log_tail()}", every_s=0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, as a preempted machine or the OOM killer would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> None:
        """SIGTERM, as docker stop, Kubernetes or a spot-instance notice sends; returns at once."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, timeout: float = 30) -> float | None:
        """SIGTERM and wait for the worker to exit; returns the seconds it took, or None if it had to be SIGKILLed."""
        if not self.process or self.process.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        return time.monotonic() - began


def train_tiny_model(env: dict[str, str]) -> str:
    submitted = run_cli(env, "train", "--dataset", "fake", "--steps", "10", "--width", "8", "--batch-size", "32")
    assert submitted.returncode == 0, submitted.stderr
    model = submitted.stdout.strip()
    watched = run_cli(env, "watch", model, "--interval", "0.2", timeout=180)
    assert watched.returncode == 0, watched.stderr
    return model


def shard_writes(workers: list[WorkerProcess], job_id: str) -> Counter[tuple[str, int]]:
    """(worker log, shard index) for every 'wrote shard' line of JOB_ID in the workers' logs."""
    pattern = re.compile(rf"job {job_id}: wrote shard (\d+) ")
    return Counter(
        (worker.log_path.name, int(index)) for worker in workers for index in pattern.findall(worker.log_path.read_text())
    )


def job_store(env: dict[str, str]) -> RedisJobStore:
    """The job records of the Redis that ENV's processes use."""
    return RedisJobStore(redis.Redis.from_url(env["AUGMENT_BROKER_URL"], decode_responses=True))


def parts_held_by(worker: WorkerProcess, store: RedisJobStore, job_id: str) -> list[str]:
    """The parts of JOB_ID whose last heartbeat came from WORKER (the worker is named after its pid)."""
    return [part for part, beat in store.liveness.beats(job_id).items() if beat.owner.startswith(f"augment-{worker.pid}@")]


@contextmanager
def spinning_on(core: int) -> Iterator[None]:
    """A process that keeps CORE busy, as another job or a noisy neighbour would, from the moment this enters."""
    spinner = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", "print(flush=True)\nwhile True: pass"],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    started = spinner.stdout
    assert started is not None
    try:
        started.readline()  # it has started and spins
        yield
    finally:
        spinner.kill()
        spinner.wait()
        started.close()
