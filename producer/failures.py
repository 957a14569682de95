"""How ``augment`` fails: a one-line message that names the problem and its fix, and the documented exit code
(1 a job failed or a service is unreachable, 2 bad input with nothing enqueued, 3 cancelled); never a traceback,
except for a bug."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from producer.client import SubmitError
from producer.follow import BROKER_ERRORS, broker_fault
from shared.broker import BrokerUnreachable
from shared.datasets import DatasetNotFound
from shared.settings import DEFAULT_BROKER_URL, SettingsError
from shared.specs import SpecError
from shared.storage import StorageError

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"augment: error: {message}", err=True)
    sys.exit(code)


def fault_message(error: BaseException) -> str | None:
    """ERROR as the one line that names the problem and its fix, if it is a service's or the disk's; None for a bug.

    What a service raises in the middle of a command is raw (a Redis that went away after the first ping raises
    redis-py's, kombu's or a socket's error; S3 that refuses an object raises minio's), so it is named here. An
    OSError without a file name is taken for the broker's: S3's network errors arrive as StorageUnavailable.
    """
    if isinstance(error, (BrokerUnreachable, StorageError)):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:  # this machine's disk, not a connection
        return f"{error.filename}: {error.strerror or error}; check that it exists and that this user may write it"
    if isinstance(error, BROKER_ERRORS):
        return broker_fault(error, os.environ.get("AUGMENT_BROKER_URL") or DEFAULT_BROKER_URL)
    minio_error = getattr(sys.modules.get("minio.error"), "MinioException", None)  # imported only by an S3 store
    if minio_error is not None and isinstance(error, minio_error):
        endpoint = os.environ.get("AUGMENT_S3_ENDPOINT", "")
        reason = str(error).split("\n")[0] or type(error).__name__
        return f"S3 at {endpoint} refused a request ({reason}); check AUGMENT_S3_ACCESS_KEY / AUGMENT_S3_SECRET_KEY"
    return None


def handle_errors(command: F) -> F:
    """Turn the known failure types into one-line messages with the documented exit codes: bad input 2, and an
    unreachable or failing service (Redis, S3, the disk) 1, never a traceback. Anything else is a bug and shows one."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (SpecError, SettingsError, DatasetNotFound, SubmitError) as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except Exception as exc:
            message = fault_message(exc)
            if message is None:
                raise
            fail(message, EXIT_FAILED)

    return wrapper  # type: ignore[return-value]
