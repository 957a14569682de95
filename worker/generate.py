"""Generation across a fleet, as plain functions the Celery tasks call.

A job of N images with shard size S is ceil(N/S) shard tasks and one finaliser:

- :func:`plan_job` records when the job started and dispatches every shard task (resuming, if it is run
  again, from where dispatching stopped);
- :func:`run_shard` renders one shard and writes it, unless the job's ledger already records that shard and
  storage holds exactly those bytes; a lease keeps two workers from rendering the same shard at once. The task
  that records the last shard dispatches the finaliser (once);
- :func:`finalize_job` checks every recorded shard against storage and writes the manifest last, as the commit
  marker, so no manifest lists a shard that is not complete in storage.

A worker cut off by a partition lives on and may write late. Each attempt at a shard writes an object of its own
(the name carries its lease's epoch) and records it in the ledger with its fence, which the ledger refuses once the
lease was taken over or the job's manifest is fixed: a late upload lands beside the listed shard, never over it. The
manifest is fixed in Redis before it is written (:meth:`JobStore.commit`), so two finalisers write the same bytes.

Shard ``i`` covers images ``[i * S, (i + 1) * S)``. Its noise comes from a generator seeded by (job seed, i) and
its labels are a pure function of the global image index, so any shard can be (re)made alone, on any worker,
with identical bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec
import numpy as np
import torch

from shared.contracts import GenerateResult
from shared.keys import JobField
from shared.layout import manifest_key, model_card_key, shard_key, shard_object_key, synthetic_prefix
from shared.liveness import Fence, Lease, shard_part
from shared.manifest import Manifest, ShardEntry
from shared.models import read_card
from shared.records import JobStore, ShardRecord
from shared.shards import Sample, ShardWriter, encode_pngs, sample_key, sample_record, sha256_hex, shard_name
from shared.specs import CheckpointChoice, GenerateSpec, SpecError
from shared.storage import Storage
from worker.checkpoint import load_model
from worker.images import to_uint8
from worker.networks import Generator
from worker.teacher import Teacher, load_teacher, sample_targets

log = logging.getLogger("augment.generate")
# PNG encoding runs in these threads while the generator samples the next batch (zlib and torch release the GIL).
ENCODE_THREADS = 2
# short, as a heartbeat renews it: a dead worker's shard is free again within seconds
SHARD_LEASE_TTL_S = 15.0
# Teacher probabilities in a sample's JSON: 4 decimals keep their sum within 5e-4 of 1 at ~8 bytes a class.
PROBS_DECIMALS = 4


@dataclass(frozen=True)
class LoadedModel:
    """A finished training job as a generation worker holds it: the generator, its class names (from its model card;
    empty for an unconditional one) and its teacher (or None)."""

    generator: Generator
    class_names: list[str]
    teacher: Teacher | None


class GeneratorCache:
    """Loaded models by id, so a worker reads each model from storage once per process, not per shard.

    Least recently used models are dropped beyond CAPACITY. Safe to share between the threads of a worker.
    """

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._models: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, storage: Storage, model_id: str, device: torch.device, which: CheckpointChoice = "best") -> LoadedModel:
        key = (storage.url_for(model_card_key(model_id)), str(device), which)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            generator, card = load_model(storage, model_id, device, which)
            log.info("model %s: sampling from its %s checkpoint, %s", model_id, which, card.sampling_checkpoint(which))
            loaded = LoadedModel(generator, card.class_names, load_teacher(storage, card.teacher["key"]) if card.teacher else None)
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return loaded


def labels_plan(spec: GenerateSpec, num_classes: int) -> list[int]:
    """How many images of each class SPEC makes: balanced (remainder to the first classes) or as asked.

    A class the model does not have is a SpecError: the spec could not know the model's classes when it was made.
    """
    if num_classes <= 0:
        return [spec.count]
    if spec.class_counts is None:
        base, extra = divmod(spec.count, num_classes)
        return [base + (1 if label < extra else 0) for label in range(num_classes)]
    plan = [0] * num_classes
    for label, number in spec.class_counts.items():
        if int(label) >= num_classes:
            raise SpecError(
                spec.kind, "class_counts", f"class {label} does not exist; the model has classes 0-{num_classes - 1}"
            )
        plan[int(label)] = number
    return plan


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


@torch.no_grad()
def render_shard(spec: GenerateSpec, model: LoadedModel, shard_index: int) -> tuple[bytes, dict[int, int]]:
    """Sample shard SHARD_INDEX of SPEC and return its tar bytes and per-class counts.

    Batch k's PNG encoding and tar members are made in worker threads while batch k+1 is sampled (torch and
    zlib release the GIL); the tar is assembled in order. A model with a teacher adds each sample's class
    probabilities (``probs``) and its training target by SPEC's rule (``target``) to its metadata, rounded to
    PROBS_DECIMALS.
    """
    generator, class_names, teacher = model.generator, model.class_names, model.teacher
    config = generator.config
    device = next(generator.parameters()).device
    held = spec.shard_images(shard_index)
    start, stop = held.start, held.stop
    plan = labels_plan(spec, config.num_classes)
    labels = labels_for_range(plan, start, stop) if config.conditional else np.full(stop - start, -1)
    rng = torch.Generator().manual_seed(shard_seed(spec.seed, shard_index))
    noise = torch.randn(stop - start, config.nz, generator=rng) * spec.noise_scale  # (S, nz), drawn on CPU: same bytes on any device

    def records(offset: int, pixels: np.ndarray, probs: np.ndarray | None, targets: np.ndarray | None) -> list[bytes]:
        made = []
        for row, png in enumerate(encode_pngs(pixels)):
            index, label = start + offset + row, int(labels[offset + row])
            meta: dict[str, Any] = {
                "class": label,
                "class_name": class_names[label] if 0 <= label < len(class_names) else None,
                "model": spec.model,
                "job": spec.job_id,
                "seed": spec.seed,
                "shard": shard_index,
                "index": index,
            }
            if probs is not None and targets is not None:
                meta["probs"] = [round(float(p), PROBS_DECIMALS) for p in probs[row]]
                meta["target"] = [round(float(p), PROBS_DECIMALS) for p in targets[row]]
            made.append(sample_record(Sample(sample_key(index), png, label, meta)))
        return made

    with ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="png") as encoder:
        batches = []
        for offset in range(0, stop - start, spec.batch_size):
            batch_labels = torch.from_numpy(labels[offset : offset + spec.batch_size]).to(device) if config.conditional else None
            images = to_uint8(generator(noise[offset : offset + spec.batch_size].to(device), batch_labels))
            pixels = images.permute(0, 2, 3, 1).cpu().numpy()  # (b, H, W, C) uint8
            probs = targets = None
            if teacher is not None:
                teacher_probs = teacher.probs(images)  # (b, K)
                probs = teacher_probs.numpy()
                # an unconditional sample has no label of its own: the teacher's view is its only target
                targets = probs if batch_labels is None else sample_targets(spec.targets, batch_labels.cpu(), teacher_probs).numpy()
            batches.append((offset, encoder.submit(records, offset, pixels, probs, targets)))
        writer = ShardWriter()
        for offset, made in batches:
            for row, record in enumerate(made.result()):
                writer.add_record(record, int(labels[offset + row]))
    return writer.finish(), writer.class_counts


def write_shard(spec: GenerateSpec, storage: Storage, model: LoadedModel, shard_index: int, attempt: int,
                may_write: Callable[[], bool] = lambda: True) -> ShardRecord:
    """Render shard SHARD_INDEX and put it in storage as ATTEMPT's object, unless MAY_WRITE says its lease may have
    lapsed meanwhile (then ShardBusy: the shard is another attempt's); returns its ledger record (what the manifest
    lists)."""
    data, counts = render_shard(spec, model, shard_index)
    if not may_write():
        raise ShardBusy(f"shard {shard_index} of job {spec.job_id}: its lease was not renewed while it was made")
    storage.put_bytes(shard_key(spec.job_id, shard_index, attempt), data, "application/x-tar")
    return ShardRecord(name=shard_name(shard_index, attempt), count=sum(counts.values()), size=len(data), sha256=sha256_hex(data),
                       class_counts={str(label): number for label, number in sorted(counts.items())})


def plan_job(spec: GenerateSpec, store: JobStore, dispatch_shard: Callable[[int], None]) -> int:
    """Dispatch every shard task of SPEC; returns how many shards the job has.

    The dispatch cursor is saved as it advances, so a planner that is run again (its worker died mid-way)
    goes on from there; the shard it may send twice is harmless, as shard tasks are idempotent.
    """
    total = spec.shard_count
    store.set_once(spec.job_id, JobField.STARTED_AT, repr(time.time()))
    first = int(store.get_field(spec.job_id, JobField.DISPATCHED) or 0)
    for index in range(first, total):
        dispatch_shard(index)
        if index % 100 == 99 or index == total - 1:
            store.set_field(spec.job_id, JobField.DISPATCHED, str(index + 1))
    return total


class ShardBusy(RuntimeError):
    """Another worker holds the shard's lease, or this attempt lost it before its shard was recorded; try again
    later (a holder that dies lets its lease lapse; a lost attempt's retry takes a new lease and makes the shard)."""


def shard_is_complete(storage: Storage, spec: GenerateSpec, record: ShardRecord | None) -> bool:
    return record is not None and storage.checksum(shard_object_key(spec.job_id, record.name)) == record.sha256


def run_shard(
    spec: GenerateSpec,
    shard_index: int,
    storage: Storage,
    store: JobStore,
    models: GeneratorCache,
    device: torch.device,
    owner: str,
    queued_at: float | None = None,
) -> tuple[bool, bool]:
    """Make shard SHARD_INDEX of SPEC unless it is already complete.

    Returns (written, last): whether this call wrote the shard, and whether the job's ledger is now complete
    (the caller then dispatches the finaliser). Raises :class:`ShardBusy` while another worker holds it.
    """
    if not 0 <= shard_index < spec.shard_count:
        raise ValueError(f"shard {shard_index} does not exist; job {spec.job_id} has {spec.shard_count} shards")
    if shard_is_complete(storage, spec, store.shard_record(spec.job_id, shard_index)):
        log.info("job %s: shard %d is already complete; nothing to do", spec.job_id, shard_index)
        return False, False  # done before: a redelivered or duplicated message
    lease = Lease(store.liveness, spec.job_id, shard_part(shard_index), owner, SHARD_LEASE_TTL_S)
    if not lease.acquire():
        raise ShardBusy(f"shard {shard_index} of job {spec.job_id} is being made by another worker")
    try:
        fence: Fence = lease.held
        started_at = time.time()
        loaded = models.get(storage, spec.model, device, spec.checkpoint)
        record = msgspec.structs.replace(write_shard(spec, storage, loaded, shard_index, fence.epoch, lease.valid),
                                         queued_at=queued_at, started_at=started_at, finished_at=time.time(),
                                         worker=owner.split("/")[0])
        # replaces a stale record (its object was lost), unless this attempt's lease was taken over meanwhile
        recorded = store.put_shard(spec.job_id, shard_index, record, fence)
    finally:
        lease.release()
    if recorded is None:
        # no record names this attempt's object, and no other attempt writes its key: it goes
        storage.delete(shard_object_key(spec.job_id, record.name))
        if store.get_field(spec.job_id, JobField.COMMIT) is not None or store.get_field(spec.job_id, JobField.OUTCOME):
            log.info("job %s: shard %d was written after the job's manifest was fixed; %s is removed",
                     spec.job_id, shard_index, record.name)
            return False, False
        # the lease lapsed while Redis was out of reach, and nobody recorded the shard: it must be made again
        raise ShardBusy(f"shard {shard_index} of job {spec.job_id} was written but its lease lapsed before it was recorded")
    log.info("job %s: wrote shard %d (%d images)", spec.job_id, shard_index, record.count)
    return True, recorded == spec.shard_count


def finalize_job(
    spec: GenerateSpec, storage: Storage, store: JobStore, dispatch_shard: Callable[[int], None]
) -> GenerateResult | None:
    """Write the manifest once every shard is complete in storage; returns the job's result.

    A shard that is recorded but missing or different in storage (a lost object) is forgotten and dispatched
    again, and None is returned: the finaliser runs again when that shard is recorded.
    """
    committed = store.get_field(spec.job_id, JobField.COMMIT)
    if committed is None:
        committed = commit_manifest(spec, storage, store, dispatch_shard)
        if committed is None:
            return None
    manifest = Manifest.from_json(committed)
    # whoever fixed the manifest, the object is those bytes: a second finaliser, or a late write, changes nothing
    storage.put_text(manifest_key(spec.job_id), committed)
    listed = {manifest.shard_key(entry) for entry in manifest.shards} | {manifest_key(spec.job_id)}
    for key in set(storage.list(synthetic_prefix(spec.job_id))) - listed:
        storage.delete(key)  # an attempt that lost its lease left this object; no manifest lists it
    log.info("job %s: %d images in %d shards", spec.job_id, manifest.total, len(manifest.shards))
    return GenerateResult(manifest=storage.url_for(manifest_key(spec.job_id)), images=manifest.total, shards=len(manifest.shards))


def commit_manifest(spec: GenerateSpec, storage: Storage, store: JobStore, dispatch_shard: Callable[[int], None]) -> str | None:
    """Fix the job's manifest in Redis once every recorded shard is complete in storage; the manifest fixed (this
    one or an earlier finaliser's), or None when a shard must be made again first."""
    records = store.shard_records(spec.job_id)
    missing = [index for index in range(spec.shard_count) if not shard_is_complete(storage, spec, records.get(index))]
    if missing:
        log.warning("job %s: %d shards are not complete in storage; making them again", spec.job_id, len(missing))
        store.clear_field(spec.job_id, JobField.FINALIZE_SENT)
        for index in missing:
            if index in records:
                store.forget_shard(spec.job_id, index, records[index])
            dispatch_shard(index)
        return None
    card = read_card(storage, spec.model)
    class_counts: dict[str, int] = {}
    for record in records.values():
        for label, number in record.class_counts.items():
            class_counts[label] = class_counts.get(label, 0) + number
    manifest = Manifest(
        job_id=spec.job_id,
        model_id=spec.model,
        shards=[ShardEntry(records[index].name, records[index].count, records[index].size, records[index].sha256)
                for index in sorted(records)],
        class_counts=dict(sorted(class_counts.items(), key=lambda item: int(item[0]))),
        class_names=card.class_names,
        image_size=card.image_size,
        channels=card.channels,
        spec=spec.to_dict(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        teacher=card.teacher,
    )
    return store.commit(spec.job_id, manifest.to_json())
