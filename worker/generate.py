"""Sampling a trained generator into WebDataset shards, as plain functions.

Shard ``i`` of a job covers images ``[i * shard_size, (i + 1) * shard_size)``. Its noise comes from a generator
seeded by (job seed, i) and its labels are a pure function of the global image index, so any shard can be
(re)made alone, on any worker, with identical bytes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from shared.jobs import JobCancelled
from shared.layout import manifest_key, model_card_key, shard_key
from shared.manifest import Manifest, ShardEntry
from shared.shards import Sample, ShardWriter, encode_png, sample_key, sha256_hex, shard_name
from shared.specs import GenerateSpec
from shared.storage import Storage
from worker import checkpoint
from worker.model import Generator
from worker.train import pick_device, to_uint8

log = logging.getLogger("augment.generate")


class ModelNotFound(LookupError):
    pass


def load_model(storage: Storage, model_id: str, device: torch.device) -> tuple[Generator, dict[str, Any]]:
    """The sampling generator of a finished training job and its model card."""
    if not storage.exists(model_card_key(model_id)):
        raise ModelNotFound(f"model {model_id} not found: {storage.url_for(model_card_key(model_id))} is missing")
    card = json.loads(storage.get_text(model_card_key(model_id)))
    state = checkpoint.load(storage, model_id)
    if state is None:
        raise ModelNotFound(f"model {model_id} has a model card but no checkpoint")
    return checkpoint.generator_from_state(state).to(device), card


def labels_for_range(plan: list[int], start: int, stop: int) -> np.ndarray:
    """Labels of global images START..STOP-1 for a per-class PLAN, spreading every class over the whole job.

    Balanced plans (the default) are round-robin, computed directly; other plans interleave classes by
    fractional position (item t of class c sits at (t + 0.5) / n_c), which needs the whole sequence once.
    """
    total = sum(plan)
    classes = len(plan)
    base, extra = divmod(total, classes)
    if plan == [base + (1 if label < extra else 0) for label in range(classes)]:
        return np.arange(start, stop, dtype=np.int64) % classes
    positions = np.concatenate([(np.arange(n) + 0.5) / n for n in plan if n > 0])
    labels = np.concatenate([np.full(n, label) for label, n in enumerate(plan) if n > 0])
    return labels[np.argsort(positions, kind="stable")][start:stop].astype(np.int64)


def shard_seed(job_seed: int, shard_index: int) -> int:
    return (job_seed * 1_000_003 + shard_index) % (2**63 - 1)


def shard_count(spec: GenerateSpec) -> int:
    return math.ceil(spec.count / spec.shard_size)


@torch.no_grad()
def render_shard(spec: GenerateSpec, generator: Generator, card: dict[str, Any], shard_index: int) -> tuple[bytes, dict[int, int]]:
    """Sample shard SHARD_INDEX of SPEC and return its tar bytes and per-class counts."""
    config = generator.config
    device = next(generator.parameters()).device
    start = shard_index * spec.shard_size
    stop = min(spec.count, start + spec.shard_size)
    plan = spec.labels_plan(config.num_classes)
    labels = torch.from_numpy(labels_for_range(plan, start, stop)) if config.conditional else None
    rng = torch.Generator().manual_seed(shard_seed(spec.seed, shard_index))
    noise = torch.randn(stop - start, config.nz, generator=rng)  # (S, nz), drawn on CPU: same bytes on any device
    class_names = card.get("class_names") or []
    writer = ShardWriter()
    for offset in range(0, stop - start, spec.batch_size):
        batch_labels = labels[offset : offset + spec.batch_size].to(device) if labels is not None else None
        images = to_uint8(generator(noise[offset : offset + spec.batch_size].to(device), batch_labels))
        pixels = images.permute(0, 2, 3, 1).cpu().numpy()  # (b, H, W, C) uint8
        for row, image in enumerate(pixels):
            index = start + offset + row
            label = int(batch_labels[row]) if batch_labels is not None else -1
            meta = {
                "class": label,
                "class_name": class_names[label] if 0 <= label < len(class_names) else None,
                "model": spec.model,
                "job": spec.job_id,
                "seed": spec.seed,
                "shard": shard_index,
                "index": index,
            }
            writer.add(Sample(sample_key(index), encode_png(image), label, meta))
    return writer.finish(), writer.class_counts


def run_generation(
    spec: GenerateSpec,
    storage: Storage,
    progress: Callable[[dict[str, Any]], None] = lambda info: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Write every shard of SPEC, then the manifest (last, as the commit marker)."""
    device = pick_device()
    generator, card = load_model(storage, spec.model, device)
    shards_total = shard_count(spec)
    entries: list[ShardEntry] = []
    class_counts: dict[int, int] = {}
    started = time.perf_counter()
    for shard_index in range(shards_total):
        if should_stop():
            raise JobCancelled(f"job {spec.job_id} cancelled after {shard_index} of {shards_total} shards")
        data, counts = render_shard(spec, generator, card, shard_index)
        storage.put_bytes(shard_key(spec.job_id, shard_index), data, "application/x-tar")
        entries.append(ShardEntry(shard_name(shard_index), sum(counts.values()), len(data), sha256_hex(data)))
        for label, number in counts.items():
            class_counts[label] = class_counts.get(label, 0) + number
        images_done = sum(entry.count for entry in entries)
        rate = images_done / max(time.perf_counter() - started, 1e-9)
        progress({
            "shards_done": shard_index + 1,
            "shards_total": shards_total,
            "images_done": images_done,
            "images_total": spec.count,
            "images_per_s": rate,
            "eta_s": (spec.count - images_done) / max(rate, 1e-9),
        })
    config = generator.config
    manifest = Manifest(
        job_id=spec.job_id,
        model_id=spec.model,
        shards=entries,
        class_counts={str(label): number for label, number in sorted(class_counts.items())},
        class_names=list(card.get("class_names") or []),
        image_size=config.image_size,
        channels=config.channels,
        spec=spec.to_dict(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    storage.put_text(manifest_key(spec.job_id), manifest.to_json())
    log.info("job %s: %d images in %d shards", spec.job_id, manifest.total, len(entries))
    return {"manifest": storage.url_for(manifest_key(spec.job_id)), "images": manifest.total, "shards": len(entries)}
