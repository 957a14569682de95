"""shared.jobs and shared.leases: states, the shard ledger, one-shot fields and leases, on a real Redis and on the
in-process store."""

from __future__ import annotations

import itertools
import time

import pytest
import redis

from shared.jobs import (
    Beat,
    JobField,
    JobState,
    JobStore,
    Keys,
    MemoryJobStore,
    RedisJobStore,
    ShardRecord,
    make_record,
)
from shared.leases import Lease, shard_of, shard_part, stalls
from shared.progress import generation_progress

_dbs = itertools.count()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> JobStore:
    if request.param == "memory":
        return MemoryJobStore()
    server = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + f"/{next(_dbs) % 16}", decode_responses=True)
    client.flushdb()
    return RedisJobStore(client)


def record(count: int, digest: str = "aa") -> ShardRecord:
    return ShardRecord(name="shard", count=count, size=1, sha256=digest, class_counts={})


def test_the_first_record_of_a_shard_stands_and_counts_once(store: JobStore) -> None:
    assert store.record_shard("g-job", 0, record(10, "first")) == 1
    assert store.record_shard("g-job", 0, record(10, "second")) == 1
    assert store.record_shard("g-job", 1, record(4)) == 2
    assert store.shard_record("g-job", 0) == record(10, "first")
    assert store.shard_record("g-job", 5) is None
    assert store.shard_totals("g-job") == (2, 14)
    store.forget_shard("g-job", 0)
    store.forget_shard("g-job", 0)  # forgetting twice takes the images off once
    assert store.shard_totals("g-job") == (1, 4) and set(store.shard_records("g-job")) == {1}
    assert store.shard_totals("g-other") == (0, 0)


def test_progress_comes_from_the_ledger(store: JobStore) -> None:
    store.set_once("g-job", JobField.STARTED_AT, repr(time.time() - 2))
    store.record_shard("g-job", 0, record(100))
    progress = generation_progress(store, "g-job", shards_total=4, images_total=400)
    assert progress.shards_done == 1 and progress.images_done == 100
    assert 30 < progress.images_per_s < 60 and 5 < progress.eta_s < 7
    # a shard waiting for redelivery is not live work: the ETA leaves it out
    waiting = generation_progress(store, "g-job", shards_total=4, images_total=400, stalled_images=300)
    assert waiting.eta_s == 0


def test_set_once_lets_one_caller_through(store: JobStore) -> None:
    assert store.set_once("g-job", JobField.OUTCOME, JobState.SUCCESS)
    assert not store.set_once("g-job", JobField.OUTCOME, JobState.CANCELLED)
    assert store.get_field("g-job", JobField.OUTCOME) == "SUCCESS"
    store.clear_field("g-job", JobField.OUTCOME)
    assert store.get_field("g-job", JobField.OUTCOME) is None


def test_a_lease_has_one_owner_until_released_or_expired(store: JobStore) -> None:
    assert store.acquire_lease("job:train", "a", ttl_s=0.5)
    assert not store.acquire_lease("job:train", "b", ttl_s=0.5)
    assert not store.renew_lease("job:train", "b", ttl_s=0.5)
    store.release_lease("job:train", "b")  # not b's to release
    assert not store.acquire_lease("job:train", "b", ttl_s=0.5)
    time.sleep(0.7)
    assert not store.renew_lease("job:train", "a", ttl_s=0.5)  # a stopped renewing: it lapsed
    assert store.acquire_lease("job:train", "b", ttl_s=5)
    store.release_lease("job:train", "b")
    assert store.acquire_lease("job:train", "a", ttl_s=5)


def test_a_held_lease_outlives_its_ttl_through_heartbeats(store: JobStore) -> None:
    lease = Lease(store, "job", "train", "a", ttl_s=1.2)
    assert lease.acquire()
    time.sleep(3.0)  # well past the TTL: only heartbeats keep it
    assert not store.acquire_lease("job:train", "b", ttl_s=0.6) and not lease.lost
    lease.release()
    assert store.acquire_lease("job:train", "b", ttl_s=0.6)
    time.sleep(0.5)
    assert not lease.lost


def test_a_holder_learns_when_its_lease_was_taken(store: JobStore) -> None:
    lease = Lease(store, "job", "train", "a", ttl_s=0.6)
    assert lease.acquire()
    store.release_lease("job:train", "a")  # as if it had lapsed while the holder was stalled
    assert store.acquire_lease("job:train", "b", ttl_s=30)
    time.sleep(1.0)
    assert lease.lost
    lease.release()
    assert not store.acquire_lease("job:train", "c", ttl_s=1)  # releasing a lost lease leaves the new owner's


def test_training_history_keeps_records_in_order_per_job(store: JobStore) -> None:
    assert store.history("t-job") == []
    for step in (5, 10, 5):  # a resumed job reports the steps after its checkpoint again
        store.append_history("t-job", {"step": step, "loss_d": step / 10})
    store.append_history("t-other", {"step": 1, "loss_d": 0.0})
    assert store.history("t-job") == [{"step": 5, "loss_d": 0.5}, {"step": 10, "loss_d": 1.0}, {"step": 5, "loss_d": 0.5}]
    assert len(store.history("t-other")) == 1


def test_states_and_fields_read_back_from_redis_equal_their_names(store: JobStore) -> None:
    # Celery hands states back as plain strings: they must compare equal to (and hash like) the members.
    assert JobState("SUCCESS") is JobState.SUCCESS and "SUCCESS" == JobState.SUCCESS
    assert {"FAILURE": 1}[JobState.FAILURE] == 1 and f"{JobState.CANCELLED}" == "CANCELLED"
    store.set_field("g-job", JobField.OUTCOME, JobState.FAILURE)
    assert store.get_field("g-job", "outcome") == JobState.FAILURE


@pytest.mark.integration
def test_every_redis_key_comes_from_keys(redis_server) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{next(_dbs) % 16}", decode_responses=True)
    client.flushdb()
    store = RedisJobStore(client)
    store.add(make_record("g-job", "generate", {}))
    store.record_shard("g-job", 0, record(3))
    store.acquire_lease("g-job:shard:0", "a", ttl_s=5)
    assert set(client.keys("*")) == {Keys.jobs(), Keys.job("g-job"), Keys.shards("g-job"), Keys.lease("g-job:shard:0")}
    assert client.hget(Keys.job("g-job"), JobField.IMAGES_DONE) == "3"


def test_a_lease_beats_while_held_and_stops_beating_on_release(store: JobStore) -> None:
    lease = Lease(store, "g-job", "shard:8", "w1@host/ab", ttl_s=0.6)
    assert lease.acquire()
    first = store.beats("g-job")["shard:8"]
    assert first.owner == "w1@host/ab" and first.every_s == pytest.approx(0.2)
    time.sleep(0.5)
    assert store.beats("g-job")["shard:8"].at > first.at, "renewals beat"
    lease.release()
    assert store.beats("g-job") == {}, "a part that stopped on purpose is not left looking stalled"


def test_a_part_whose_worker_stopped_beating_is_a_stall(store: JobStore) -> None:
    now = time.time()
    store.beat("g-job", "shard:8", Beat("augment-123@host/ab", now - 12, 5.0))
    store.beat("g-job", "shard:9", Beat("augment-124@host/cd", now - 2, 5.0))  # live
    store.beat("g-job", "shard:3", Beat("augment-125@host/ef", now - 30, 5.0))  # dead, but its shard was recorded
    (stall,) = stalls(store, "g-job", redelivery_after_s=25, finished=lambda part: part == "shard:3", now=now)
    assert (stall.part, stall.silent_s, stall.redelivery_in_s) == ("shard:8", 12, 13)
    assert stall.note == ("shard 8: its worker augment-123@host stopped heartbeating 12 s ago; "
                          "redelivery pending (due in about 13 s)")
    store.end_beat("g-job", "shard:8", "augment-999@host/zz")  # not that worker's to end
    store.beat("g-job", "train", Beat("augment-123@host/ab", now - 40, 5.0))
    notes = [stall.note for stall in stalls(store, "g-job", redelivery_after_s=25, now=now)]
    assert notes[0] == ("training: its worker augment-123@host stopped heartbeating 40 s ago; "
                        "redelivery pending (due now, waiting for a free worker)")
    assert len(notes) == 3


def test_a_shards_part_name_is_built_and_read_in_one_place() -> None:
    assert shard_part(8) == "shard:8" and shard_of(shard_part(8)) == 8
    assert shard_of("train") is None and shard_of("shard:x") is None
