"""The CLI under faults: a Redis that stops, pauses or refuses gives one line on stderr and exit 1, never a traceback;
`augment watch` rides out an outage (one line when it starts, one when Redis is back) and gives up after a bound.

A paused redis-server (SIGSTOP) stands in for a silent network partition: the kernel still accepts connections and
takes the bytes, nothing answers, and every command waits out the client's socket timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
import redis
from click.testing import CliRunner

from producer import cli, failures
from tests.support.processes import REPO, run_cli
from tests.support.servers import RedisServer
from tests.support.waiting import wait_for

COMMANDS_OF_A_JOB = ("status", "watch", "cancel")
WAIT_S = 30.0  # a bound on every wait below: a socket timeout (10 s) and a backoff step (5 s) fit in it


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error RESULT printed: exit 1 and a single line on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augment: error: "), result.stderr
    return lines[0]


def submit_pending_job(env: dict[str, str]) -> str:
    """A training job that stays queued (no worker runs here), for commands to look at."""
    submitted = run_cli(env, "train", "--dataset", "fake", "--steps", "2", "--width", "8", "--teacher", "0", timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


class Watcher:
    """`augment watch JOB` in a process of its own, its stderr in a file (not a terminal: one line per event)."""

    def __init__(self, env: dict[str, str], job_id: str, log: Path, give_up_after_s: float):
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "producer.cli", "watch", job_id, "--interval", "0.2",
                 "--give-up-after", str(give_up_after_s)],
                env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = WAIT_S) -> None:
        wait_for(lambda: text in self.stderr or self.process.poll() is not None, timeout_s, repr(text))
        assert text in self.stderr, f"watch exited with {self.process.returncode}:\n{self.stderr}"

    def wait(self, timeout_s: float = WAIT_S) -> int:
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def start(env: dict[str, str], job_id: str, give_up_after_s: float = 60) -> Watcher:
        watcher = Watcher(env, job_id, tmp_path / f"watch-{len(started)}.err", give_up_after_s)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.kill()


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """SIGSTOP the server's process for the block: alive and silent, as behind a partition."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@pytest.mark.integration
def test_every_command_fails_in_one_line_when_redis_is_stopped(augment_env, redis_server: RedisServer):
    job_id = submit_pending_job(augment_env)
    redis_server.stop()
    try:
        results = [run_cli(augment_env, command, job_id, timeout=60) for command in COMMANDS_OF_A_JOB]
        results += [run_cli(augment_env, "list", timeout=60),
                    run_cli(augment_env, "train", "--dataset", "fake", timeout=60)]
    finally:
        redis_server.start()
    for result in results:
        line = one_error_line(result)
        assert "is unreachable" in line and "AUGMENT_BROKER_URL" in line, line


@pytest.mark.integration
def test_a_redis_that_refuses_commands_midway_gives_one_line(augment_env, redis_server: RedisServer):
    # a user that may ping but nothing else: the connect-time check passes and the first real command fails
    user, password = f"ping-only-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(augment_env["AUGMENT_BROKER_URL"])
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["-@all", "+ping", "+select", "+client"])
    try:
        job_id = submit_pending_job(augment_env)
        env = dict(augment_env, AUGMENT_BROKER_URL=augment_env["AUGMENT_BROKER_URL"].replace("redis://", f"redis://{user}:{password}@"))
        results = [run_cli(env, command, job_id, timeout=60) for command in COMMANDS_OF_A_JOB]
        results += [run_cli(env, "list", timeout=60), run_cli(env, "train", "--dataset", "fake", timeout=60)]
    finally:
        admin.acl_deluser(user)
    for result in results:
        line = one_error_line(result)
        assert "refused a command" in line and f"{user}:***@" in line, line
        assert password not in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_watch_reconnects_when_redis_comes_back(augment_env, redis_server: RedisServer, watch, outage: str):
    job_id = submit_pending_job(augment_env)
    watcher = watch(augment_env, job_id)
    watcher.wait_for("PENDING")
    began = time.monotonic()
    if outage == "stopped":
        redis_server.stop()
        try:
            watcher.wait_for("reconnecting")
        finally:
            redis_server.start()
    else:
        with paused(redis_server):
            watcher.wait_for("reconnecting")
    print(f"watch noticed the {outage} Redis after {time.monotonic() - began:.1f} s")
    watcher.wait_for("reconnected")

    cancelled = run_cli(augment_env, "cancel", job_id, timeout=60)
    assert cancelled.returncode == 0, cancelled.stderr
    assert watcher.wait() == failures.EXIT_CANCELLED, watcher.stderr  # it follows the job to its end, as if nothing happened
    assert "Traceback" not in watcher.stderr, watcher.stderr
    assert watcher.stderr.count("reconnecting") == 1 and watcher.stderr.count("reconnected") == 1, watcher.stderr


@pytest.mark.integration
def test_watch_gives_up_on_a_redis_that_stays_away(augment_env, redis_server: RedisServer, watch):
    job_id = submit_pending_job(augment_env)
    watcher = watch(augment_env, job_id, give_up_after_s=1)
    watcher.wait_for("PENDING")
    redis_server.stop()
    try:
        code = watcher.wait()
    finally:
        redis_server.start()
    assert code == 1 and "Traceback" not in watcher.stderr, watcher.stderr
    errors = [line for line in watcher.stderr.splitlines() if line.startswith("augment: error: ")]
    assert len(errors) == 1 and "gave up watching" in errors[0] and f"augment watch {job_id}" in errors[0], watcher.stderr


# ---- the central handler, without servers: what kombu and the socket layer raise ----


class FailingClient:
    """A Client whose every call raises ERROR, as a broker that went away after `connect` would."""

    def __init__(self, error: Exception):
        self.error = error

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise self.error

        return call


@pytest.mark.parametrize("error", [
    kombu.exceptions.OperationalError("Error 111 connecting to 10.0.0.9:6379. Connection refused."),
    TimeoutError("timed out"),  # what a socket timeout is
    redis.ConnectionError("Connection reset by peer"),
])
def test_broker_errors_midway_are_one_line(monkeypatch, error: Exception):
    monkeypatch.setattr(cli, "connect", lambda: FailingClient(error))
    result = CliRunner().invoke(cli.main, ["list"], env={"AUGMENT_BROKER_URL": "redis://:hunter2@10.0.0.9:6379/0"})
    assert result.exit_code == 1 and not isinstance(result.exception, Exception), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Redis at redis://:***@10.0.0.9:6379/0 is unreachable" in lines[0], result.stderr
    assert "hunter2" not in result.output


def test_a_bug_still_shows_its_traceback(monkeypatch):
    monkeypatch.setattr(cli, "connect", lambda: FailingClient(KeyError("state")))
    result = CliRunner().invoke(cli.main, ["list"])
    assert isinstance(result.exception, KeyError)
