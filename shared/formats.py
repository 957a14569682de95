"""One versioning rule for everything gan-augment stores or sends: model cards, results and reports
(shared/contracts.py), manifests (shared/manifest.py), checkpoints (worker/checkpoint.py) and job specs
(shared/specs.py, whose field is called ``version``).

Each object carries an integer format. One that has none predates versioning and is format 0. A reader reads its
own format and every older one down to the oldest it still knows (older objects miss fields that later formats
added with defaults), and refuses a newer one, which only a newer gan-augment can read.
"""

from __future__ import annotations

from collections.abc import Callable

UNVERSIONED = 0


class FormatError(ValueError):
    """A stored or sent object cannot be read as its declared type: a format this reader does not read, or content
    that does not fit it."""


def check_format(what: str, written: object, current: int, oldest: int = UNVERSIONED,
                 error: Callable[[str], Exception] = FormatError) -> int:
    """WRITTEN, the format an object of WHAT carries (None when it carries none), if this reader reads it: from
    OLDEST to CURRENT. Otherwise ERROR (the reader's own kind of FormatError) of one line that says what to do."""
    format_ = UNVERSIONED if written is None else written
    if not isinstance(format_, int) or isinstance(format_, bool) or format_ < oldest:
        shown = "no format" if written is None else f"format {written!r}"
        raise error(f"{what} has {shown}; this reader reads formats {oldest} to {current}: run the job again "
                    "to write it in the current format")
    if format_ > current:
        raise error(f"{what} is format {format_}, newer than this reader (format {current}): upgrade gan-augment")
    return format_
