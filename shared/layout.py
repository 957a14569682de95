"""Where a job's objects live in storage. One place, so producer, worker and readers agree.

    models/<train_job_id>/checkpoint.pt   model.json   teacher.pt   grid.png   losses.png   samples/step-0000500.png ...
    synthetic/<generate_job_id>/shard-000000.tar ...   manifest.json (written last)
    reports/<evaluate_job_id>/report.md   report.json   *.png
    references/<dataset>-<size>px-<channels>ch/classifier.pt   (the reference classifier, trained once)
"""

from __future__ import annotations

from shared.shards import shard_name
from shared.storage import join_key


def model_prefix(job_id: str) -> str:
    return join_key("models", job_id)


def checkpoint_key(job_id: str) -> str:
    return join_key("models", job_id, "checkpoint.pt")


def model_card_key(job_id: str) -> str:
    return join_key("models", job_id, "model.json")


def grid_key(job_id: str) -> str:
    return join_key("models", job_id, "grid.png")


def loss_curve_key(job_id: str) -> str:
    return join_key("models", job_id, "losses.png")


def teacher_key(job_id: str) -> str:
    return join_key("models", job_id, "teacher.pt")


def sample_grid_key(job_id: str, step: int) -> str:
    """The progress grid a training job drew at STEP (zero-padded, so the keys sort by step)."""
    return join_key("models", job_id, "samples", f"step-{step:07d}.png")


def synthetic_prefix(job_id: str) -> str:
    return join_key("synthetic", job_id)


def shard_key(job_id: str, index: int) -> str:
    return shard_object_key(job_id, shard_name(index))


def shard_object_key(job_id: str, name: str) -> str:
    """The key of a generation job's shard by its file name, as a manifest lists it."""
    return join_key(synthetic_prefix(job_id), name)


def manifest_key(job_id: str) -> str:
    return join_key("synthetic", job_id, "manifest.json")


def report_prefix(job_id: str) -> str:
    return join_key("reports", job_id)


def report_json_key(job_id: str) -> str:
    """An evaluation's report as data (shared.contracts); report.md beside it is the same for a person."""
    return join_key(report_prefix(job_id), "report.json")


def report_markdown_key(job_id: str) -> str:
    return join_key(report_prefix(job_id), "report.md")


def reference_key(dataset: str, image_size: int, channels: int) -> str:
    # a dataset name may hold a path (imagefolder:/data/x): keep it readable but key-safe
    safe = "".join(char if char.isalnum() or char in "-_" else "_" for char in dataset)
    return join_key("references", f"{safe}-{image_size}px-{channels}ch", "classifier.pt")
