"""Self-describing checkpoints: everything needed to resume training or rebuild the generator.

A checkpoint holds both networks, both optimizers, the step, the model config, the job spec, the noise RNG
state and a format version, so a generator can be rebuilt without the code path that trained it. Checkpoints are
read with ``weights_only=True``: a file carrying a pickled object is refused instead of executed.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from shared.formats import FormatError, check_format
from shared.layout import best_checkpoint_key, checkpoint_key, checkpoints_prefix
from shared.models import ModelCard, ModelNotFound, read_card
from shared.progress import QualityPoint
from shared.specs import CheckpointChoice, TrainSpec
from shared.storage import Storage
from worker.model import GANConfig
from worker.networks import Discriminator, Generator, build_generator

CHECKPOINT_FORMAT = 1
OLDEST_CHECKPOINT_FORMAT = 1  # checkpoints were versioned from the start
CHECKPOINT_KIND = "gan-augment/dcgan"


@dataclass
class TrainState:
    """Everything that changes during training: what a checkpoint stores, built and read back here alone."""

    config: GANConfig
    generator: Generator
    discriminator: Discriminator
    generator_ema: Generator | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise_rng: torch.Generator
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    curve: list[QualityPoint] = field(default_factory=list)  # the validation curve so far (worker.validation)
    best_checkpoint: str | None = None  # the key of the sampler at the curve's best point

    @property
    def sampler(self) -> Generator:
        """The generator to sample from: the moving average when there is one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def to_checkpoint(self, spec: TrainSpec, class_names: list[str]) -> dict[str, Any]:
        """The checkpoint of this state (:func:`to_bytes` adds its format and kind)."""
        return {
            "config": config_dict(self.config),
            "spec": spec.to_dict(),
            "class_names": class_names,
            "step": self.step,
            "generator": self.generator.state_dict(),
            "generator_ema": self.generator_ema.state_dict() if self.generator_ema is not None else None,
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": {"noise": self.noise_rng.get_state()},
            "history": self.history,
            "warnings": self.warnings,
            "curve": [asdict(point) for point in self.curve],
            "best_checkpoint": self.best_checkpoint,
            "threads": torch.get_num_threads(),  # a resumption runs with these (worker.threads)
        }

    def to_sampler_checkpoint(self, spec: TrainSpec, class_names: list[str]) -> dict[str, Any]:
        """Only what sampling needs: the sampling generator's weights (a fifth of a full checkpoint, no optimizers)."""
        return {
            "config": config_dict(self.config), "spec": spec.to_dict(), "class_names": class_names, "step": self.step,
            "generator": self.sampler.state_dict(), "generator_ema": None,
        }

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint that :meth:`to_checkpoint` built (read back by :func:`load`)."""
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        if self.generator_ema is not None:
            self.generator_ema.load_state_dict(state["generator_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.noise_rng.set_state(state["rng"]["noise"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.warnings = list(state.get("warnings", []))
        self.curve = [QualityPoint.from_dict(point) for point in state.get("curve", [])]
        self.best_checkpoint = state.get("best_checkpoint")


class CheckpointError(FormatError):
    """A checkpoint is unreadable, unsafe or of a format this worker does not read."""


def to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "kind": CHECKPOINT_KIND, **state}, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, source: str) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"{source} was refused: it is not a plain tensor checkpoint ({first_line})") from None
    except Exception as exc:  # zip/format errors from torch.load
        raise CheckpointError(f"{source} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{source} is not a gan-augment checkpoint")
    check_format(source, state.get("format"), CHECKPOINT_FORMAT, OLDEST_CHECKPOINT_FORMAT, CheckpointError)
    return state


def save(storage: Storage, job_id: str, attempt: int, state: dict[str, Any]) -> str:
    """Store STATE as ATTEMPT's checkpoint at its step; returns its key. Storage puts are atomic (rename for files,
    single PUT for S3), so no checkpoint is ever a torn file."""
    key = checkpoint_key(job_id, attempt, int(state["step"]))
    storage.put_bytes(key, to_bytes(state))
    return key


def save_best(storage: Storage, job_id: str, attempt: int, state: dict[str, Any]) -> str:
    """Store STATE (:meth:`TrainState.to_sampler_checkpoint`) as ATTEMPT's best sampler at its step; returns its key."""
    key = best_checkpoint_key(job_id, attempt, int(state["step"]))
    storage.put_bytes(key, to_bytes(state))
    return key


def load(storage: Storage, job_id: str) -> dict[str, Any] | None:
    """The latest checkpoint of the latest attempt at job JOB_ID, None when no attempt stored one.

    An older attempt cut off by a partition may store a checkpoint late; its key sorts before every key of the
    attempts after it, so it never becomes the latest. Every checkpoint of a job is a state of the same seeded run,
    so whichever is resumed, the job ends with the same weights.
    """
    keys = storage.list(checkpoints_prefix(job_id))
    return from_bytes(storage.get_bytes(keys[-1]), storage.url_for(keys[-1])) if keys else None


def load_model(storage: Storage, model_id: str, device: torch.device,
               which: CheckpointChoice = "best") -> tuple[Generator, ModelCard]:
    """The sampling generator of a finished training job and its model card: from the best checkpoint on its
    validation curve, or from its last (also what a model trained without a curve has as its best)."""
    card = read_card(storage, model_id)
    key = card.sampling_checkpoint(which)
    if not storage.exists(key):
        raise ModelNotFound(f"model {model_id} has a model card but no checkpoint {storage.url_for(key)}")
    return generator_from_state(from_bytes(storage.get_bytes(key), storage.url_for(key))).to(device), card


def config_dict(config: GANConfig) -> dict[str, Any]:
    return asdict(config)


def generator_from_state(state: dict[str, Any]) -> Generator:
    """Rebuild the sampling generator (EMA weights when the checkpoint has them) in eval mode."""
    generator = build_generator(GANConfig(**state["config"]))
    generator.load_state_dict(state.get("generator_ema") or state["generator"])
    return generator.eval()
