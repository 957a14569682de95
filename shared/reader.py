"""Reading a generation job's output: the manifest, then its shards, as (image, label, metadata) samples.

Torch-free, so any training pipeline can use it. Shards stream one at a time (memory holds one shard), and each
is checked against the manifest's size and sha256 before a sample of it is yielded: a reader never yields bytes
that differ from what the job committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.manifest import Manifest, ShardEntry
from shared.settings import Settings
from shared.shards import decode_png, read_shard, sha256_hex
from shared.storage import Storage, open_storage


class ShardCorrupt(ValueError):
    """A shard's bytes differ from what the manifest recorded."""


@dataclass(frozen=True)
class SyntheticSample:
    image: np.ndarray  # (H, W) uint8 grey or (H, W, 3) uint8 RGB
    label: int  # the class it was generated for; -1 for an unconditional model
    meta: dict[str, Any]  # class, class_name, model, job, seed, shard, index; probs and target when the model has a teacher

    @property
    def probs(self) -> np.ndarray | None:
        """The teacher's class probabilities (K,) float32, summing to 1; None without a teacher."""
        return _distribution(self.meta.get("probs"))

    @property
    def target(self) -> np.ndarray | None:
        """What to train on (K,) float32, summing to 1: the target the generation job chose for this sample by its
        rule (``Manifest.target_rule``); for a job of an older version, the teacher's probabilities; None without a
        teacher (train on the one-hot LABEL)."""
        return _distribution(self.meta.get("target", self.meta.get("probs")))


def _distribution(values: list[float] | None) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float32)
    return array / array.sum()  # undo the rounding in the shard, so the targets sum to 1 exactly


def teacher_confidence(label: int, meta: dict[str, Any]) -> float:
    """How sure the teacher is that a sample shows its LABEL (1.0 without a teacher: nothing to filter by)."""
    probs = meta.get("probs")
    return 1.0 if probs is None or label < 0 else float(probs[label])


class SyntheticJob:
    """The committed output of generation job JOB_ID in STORAGE (:meth:`open` finds the store from the environment).

    MIN_CONFIDENCE drops samples whose teacher gives their label less than that probability (the job needs a
    teacher: see ``Manifest.teacher``). ``len`` and :meth:`shard_sizes` then count the samples that pass, which takes
    one read of every shard (the first time they are asked); the manifest's counts are upper bounds.
    """

    def __init__(self, job_id: str, storage: Storage, min_confidence: float = 0.0):
        if not isinstance(job_id, str):
            raise TypeError("SyntheticJob(job_id, storage): the job id comes first, as in SyntheticJob.open(job_id)")
        self.storage = storage
        self.manifest = Manifest.load(storage, job_id)  # ObjectNotFound while the job has not committed
        if min_confidence > 0 and self.manifest.teacher is None:
            raise ValueError(f"job {job_id} has no teacher probabilities to filter by; generate from a model trained "
                             "with a teacher (augment train --teacher 3), or drop min_confidence")
        self.min_confidence = min_confidence
        self._passing: list[int] | None = None

    @classmethod
    def open(cls, job_id: str, settings: Settings | None = None, min_confidence: float = 0.0) -> SyntheticJob:
        """The job in the store configured by the environment (AUGMENT_STORAGE_URL and the S3 settings)."""
        return cls(job_id, open_storage(settings or Settings.from_env(), create_bucket=False), min_confidence)

    def __len__(self) -> int:
        return sum(self.shard_sizes())

    def shard_sizes(self) -> list[int]:
        """The samples each shard yields: the manifest's counts, or those that pass MIN_CONFIDENCE."""
        if self.min_confidence <= 0:
            return [shard.count for shard in self.shards]
        if self._passing is None:
            self._passing = [sum(teacher_confidence(sample.label, sample.meta) >= self.min_confidence
                                 for sample in read_shard(self.shard_bytes(shard))) for shard in self.shards]
        return self._passing

    @property
    def shards(self) -> list[ShardEntry]:
        return self.manifest.shards

    def shard_bytes(self, shard: ShardEntry) -> bytes:
        data = self.storage.get_bytes(self.manifest.shard_key(shard))
        if len(data) != shard.size or sha256_hex(data) != shard.sha256:
            raise ShardCorrupt(f"{self.storage.url_for(self.manifest.shard_key(shard))} does not match the manifest")
        return data

    def shard_samples(self, shard: ShardEntry) -> Iterator[SyntheticSample]:
        for sample in read_shard(self.shard_bytes(shard)):
            if teacher_confidence(sample.label, sample.meta) >= self.min_confidence:
                yield SyntheticSample(decode_png(sample.png), sample.label, sample.meta)

    def __iter__(self) -> Iterator[SyntheticSample]:
        for shard in self.shards:
            yield from self.shard_samples(shard)

    def shard_urls(self, expires_s: int = 3600) -> list[str]:
        """Where the ``webdataset`` package reads the shards from: presigned HTTP URLs for S3, paths for files."""
        return [self.storage.read_url(self.manifest.shard_key(shard), expires_s) for shard in self.shards]
