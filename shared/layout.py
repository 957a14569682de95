"""Where a job's objects live in storage. One place, so producer, worker and readers agree.

    models/<train_job_id>/model.json (written last)   samples/step-0000500.png ...
        checkpoints/a000001-step-0000500.pt ...   best/a000001-step-0000300.pt (the validation curve's best)
        teachers/a000001.pt   attempts/a000001/grid.png   losses.png
    synthetic/<generate_job_id>/shard-000000-a1.tar ...   manifest.json (written last)

A training attempt (its lease's epoch, ``a000001``) and a shard's attempt (``-a1``) write objects of their own: an
attempt cut off by a partition may write late, and its objects then land beside the ones the job's model card or
manifest names, never over them. Readers follow the card and the manifest, never a listing.
    reports/<evaluate_job_id>/report.md (written last)   report.json   *.png   attempts/a000001/ (each attempt's own)
    references/<dataset>-<size>px-<channels>ch-<steps>steps/classifier.pt   (a reference classifier, trained once)
"""

from __future__ import annotations

from shared.shards import shard_name
from shared.storage import join_key


def model_prefix(job_id: str) -> str:
    return join_key("models", job_id)


def checkpoints_prefix(job_id: str) -> str:
    return join_key("models", job_id, "checkpoints")


def checkpoint_key(job_id: str, attempt: int, step: int) -> str:
    """Zero-padded, so that the keys sort by attempt, then step: the last key is the latest attempt's latest state."""
    return join_key(checkpoints_prefix(job_id), f"a{attempt:06d}-step-{step:07d}.pt")


def best_prefix(job_id: str) -> str:
    return join_key("models", job_id, "best")


def best_checkpoint_key(job_id: str, attempt: int, step: int) -> str:
    """The sampling generator at the best point of the validation curve so far (the model card names the final one)."""
    return join_key(best_prefix(job_id), f"a{attempt:06d}-step-{step:07d}.pt")


def model_card_key(job_id: str) -> str:
    return join_key("models", job_id, "model.json")


def attempt_prefix(job_id: str, attempt: int) -> str:
    return join_key("models", job_id, "attempts", f"a{attempt:06d}")


def grid_key(job_id: str, attempt: int) -> str:
    return join_key(attempt_prefix(job_id, attempt), "grid.png")


def loss_curve_key(job_id: str, attempt: int) -> str:
    return join_key(attempt_prefix(job_id, attempt), "losses.png")


def teachers_prefix(job_id: str) -> str:
    return join_key("models", job_id, "teachers")


def teacher_key(job_id: str, attempt: int) -> str:
    return join_key(teachers_prefix(job_id), f"a{attempt:06d}.pt")


def sample_grid_key(job_id: str, step: int) -> str:
    """The progress grid a training job drew at STEP (zero-padded, so the keys sort by step)."""
    return join_key("models", job_id, "samples", f"step-{step:07d}.png")


def synthetic_prefix(job_id: str) -> str:
    return join_key("synthetic", job_id)


def shard_key(job_id: str, index: int, attempt: int | None = None) -> str:
    return shard_object_key(job_id, shard_name(index, attempt))


def shard_object_key(job_id: str, name: str) -> str:
    """The key of a generation job's shard by its file name, as a manifest lists it."""
    return join_key(synthetic_prefix(job_id), name)


def manifest_key(job_id: str) -> str:
    return join_key("synthetic", job_id, "manifest.json")


def report_prefix(job_id: str) -> str:
    return join_key("reports", job_id)


def report_attempt_prefix(job_id: str, attempt: int) -> str:
    """Where an attempt at an evaluation writes its report before the report is fixed and copied up one level."""
    return join_key(report_prefix(job_id), "attempts", f"a{attempt:06d}")


def report_json_key(job_id: str) -> str:
    """An evaluation's report as data (shared.contracts); report.md beside it is the same for a person."""
    return join_key(report_prefix(job_id), "report.json")


def report_markdown_key(job_id: str) -> str:
    return join_key(report_prefix(job_id), "report.md")


def reference_key(dataset: str, image_size: int, channels: int, steps: int, background: str = "white") -> str:
    """A classifier trained for fewer steps, or on images composited on another background, is another classifier:
    a smoke job's must not stand in for the real one."""
    # a dataset name may hold a path (imagefolder:/data/x): keep it readable but key-safe
    safe = "".join(char if char.isalnum() or char in "-_" else "_" for char in dataset)
    matte = "" if background == "white" else f"-on-{background.lstrip('#')}"
    return join_key("references", f"{safe}-{image_size}px-{channels}ch-{steps}steps{matte}", "classifier.pt")
