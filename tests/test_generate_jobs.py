"""The fan-out of a generation job as plain functions: planning, idempotent shards, the finaliser, the model cache.

Celery-free, on FileStorage and the in-process job store; tests/test_fleet.py runs the same path through real
workers, Redis and S3.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from shared.manifest import Manifest
from shared.models import read_card
from shared.progress import GenerateProgress, generation_progress
from shared.records import MemoryJobStore
from shared.settings import Settings
from shared.shards import read_shard
from shared.specs import GenerateSpec, TrainSpec
from shared.storage import FileStorage, Storage
from worker.generate import GeneratorCache, ShardBusy, finalize_job, plan_job, run_shard
from worker.train import run_training

CPU = torch.device("cpu")


class CountingStorage(FileStorage):
    """A real FileStorage that counts reads and writes per key."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.reads: dict[str, int] = {}
        self.writes: dict[str, int] = {}

    def get_bytes(self, key: str) -> bytes:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().get_bytes(key)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.writes[key] = self.writes.get(key, 0) + 1
        super().put_bytes(key, data, content_type)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    run_training(TrainSpec(job_id="t-model", dataset="fake", steps=2, width=8, batch_size=16), Settings(), FileStorage(root))
    return root


@pytest.fixture
def storage(model_root: Path, tmp_path: Path) -> CountingStorage:
    root = tmp_path / "store"
    shutil.copytree(model_root, root)  # FileStorage refuses links that lead out of its root
    return CountingStorage(root)


def job(count: int = 25, shard_size: int = 10, **fields: object) -> GenerateSpec:
    return GenerateSpec(job_id="g-job", model="t-model", count=count, shard_size=shard_size, batch_size=4, **fields)  # type: ignore[arg-type]


def run_all(spec: GenerateSpec, storage: Storage, store: MemoryJobStore, models: GeneratorCache) -> list[int]:
    """Plan, then run each dispatched shard in order (as a single worker would); returns the dispatch order."""
    dispatched: list[int] = []
    plan_job(spec, store, dispatched.append)
    for index in dispatched:
        run_shard(spec, index, storage, store, models, CPU, "worker-a/1")
    return dispatched


def test_job_runs_shard_by_shard_and_the_manifest_matches_storage(storage: CountingStorage) -> None:
    store, models, spec = MemoryJobStore(), GeneratorCache(), job()
    assert run_all(spec, storage, store, models) == [0, 1, 2]
    # each shard is its attempt's object (the first lease on each shard: attempt 1)
    assert storage.list("synthetic/g-job") == [f"synthetic/g-job/shard-00000{i}-a1.tar" for i in range(3)]
    assert not storage.exists("synthetic/g-job/manifest.json")  # only the finaliser writes it

    result = finalize_job(spec, storage, store, lambda index: pytest.fail(f"shard {index} redispatched"))
    assert result is not None and result.images == 25 and result.shards == 3
    manifest = Manifest.load(storage, "g-job")
    assert [shard.count for shard in manifest.shards] == [10, 10, 5]
    for shard in manifest.shards:
        data = storage.get_bytes(manifest.shard_key(shard))
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.size
    assert sum(manifest.class_counts.values()) == 25 and manifest.image_size == 28 and manifest.channels == 1
    labels = [sample.label for shard in manifest.shards for sample in read_shard(storage.get_bytes(manifest.shard_key(shard)))]
    assert {str(label): labels.count(label) for label in set(labels)} == manifest.class_counts
    progress = generation_progress(store, "g-job", 3, 25)
    assert isinstance(progress, GenerateProgress)
    assert (progress.shards_done, progress.shards_total, progress.images_done, progress.images_total) == (3, 3, 25, 25)


def test_a_finished_shard_is_not_redone(storage: CountingStorage) -> None:
    store, models, spec = MemoryJobStore(), GeneratorCache(), job()
    run_all(spec, storage, store, models)
    written, last = run_shard(spec, 1, storage, store, models, CPU, "worker-b/2")
    assert (written, last) == (False, False)
    assert storage.writes["synthetic/g-job/shard-000001-a1.tar"] == 1 and "synthetic/g-job/shard-000001-a2.tar" not in storage.writes


def test_a_second_attempt_writes_its_own_object_and_the_finaliser_drops_the_unlisted_one(storage: CountingStorage) -> None:
    # the first attempt uploaded, then died before recording the shard: the ledger is empty, storage has its bytes
    store, models, spec = MemoryJobStore(), GeneratorCache(), job()
    run_all(spec, storage, store, models)
    first = store.shard_records("g-job")[0]
    store.forget_shard("g-job", 0, first)
    written, last = run_shard(spec, 0, storage, store, models, CPU, "worker-b/2")
    second = store.shard_records("g-job")[0]
    assert written and last and second.worker == "worker-b" and second.name == "shard-000000-a2.tar"
    assert second.sha256 == first.sha256  # the same bytes, under the second attempt's name
    finalize_job(spec, storage, store, lambda index: pytest.fail("redispatched"))
    assert not storage.exists("synthetic/g-job/shard-000000-a1.tar")  # listed by no manifest: removed
    assert [entry.name for entry in Manifest.load(storage, "g-job").shards][0] == "shard-000000-a2.tar"


def test_a_forget_of_a_record_that_was_replaced_meanwhile_changes_nothing(storage: CountingStorage) -> None:
    # a finaliser's forget_shard that arrives late (retransmitted after a partition) names the record it saw
    store, models, spec = MemoryJobStore(), GeneratorCache(), job()
    run_all(spec, storage, store, models)
    seen = store.shard_records("g-job")[1]
    store.forget_shard("g-job", 1, seen)
    run_shard(spec, 1, storage, store, models, CPU, "worker-b/2")
    store.forget_shard("g-job", 1, seen)  # the late copy
    assert store.shard_records("g-job")[1].worker == "worker-b" and store.shard_totals("g-job") == (3, 25)


def test_reruns_write_identical_bytes(storage: CountingStorage, tmp_path: Path) -> None:
    spec = job()
    run_all(spec, storage, MemoryJobStore(), GeneratorCache())
    first = storage.get_bytes("synthetic/g-job/shard-000002-a1.tar")
    Path(storage.read_url("synthetic/g-job/shard-000002-a1.tar")).unlink()
    run_all(spec, storage, MemoryJobStore(), GeneratorCache())
    assert storage.get_bytes("synthetic/g-job/shard-000002-a1.tar") == first


def test_a_shard_lost_from_storage_is_made_again_before_the_manifest(storage: CountingStorage) -> None:
    store, models, spec = MemoryJobStore(), GeneratorCache(), job()
    run_all(spec, storage, store, models)
    storage.put_bytes("synthetic/g-job/shard-000001-a1.tar", b"truncated")  # recorded, but not what storage holds
    redispatched: list[int] = []
    assert finalize_job(spec, storage, store, redispatched.append) is None
    assert redispatched == [1] and not storage.exists("synthetic/g-job/manifest.json")
    written, last = run_shard(spec, 1, storage, store, models, CPU, "worker-a/1")
    assert written and last
    assert finalize_job(spec, storage, store, lambda index: pytest.fail("redispatched")) is not None


def test_a_shard_held_by_another_worker_is_busy(storage: CountingStorage) -> None:
    store, spec = MemoryJobStore(), job()
    assert store.liveness.take("g-job", "shard:0", "worker-a/1", ttl_s=60) == "worker-a/1#1"
    with pytest.raises(ShardBusy):
        run_shard(spec, 0, storage, store, GeneratorCache(), CPU, "worker-b/2")
    assert storage.list("synthetic/g-job") == []


def test_the_last_shard_recorded_says_so_whatever_the_order(storage: CountingStorage) -> None:
    store, models, spec = MemoryJobStore(), GeneratorCache(), job()
    lasts = [run_shard(spec, index, storage, store, models, CPU, "w/1")[1] for index in (2, 0, 1)]
    assert lasts == [False, False, True]


def test_a_shard_index_out_of_range_is_refused(storage: CountingStorage) -> None:
    with pytest.raises(ValueError, match="has 3 shards"):
        run_shard(job(), 3, storage, MemoryJobStore(), GeneratorCache(), CPU, "w/1")


def test_planning_again_continues_from_the_dispatch_cursor() -> None:
    store, spec = MemoryJobStore(), job(count=250, shard_size=1)
    sent: list[int] = []

    def die_after_150(index: int) -> None:
        if index == 150:
            raise RuntimeError("worker died")
        sent.append(index)

    with pytest.raises(RuntimeError):
        plan_job(spec, store, die_after_150)
    plan_job(spec, store, sent.append)
    assert sorted(set(sent)) == list(range(250))
    assert len(sent) - 250 <= 100  # at most the shards since the last saved cursor go out twice


def test_the_cache_loads_each_model_once(storage: CountingStorage) -> None:
    models = GeneratorCache(capacity=1)
    first = models.get(storage, "t-model", CPU)
    again = models.get(storage, "t-model", CPU)
    assert first is again and first.class_names == [f"class{label}" for label in range(10)]
    assert first.teacher is not None  # small data: a teacher by default
    checkpoint = read_card(storage, "t-model").sampling_checkpoint("best")
    assert storage.reads[checkpoint] == 1
    run_all(job(), storage, MemoryJobStore(), models)
    assert storage.reads[checkpoint] == 1  # the shards sampled from the cached model


def test_the_noise_scale_changes_the_samples_and_is_recorded_in_the_manifest(storage: CountingStorage) -> None:
    run_all(job(count=8, shard_size=8), storage, MemoryJobStore(), GeneratorCache())
    plain = list(read_shard(storage.get_bytes("synthetic/g-job/shard-000000-a1.tar")))
    wide_spec = GenerateSpec(job_id="g-wide", model="t-model", count=8, shard_size=8, batch_size=4, noise_scale=1.5)
    store = MemoryJobStore()
    run_all(wide_spec, storage, store, GeneratorCache())
    finalize_job(wide_spec, storage, store, lambda index: None)
    wide = list(read_shard(storage.get_bytes("synthetic/g-wide/shard-000000-a1.tar")))
    assert [s.label for s in plain] == [s.label for s in wide]  # the same plan of classes
    assert all(a.png != b.png for a, b in zip(plain, wide, strict=True))  # drawn from the same noise, scaled
    assert Manifest.load(storage, "g-wide").spec["noise_scale"] == 1.5


def test_a_shard_whose_lease_lapsed_before_it_was_recorded_is_made_again(storage: CountingStorage) -> None:
    # Redis out of reach for longer than the lease's TTL: the shard's object is written, its record is refused
    store, models, spec = MemoryJobStore(), GeneratorCache(), job()
    lapse = storage.put_bytes

    def upload_then_lapse(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        lapse(key, data, content_type)
        store.liveness.leases.pop("g-job:shard:0", None)

    storage.put_bytes = upload_then_lapse  # type: ignore[method-assign]
    with pytest.raises(ShardBusy, match="lease lapsed before it was recorded"):
        run_shard(spec, 0, storage, store, models, CPU, "worker-a/1")
    storage.put_bytes = lapse  # type: ignore[method-assign]
    assert store.shard_record("g-job", 0) is None and storage.list("synthetic/g-job") == [], "its unrecorded object goes"
    written, _ = run_shard(spec, 0, storage, store, models, CPU, "worker-a/1")  # the task's retry
    assert written and store.shard_record("g-job", 0).name == "shard-000000-a2.tar"  # type: ignore[union-attr]
