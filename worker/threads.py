"""The torch threads of a training job: chosen when the job first starts, kept by every later part of it.

A job's weights depend on its thread count (oneDNN splits reductions between threads), so the count belongs to the
job: its checkpoints, its teacher and its card record it, and a resumed or continued job runs with the count its
earlier part ran with, whatever the worker it lands on would choose now. A fresh job takes AUGMENT_TORCH_THREADS,
else a thread per core it may use that nothing else keeps busy when it starts (:func:`shared.cpus.free_cpus`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from shared.cpus import free_cpus
from shared.models import ModelCard
from shared.settings import Settings
from worker.teacher import Teacher


def recorded_threads(saved: dict[str, Any] | None, earlier_teacher: Teacher | None, parent: ModelCard | None) -> int | None:
    """The thread count a job already trained with: its checkpoint SAVED's, else that of the teacher an earlier
    attempt stored, else that of PARENT, the job it continues; None for a job that starts from nothing (or from a
    checkpoint, teacher or card older than the record)."""
    if saved is not None:
        return saved.get("threads")
    if earlier_teacher is not None:
        return earlier_teacher.meta.get("threads")
    return parent.threads if parent is not None else None


def job_threads(settings: Settings, recorded: int | None) -> int:
    """The threads a job runs with: the count it RECORDED, else the setting, else a thread per free core within
    the worker's own count (its affinity and CPU quota: ``augment worker`` sets it)."""
    if recorded is not None:
        return recorded
    return settings.torch_threads or free_cpus(torch.get_num_threads())


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch runs COUNT intra-op threads inside; the process's own count comes back after (it is the next job's
    upper bound)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
