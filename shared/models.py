"""A finished model in storage: its card, whether a model id names one, and what later jobs may do with it.

Generation, evaluation and sweeps read a model through here; whether a continuation (``TrainSpec.continues``) or a
utility study may use it is asked here at submit time in the producer and again in the worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.contracts import Record, decode_json
from shared.layout import model_card_key
from shared.specs import TrainSpec
from shared.storage import Storage

# a card older than versioning reads as format 0 (shared/formats.py): format 1 less the fields added later
MODEL_CARD_FORMAT = 1


class ModelCard(Record, frozen=True, kw_only=True):
    """A trained model's card (``models/<job>/model.json``), written last: a card means the model is whole."""

    format: int = MODEL_CARD_FORMAT
    job_id: str
    dataset: str
    dataset_location: str
    num_train_images: int
    class_names: list[str]  # empty for an unconditional model
    # real training images per class (class index as a string): what `augment generate --rebalance` plans from
    class_counts: dict[str, int] = {}
    config: dict[str, Any]  # the GAN's config (worker.model.GANConfig)
    spec: dict[str, Any]
    recipe: dict[str, Any] = {}  # what the job ran, with the spec's automatic choices made (shared.specs.Recipe)
    steps: int
    final: dict[str, float]  # the last logged vital signs
    warnings: list[str] = []
    device: str
    precision: str = "fp32"
    threads: int | None = None  # torch's threads: a run with another count differs in its last bits (worker.threads)
    checkpoint: str  # the last checkpoint
    # the sampler at the best point of the validation curve; None: no curve (then the last is the best)
    best_checkpoint: str | None = None
    # the validation split and how the curve was measured (worker.validation.validation_record)
    validation: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []  # the validation curve: shared.progress.QualityPoint records
    best: dict[str, Any] | None = None  # the curve's point at the best checkpoint
    stopped_early: bool = False  # by --patience, at ``steps``
    teacher: dict[str, Any] | None = None  # how its teacher was trained, with its storage key; None without one
    grid: str
    loss_curve: str
    created_at: str

    def sampling_checkpoint(self, which: str) -> str:
        """The key of the checkpoint WHICH ("best" or "last") to sample from."""
        return self.best_checkpoint if which == "best" and self.best_checkpoint else self.checkpoint

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def channels(self) -> int:
        return int(self.config["channels"])


def read_model_card(text: str, model_id: str) -> ModelCard:
    return decode_json(ModelCard, text, f"the model card of {model_id}")


class ModelNotFound(LookupError):
    """No finished training job of that id in storage (its model card is written last)."""


def check_model(storage: Storage, model_id: str) -> None:
    """Raise ModelNotFound unless training job MODEL_ID has finished: the one test of "is this a model", for the
    producer (before it enqueues) and the workers alike."""
    if not storage.exists(model_card_key(model_id)):
        raise ModelNotFound(f"model {model_id} not found: {storage.url_for(model_card_key(model_id))} is missing")


def read_card(storage: Storage, model_id: str) -> ModelCard:
    """The model card of finished training job MODEL_ID; ModelNotFound if it has not finished."""
    check_model(storage, model_id)
    return read_model_card(storage.get_text(model_card_key(model_id)), model_id)


# what a continuation of a finished training job (TrainSpec.continues) may set otherwise than the job it continues
CONTINUED_FIELDS = frozenset({"job_id", "steps", "continues", "teacher_from"})


def continuation_problem(spec: TrainSpec, parent: ModelCard, recipe: Mapping[str, Any] | None = None) -> str | None:
    """Why SPEC cannot continue finished training job PARENT, in words; None when it can. A continuation must be the
    run PARENT was, carried on to more steps: the same settings and, where RECIPE (what SPEC runs, as a dict) is
    given, the same automatic choices."""
    mine, theirs = spec.to_dict(), TrainSpec.from_dict(parent.spec).to_dict()
    differ = sorted(name for name in mine if name not in CONTINUED_FIELDS and mine[name] != theirs.get(name))
    if differ:
        return f"its {', '.join(differ)} differ from {parent.job_id}'s; a continuation changes only the steps"
    if spec.steps is None or spec.steps <= parent.steps:
        return f"{parent.job_id} has trained {parent.steps} steps already; give more steps than that"
    if recipe is not None:
        chosen = json.loads(json.dumps(recipe))  # as the card holds it: tuples are lists
        drift = sorted(name for name, value in chosen.items() if name != "steps" and value != parent.recipe.get(name))
        if drift:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in drift)
            return (f"at {spec.steps} steps the automatic {', '.join(drift)} differ from {parent.job_id}'s; continue a "
                    f"job that was given {flags} explicitly")
    return None


def study_problem(card: ModelCard, holdout: str) -> str | None:
    """Why a utility study of CARD's model, scored on HOLDOUT, cannot run, in words; None when it can."""
    if holdout == "validation" and not card.validation.get("images"):
        return (f"model {card.job_id} has no validation split to score on ({card.validation.get('why_none')}); give "
                "--holdout test")
    if card.teacher is None:
        return (f"model {card.job_id} has no teacher, which labels the study's mixup and GAN samples; train it with "
                "--teacher 3")
    return None


