"""Self-describing checkpoints: everything needed to resume training or rebuild the generator.

A checkpoint holds both networks, both optimizers, the step, the model config, the job spec, the noise RNG
state and a format version, so a generator can be rebuilt without the code path that trained it. Checkpoints are
read with ``weights_only=True``: a file carrying a pickled object is refused instead of executed.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import asdict
from typing import Any

import torch

from shared.contracts import ModelCard, read_model_card
from shared.layout import checkpoint_key, model_card_key
from shared.storage import Storage
from worker.model import GANConfig, Generator

CHECKPOINT_FORMAT = 1
CHECKPOINT_KIND = "gan-augment/dcgan"


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe or of an unknown format."""


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
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source} has format {state.get('format')!r}; this worker reads {CHECKPOINT_FORMAT}")
    return state


def save(storage: Storage, job_id: str, state: dict[str, Any]) -> None:
    # Storage puts are atomic (rename for files, single PUT for S3), so "latest" is never a torn file.
    storage.put_bytes(checkpoint_key(job_id), to_bytes(state))


def load(storage: Storage, job_id: str) -> dict[str, Any] | None:
    key = checkpoint_key(job_id)
    if not storage.exists(key):
        return None
    return from_bytes(storage.get_bytes(key), storage.url_for(key))


class ModelNotFound(LookupError):
    pass


def check_model(storage: Storage, model_id: str) -> None:
    """Raise ModelNotFound unless training job MODEL_ID has finished (its model card is written last)."""
    if not storage.exists(model_card_key(model_id)):
        raise ModelNotFound(f"model {model_id} not found: {storage.url_for(model_card_key(model_id))} is missing")


def read_card(storage: Storage, model_id: str) -> ModelCard:
    """The model card of finished training job MODEL_ID; ModelNotFound if it has not finished."""
    check_model(storage, model_id)
    return read_model_card(storage.get_text(model_card_key(model_id)), model_id)


def load_model(storage: Storage, model_id: str, device: torch.device) -> tuple[Generator, ModelCard]:
    """The sampling generator of a finished training job and its model card."""
    card = read_card(storage, model_id)
    state = load(storage, model_id)
    if state is None:
        raise ModelNotFound(f"model {model_id} has a model card but no checkpoint")
    return generator_from_state(state).to(device), card


def config_dict(config: GANConfig) -> dict[str, Any]:
    return asdict(config)


def generator_from_state(state: dict[str, Any]) -> Generator:
    """Rebuild the sampling generator (EMA weights when the checkpoint has them) in eval mode."""
    generator = Generator(GANConfig(**state["config"]))
    generator.load_state_dict(state.get("generator_ema") or state["generator"])
    return generator.eval()
