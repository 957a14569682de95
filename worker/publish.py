"""What a finished training job leaves for people and for the generation jobs: the final real-vs-generated grid,
the loss curve and the model card (written last: a model card means the model is complete).

The attempt that finishes writes its grid and curve under its own prefix, then fixes its card in Redis (a fenced
commit: refused once its lease was taken over), and only then writes the card at the job's stable key. An attempt cut
off by a partition cannot fix its card, so it never writes there; whoever writes the card writes the fixed bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from shared.contracts import TrainResult
from shared.layout import best_prefix, checkpoints_prefix, grid_key, loss_curve_key, model_card_key
from shared.lifecycle import JobStopped, StopReason
from shared.models import ModelCard, read_model_card
from shared.progress import QualityPoint, best_point
from shared.specs import Recipe, TrainSpec
from shared.storage import Storage
from worker import charts, checkpoint
from worker.data import ImageData
from worker.images import ProgressGrid, grid_png
from worker.networks import Generator


def loss_curve_png(history: list[dict[str, float]]) -> bytes:
    steps = [record["step"] for record in history]
    figure, (losses, outputs) = charts.subplots(1, 2, figsize=(10, 3.5))
    losses.plot(steps, [r["loss_d"] for r in history], label="loss_D")
    losses.plot(steps, [r["loss_g"] for r in history], label="loss_G")
    losses.set_xlabel("step")
    losses.legend()
    outputs.plot(steps, [r["d_x"] for r in history], label="D(x)")
    outputs.plot(steps, [r["d_g_z"] for r in history], label="D(G(z))")
    outputs.set_xlabel("step")
    outputs.set_ylim(0, 1)
    outputs.legend()
    return charts.png(figure)


@dataclass(frozen=True)
class TrainedModel:
    """What the training loop hands over: the generator to sample from and how the run went."""

    sampler: Generator
    grid: ProgressGrid  # the run's progress grid: the final one is drawn from the same noise and real images
    steps: int
    history: list[dict[str, float]]
    warnings: list[str]
    device: torch.device
    precision: str  # what the job trained in: fp32 or bf16
    teacher: dict[str, Any] | None  # how its teacher was trained (worker.teacher) with its key, or None
    recipe: Recipe  # what the job ran, with the spec's automatic choices made
    attempt: int  # the lease epoch of the attempt that trained it: its objects carry it
    checkpoint: str  # the key of its final checkpoint
    curve: list[QualityPoint]  # its validation curve (worker.validation); empty without a validation split
    best_checkpoint: str | None  # the key of the sampler at the curve's best point
    stopped_early: bool  # by its patience, before the steps its recipe planned
    validation: dict[str, Any]  # the split and how the curve was measured, for the card


def publish_model(storage: Storage, spec: TrainSpec, model: TrainedModel, data: ImageData, trained_on: ImageData,
                  commit: Callable[[str], str | None]) -> TrainResult:
    """Write the grid, loss curve and model card of a trained MODEL, the card once COMMIT has fixed it; returns the
    job's result. DATA is the job's images, TRAINED_ON the part of them left after the validation split. COMMIT
    answers the card that is fixed (this one, or another attempt's), None when this attempt lost its lease: then it
    raises JobStopped."""
    config = model.sampler.config
    grid = grid_key(spec.job_id, model.attempt)
    storage.put_bytes(grid, grid_png(model.grid.sample(model.sampler), model.grid.real), "image/png")
    curve = loss_curve_key(spec.job_id, model.attempt)
    storage.put_bytes(curve, loss_curve_png(model.history), "image/png")
    card = ModelCard(
        job_id=spec.job_id,
        dataset=spec.dataset,
        dataset_location=data.info.location,
        num_train_images=len(trained_on),
        class_names=model.grid.class_names,
        class_counts={str(label): int(count) for label, count in
                      enumerate(torch.bincount(data.labels, minlength=config.num_classes).tolist())} if config.conditional else {},
        config=checkpoint.config_dict(config),
        spec=spec.to_dict(),
        recipe=asdict(model.recipe),
        steps=model.steps,
        final=model.history[-1] if model.history else {},
        warnings=model.warnings,
        device=str(model.device),
        precision=model.precision,
        threads=torch.get_num_threads(),
        checkpoint=model.checkpoint,
        best_checkpoint=model.best_checkpoint,
        validation=model.validation,
        curve=[asdict(point) for point in model.curve],
        best=asdict(best) if (best := best_point(model.curve, spec.select)) is not None else None,
        stopped_early=model.stopped_early,
        teacher=model.teacher,
        grid=grid,
        loss_curve=curve,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    committed = commit(card.to_json())
    if committed is None:
        raise JobStopped(StopReason.LEASE_LOST, f"job {spec.job_id} finished training, but its lease was taken over")
    return write_card(storage, spec.job_id, committed)


def write_card(storage: Storage, job_id: str, committed: str) -> TrainResult:
    """Write the fixed model card COMMITTED at the job's stable key and drop the checkpoints it does not name; the
    job's result. Run again (its worker died after the commit), it writes the same bytes."""
    card = read_model_card(committed, job_id)
    storage.put_text(model_card_key(job_id), committed)
    kept = {card.checkpoint, card.best_checkpoint}
    for key in set(storage.list(checkpoints_prefix(job_id)) + storage.list(best_prefix(job_id))) - kept:
        storage.delete(key)  # the states on the way, this attempt's and earlier ones'
    return TrainResult(
        model=job_id,
        steps=card.steps,
        model_card=storage.url_for(model_card_key(job_id)),
        checkpoint=storage.url_for(card.checkpoint),
        best_checkpoint=storage.url_for(card.best_checkpoint) if card.best_checkpoint else None,
        best=card.best,
        grid=storage.url_for(card.grid),
        loss_curve=storage.url_for(card.loss_curve),
        final=card.final,
        warnings=card.warnings,
    )
