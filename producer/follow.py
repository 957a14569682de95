"""Following a job in a terminal: the polling loop and the progress line that ``augment watch`` and the demo share.

A broker that stops answering while a job is followed is waited out: one line says so, the loop retries with
backoff, another line says when the broker is back, and after ``give_up_after_s`` of outage the loop gives up with
:class:`BrokerUnreachable`. The job does not depend on the watcher: it runs on, and can be watched again.
"""

from __future__ import annotations

import sys
import time
from typing import Any
from urllib.parse import urlsplit

import click
import kombu.exceptions
import redis

from producer.client import Client
from shared.broker import BrokerUnreachable
from shared.lifecycle import PENDING, TERMINAL_STATES
from shared.progress import progress_from_dict, progress_line
from shared.settings import redact_url

LOG_LINE_INTERVAL_S = 5.0  # when stderr is a log file, not a terminal: a line every few seconds at most
GIVE_UP_AFTER_S = 120.0  # a Redis restart or failover takes seconds; minutes of silence is an outage to report
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0  # backoff between tries: a broker that is back is seen within 5 s

# What a broker that went away mid-command raises: redis-py's errors (the job records), kombu's (Celery's
# connection) and the socket errors beneath both (a timeout is an OSError).
BROKER_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, kombu.exceptions.OperationalError, OSError)


def broker_fault(error: BaseException, broker_url: str, fix: bool = True) -> str:
    """ERROR, raised while talking to the Redis at BROKER_URL, as one line that names the problem and (FIX) the fix."""
    where = f"Redis at {redact_url(broker_url)}"
    reason = str(error).split("\n")[0] or type(error).__name__
    password = urlsplit(broker_url).password
    if password:  # a library's message may quote the URL it was given
        reason = reason.replace(password, "***")
    if isinstance(error, redis.AuthenticationError):
        problem, remedy = f"{where} refused the password ({reason})", "fix AUGMENT_BROKER_URL"
    elif isinstance(error, redis.ResponseError):  # it answered, with an error: full, read-only, or a user without rights
        problem = f"{where} refused a command ({reason})"
        remedy = "check its log, its memory and the rights of AUGMENT_BROKER_URL's user"
    else:
        problem = f"{where} is unreachable ({reason})"
        remedy = "start it or point AUGMENT_BROKER_URL at a running Redis"
    return f"{problem}; {remedy}" if fix else problem


def status_line(status: dict[str, Any]) -> str:
    """A job status (``Client.status``) as the one line a person reads, with any part waiting for a new worker."""
    line = progress_line(status["state"], progress_from_dict(status.get("progress")))
    return "; ".join([line, *(stall["note"] for stall in status.get("stalled", []))])


def follow(client: Client, job_id: str, poll_s: float, give_up_after_s: float = GIVE_UP_AFTER_S) -> dict[str, Any]:
    """Show JOB_ID's progress on stderr until it ends (redrawn in place on a terminal); returns its final status.

    A broker error starts an outage: one line on stderr, tries with backoff, one line when a poll succeeds again.
    An outage longer than GIVE_UP_AFTER_S (0: none at all) raises :class:`BrokerUnreachable`; a try in progress
    may add up to the client's socket timeout (10 s) to it.
    """
    interactive = sys.stderr.isatty()
    last_line, last_print = "", 0.0

    def show(job: dict[str, Any]) -> None:
        nonlocal last_line, last_print
        line = status_line(job)
        if interactive:
            click.echo("\r\033[K" + line, nl=False, err=True)
        elif line != last_line and (time.monotonic() - last_print > LOG_LINE_INTERVAL_S or job["state"] in TERMINAL_STATES):
            click.echo(line, err=True)
            last_print = time.monotonic()
        last_line = line

    def say(message: str) -> None:  # a line of its own, over the progress line a terminal shows
        nonlocal last_line
        click.echo(("\r\033[K" if interactive else "") + f"augment: {message}", err=True)
        last_line = ""  # the progress line is shown again after it

    outage_began: float | None = None
    retry_s = RETRY_FIRST_S
    while True:
        tried_at = time.monotonic()
        try:
            job = client.status(job_id) or {"state": PENDING, "job_id": job_id}
        except BROKER_ERRORS as exc:
            now = time.monotonic()
            first = outage_began is None
            if outage_began is None:  # from the start of the failed try: a silent Redis took a socket timeout to say so
                outage_began = tried_at
            if now - outage_began >= give_up_after_s:
                # the job does not need a watcher: it runs on, and `augment watch` follows it again later
                raise BrokerUnreachable(
                    f"{broker_fault(exc, client.settings.broker_url)}; gave up watching after "
                    f"{now - outage_began:.0f} s, `augment watch {job_id}` again once it is back"
                ) from None
            if first:
                problem = broker_fault(exc, client.settings.broker_url, fix=False)
                say(f"{problem}; reconnecting for up to {give_up_after_s:g} s (--give-up-after)")
            time.sleep(min(retry_s, give_up_after_s - (now - outage_began)))
            retry_s = min(2 * retry_s, RETRY_MAX_S)
            continue
        if outage_began is not None:
            say(f"reconnected to Redis after {time.monotonic() - outage_began:.0f} s")
            outage_began, retry_s = None, RETRY_FIRST_S
        show(job)
        if job["state"] in TERMINAL_STATES:
            break
        time.sleep(poll_s)
    if interactive:
        click.echo("", err=True)
    return job
