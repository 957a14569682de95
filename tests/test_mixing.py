"""The consumer side: the torch-free reader of a job's shards and the mixing IterableDataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shared.manifest import Manifest, ShardEntry
from shared.reader import ShardCorrupt, SyntheticJob
from shared.shards import Sample, ShardWriter, encode_png, sample_key, sample_record, sha256_hex, shard_name
from shared.storage import FileStorage
from worker.mixing import MixedDataset


def write_job(storage: FileStorage, job_id: str, shards: list[int], size: int = 8,
              labels: list[int] | None = None) -> SyntheticJob:
    """A committed generation job whose image I is filled with I % 256 and labelled LABELS[I] (default I % 10)."""
    entries, index, class_counts = [], 0, Counter[str]()
    for number, count in enumerate(shards):
        writer = ShardWriter()
        for _ in range(count):
            image = np.full((size, size), index % 256, dtype=np.uint8)
            label = labels[index] if labels is not None else index % 10
            sample = Sample(sample_key(index), encode_png(image), label, {"index": index, "job": job_id})
            writer.add_record(sample_record(sample), sample.label)
            index += 1
        data = writer.finish()
        class_counts.update({str(label): number for label, number in writer.class_counts.items()})
        storage.put_bytes(f"synthetic/{job_id}/{shard_name(number)}", data)
        entries.append(ShardEntry(shard_name(number), count, len(data), sha256_hex(data)))
    manifest = Manifest(job_id, "t-model", entries, dict(class_counts), [], size, 1, {}, "2026-11-27T00:00:00+00:00")
    storage.put_text(f"synthetic/{job_id}/manifest.json", manifest.to_json())
    return SyntheticJob(job_id, storage)


def test_reader_streams_checked_samples_and_refuses_a_changed_shard(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    job = write_job(storage, "g-one", [4, 4, 2])
    samples = list(job)
    assert len(job) == len(samples) == 10
    assert [sample.meta["index"] for sample in samples] == list(range(10))
    assert all(sample.image.shape == (8, 8) and sample.image[0, 0] == sample.meta["index"] for sample in samples)
    assert [sample.label for sample in samples] == [index % 10 for index in range(10)]

    assert job.shard_urls() == [str(tmp_path / "synthetic/g-one" / shard_name(index)) for index in range(3)]

    storage.put_bytes("synthetic/g-one/shard-000001.tar", storage.get_bytes("synthetic/g-one/shard-000000.tar"))
    with pytest.raises(ShardCorrupt, match="shard-000001.tar does not match the manifest"):
        list(job)


def real_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()
    return images, torch.arange(n) % 10


def keys_of(dataset: MixedDataset, workers: int) -> list[str]:
    loader = DataLoader(dataset, batch_size=16, num_workers=workers)
    return [key for batch in loader for key in batch.key]


# two loader workers are the subject here, on any host: pinned to one core, torch warns that it suggests one
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_mix_has_the_ratio_and_no_sample_twice_across_ranks_and_workers(tmp_path: Path, ratio: float) -> None:
    storage = FileStorage(tmp_path)
    jobs = [write_job(storage, "g-aaa", [10] * 12), write_job(storage, "g-bbb", [7, 7, 7])]
    images, labels = real_set(120)
    keys = []
    for rank in range(2):
        dataset = MixedDataset(images, labels, jobs, ratio=ratio, seed=3, chunk_size=16, shuffle_buffer=20, rank=rank, world_size=2)
        keys += keys_of(dataset, workers=2)
    counts = Counter(key.split("/")[0] for key in keys)
    assert len(keys) == len(set(keys)), "a sample was yielded twice"
    assert counts["real"] == 120 and {f"real/{index}" for index in range(120)} <= set(keys)
    assert counts["g-aaa"] + counts["g-bbb"] == round(120 * ratio)


def test_samples_carry_their_labels_and_pixels(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    job = write_job(storage, "g-aaa", [10, 10])
    images, labels = real_set(20)
    for image, label, _, synthetic, key in MixedDataset(images, labels, [job], ratio=1.0, chunk_size=8):
        index = int(key.split("/")[1])
        assert image.shape == (1, 8, 8) and image.dtype == torch.uint8
        assert int(image[0, 0, 0]) == index % 256 and label == index % 10
        assert synthetic == key.startswith("g-aaa/")


def test_epochs_reshuffle_and_are_reproducible(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    job = write_job(storage, "g-aaa", [10] * 6)
    images, labels = real_set(60)
    dataset = MixedDataset(images, labels, [job], ratio=0.5, seed=1, chunk_size=8, shuffle_buffer=10)
    first = [key for *_, key in dataset]
    assert first == [key for *_, key in dataset]
    dataset.set_epoch(1)
    second = [key for *_, key in dataset]
    assert second != first and len(second) == len(first) == len(dataset) == 90


def test_a_ratio_beyond_the_synthetic_supply_is_refused(tmp_path: Path) -> None:
    job = write_job(FileStorage(tmp_path), "g-aaa", [10])
    images, labels = real_set(20)
    with pytest.raises(ValueError, match="needs 40 synthetic images but the jobs hold 10"):
        MixedDataset(images, labels, [job], ratio=2.0)


def test_a_rebalancing_job_makes_every_epoch_class_balanced_and_anything_else_is_refused(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    images = torch.zeros(9, 1, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2])  # 5, 3 and 1 real images
    job = write_job(storage, "g-fill", [3, 3], labels=[1, 1, 2, 2, 2, 2])  # the deficits: 0, 2 and 4
    dataset = MixedDataset.class_balanced(images, labels, [job], chunk_size=4, shuffle_buffer=4)
    assert Counter(sample.label for sample in dataset) == {0: 5, 1: 5, 2: 5} and len(dataset) == 15
    lopsided = write_job(storage, "g-lop", [6], labels=[1, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match=r"per class are \[5, 6, 4\], not one count; generate with .*--rebalance"):
        MixedDataset.class_balanced(images, labels, [lopsided])


def test_the_reader_hands_the_chosen_target_and_falls_back_to_the_teacher_for_older_shards() -> None:
    from shared.reader import SyntheticSample

    image = np.zeros((2, 2), dtype=np.uint8)
    chosen = SyntheticSample(image, 1, {"probs": [0.3, 0.6, 0.1], "target": [0.0, 1.0, 0.0]})
    assert chosen.target.tolist() == [0.0, 1.0, 0.0] and chosen.probs.tolist() == pytest.approx([0.3, 0.6, 0.1])  # type: ignore[union-attr]
    older = SyntheticSample(image, 1, {"probs": [0.3, 0.6, 0.1]})  # written before targets were chosen per sample
    assert older.target.tolist() == pytest.approx([0.3, 0.6, 0.1])  # type: ignore[union-attr]
    assert SyntheticSample(image, 1, {}).target is None  # no teacher: train on the label
