"""Following a job in a terminal: the polling loop and the progress line that ``augment watch`` and the demo share."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from producer.client import Client
from shared.lifecycle import TERMINAL_STATES
from shared.progress import progress_from_dict, progress_line

LOG_LINE_INTERVAL_S = 5.0  # when stderr is a log file, not a terminal: a line every few seconds at most


def status_line(status: dict[str, Any]) -> str:
    """A job status (``Client.status``) as the one line a person reads, with any part waiting for a new worker."""
    line = progress_line(status["state"], progress_from_dict(status.get("progress")))
    return "; ".join([line, *(stall["note"] for stall in status.get("stalled", []))])


def follow(client: Client, job_id: str, poll_s: float) -> dict[str, Any]:
    """Show JOB_ID's progress on stderr until it ends (redrawn in place on a terminal); returns its final status."""
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

    final = client.wait(job_id, on_update=show, poll_s=poll_s)
    if interactive:
        click.echo("", err=True)
    return final
