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
    label: int  # -1 for an unconditional model
    meta: dict[str, Any]  # class, class_name, model, job, seed, shard, index


class SyntheticJob:
    """The committed output of one generation job in STORAGE."""

    def __init__(self, storage: Storage, job_id: str):
        self.storage = storage
        self.manifest = Manifest.load(storage, job_id)  # ObjectNotFound while the job has not committed

    @classmethod
    def open(cls, job_id: str, settings: Settings | None = None) -> SyntheticJob:
        """The job in the store configured by the environment (AUGMENT_STORAGE_URL and the S3 settings)."""
        return cls(open_storage(settings or Settings.from_env(), create_bucket=False), job_id)

    def __len__(self) -> int:
        return self.manifest.total

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
            yield SyntheticSample(decode_png(sample.png), sample.label, sample.meta)

    def __iter__(self) -> Iterator[SyntheticSample]:
        for shard in self.shards:
            yield from self.shard_samples(shard)

    def shard_urls(self, expires_s: int = 3600) -> list[str]:
        """Where the ``webdataset`` package reads the shards from: presigned HTTP URLs for S3, paths for files."""
        return [self.storage.read_url(self.manifest.shard_key(shard), expires_s) for shard in self.shards]
