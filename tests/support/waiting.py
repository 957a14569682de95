"""Waiting on progress, never on the clock: a test polls what it expects until a bound, and the bound only ends a
wait that would otherwise hang (no test asserts how fast anything is)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout_s: float, what: str | Callable[[], str] = "condition",
             every_s: float = 0.1, ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Poll CONDITION every EVERY_S until it returns something true, and return that; after TIMEOUT_S, fail naming
    WHAT (a callable: the report of what was seen instead). Errors of the types IGNORING count as not yet (a page
    element replaced between its lookup and its read)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except ignoring:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what if isinstance(what, str) else what()}")
        time.sleep(every_s)
