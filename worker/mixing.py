"""Real and synthetic images in one PyTorch stream, for training a downstream model on the mix.

:class:`MixedDataset` is an ``IterableDataset``. Each epoch it cuts the real images into chunks and takes whole
synthetic shards (the last one cut short) until there are ``ratio`` synthetic images per real one. It shuffles
those units, deals them round-robin to every (rank, DataLoader worker) slot, and streams each slot's units
through a shuffle buffer. Every sample of the epoch goes to exactly one slot: no duplicates, no gaps. Slots may
differ by up to one unit in length; for DDP, which needs equal batch counts per rank, drop the tail batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from shared.reader import SyntheticJob


class MixedSample(NamedTuple):
    """One training sample; PyTorch's default collate batches each field."""

    image: torch.Tensor  # (C, H, W) uint8
    label: int  # the real label, or the class a synthetic sample was generated for
    target: torch.Tensor  # (K,) float32 class probabilities: for a synthetic sample of a job with a teacher, the
    # target its job chose (SyntheticSample.target), else one-hot of LABEL; train with cross-entropy against it
    synthetic: bool
    key: str  # names the sample: "real/17", "<job>/000000042"


@dataclass(frozen=True)
class _Unit:
    source: int  # -1: real images; else the index of the synthetic job
    index: int  # real: chunk number; synthetic: shard number within its job
    limit: int  # samples to take from it


class MixedDataset(IterableDataset[MixedSample]):
    def __init__(
        self,
        real_images: torch.Tensor,  # (N, C, H, W) uint8
        real_labels: torch.Tensor,  # (N,)
        synthetic: Sequence[SyntheticJob],
        ratio: float,
        seed: int = 0,
        chunk_size: int = 256,
        shuffle_buffer: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_classes: int | None = None,  # K of the targets; default: the first job's classes, else the real labels'
    ):
        if ratio < 0:
            raise ValueError(f"ratio {ratio} is negative; use 0 (real only) or more synthetic images per real one")
        available = sum(len(job) for job in synthetic)
        self.synthetic_count = round(ratio * len(real_images))
        if self.synthetic_count > available:
            raise ValueError(
                f"ratio {ratio} needs {self.synthetic_count} synthetic images but the jobs hold {available}; "
                "lower the ratio or generate more"
            )
        self.real_images, self.real_labels = real_images, real_labels
        self.synthetic = list(synthetic)
        self.seed, self.chunk_size, self.shuffle_buffer = seed, chunk_size, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.transform = transform
        self.num_classes = num_classes or (len(self.synthetic[0].manifest.class_names) if self.synthetic else 0) or (
            int(real_labels.max()) + 1 if len(real_labels) else 1)
        self.epoch = 0

    @classmethod
    def class_balanced(
        cls, real_images: torch.Tensor, real_labels: torch.Tensor, synthetic: Sequence[SyntheticJob], **options: Any
    ) -> MixedDataset:
        """Real images plus every sample of SYNTHETIC, which must bring every class to the same count: the jobs of
        ``augment generate --rebalance`` on the model trained on these real images. Each epoch is class-balanced."""
        classes = max([int(real_labels.max()) + 1 if len(real_labels) else 0] +
                      [int(label) + 1 for job in synthetic for label in job.manifest.class_counts])
        totals = torch.bincount(real_labels, minlength=classes).tolist()
        for job in synthetic:
            if job.min_confidence > 0:
                raise ValueError(f"job {job.manifest.job_id} is read with min_confidence, so its class counts are upper "
                                 "bounds; open it without min_confidence to balance with it")
            for label, count in job.manifest.class_counts.items():
                totals[int(label)] += count
        if len(set(totals)) > 1:
            raise ValueError(f"real plus synthetic images per class are {totals}, not one count; generate with "
                             "`augment generate --model <the model trained on these images> --rebalance`")
        ratio = sum(len(job) for job in synthetic) / max(len(real_images), 1)
        return cls(real_images, real_labels, synthetic, ratio, **options)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for EPOCH (call it on every rank before each epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.real_images) + self.synthetic_count

    def _units(self) -> list[_Unit]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        real_chunks = -(-len(self.real_images) // self.chunk_size)
        units = [_Unit(-1, chunk, self.chunk_size) for chunk in range(real_chunks)]
        shards = [(source, index) for source, job in enumerate(self.synthetic) for index in range(len(job.shards))]
        rng.shuffle(shards)  # which shards make up the synthetic share changes every epoch
        wanted = self.synthetic_count
        for source, index in shards:
            if wanted == 0:
                break
            # what the shard yields: a job read with min_confidence yields fewer than its manifest counts
            take = min(wanted, self.synthetic[source].shard_sizes()[index])
            units.append(_Unit(source, index, take))
            wanted -= take
        rng.shuffle(units)
        return units

    def _slot(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world = torch.distributed.get_world_size() if distributed else 1
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return rank * workers + worker_id, world * workers

    def _unit_samples(self, unit: _Unit, order: np.ndarray) -> Iterator[MixedSample]:
        if unit.source < 0:
            for index in order[unit.index * self.chunk_size : (unit.index + 1) * self.chunk_size].tolist():
                label = int(self.real_labels[index])
                yield MixedSample(self.real_images[index], label, self._one_hot(label), False, f"real/{index}")
            return
        job = self.synthetic[unit.source]
        samples = job.shard_samples(job.shards[unit.index])
        for sample, _ in zip(samples, range(unit.limit), strict=False):
            pixels = sample.image[:, :, None] if sample.image.ndim == 2 else sample.image
            image = torch.from_numpy(pixels.transpose(2, 0, 1).copy())  # (C, H, W); the decoded array is read-only
            chosen = sample.target
            target = torch.from_numpy(chosen) if chosen is not None else self._one_hot(sample.label)
            yield MixedSample(image, sample.label, target, True, f"{job.manifest.job_id}/{sample.meta['index']:09d}")

    def _one_hot(self, label: int) -> torch.Tensor:
        target = torch.zeros(self.num_classes)
        if 0 <= label < self.num_classes:
            target[label] = 1.0
        return target

    def __iter__(self) -> Iterator[MixedSample]:
        slot, slots = self._slot()
        units = self._units()[slot::slots]
        order = np.random.default_rng(self.seed * 1_000_003 + self.epoch).permutation(len(self.real_images))
        rng = random.Random(f"{self.seed}/{self.epoch}/{slot}")
        buffer: list[MixedSample] = []
        for unit in units:
            for sample in self._unit_samples(unit, order):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                position = rng.randrange(len(buffer))
                buffer[position], sample = sample, buffer[position]
                yield self._transformed(sample)
        rng.shuffle(buffer)
        for sample in buffer:
            yield self._transformed(sample)

    def _transformed(self, sample: MixedSample) -> MixedSample:
        return sample if self.transform is None else sample._replace(image=self.transform(sample.image))
