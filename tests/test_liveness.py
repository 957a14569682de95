"""shared.liveness: leases with fencing tokens, heartbeats and stalls, on a real Redis and on the in-process store."""

from __future__ import annotations

import time

import pytest

from shared.keys import JobField, epoch_field
from shared.liveness import Beat, Fence, Lease, Liveness, shard_of, shard_part, stalls
from shared.records import JobStore


@pytest.fixture
def liveness(job_store: JobStore) -> Liveness:
    return job_store.liveness


def test_a_lease_has_one_holder_until_released_or_expired(liveness: Liveness) -> None:
    token = liveness.take("job", "train", "a", ttl_s=0.5)
    assert token == "a#1"
    assert liveness.take("job", "train", "b", ttl_s=0.5) is None
    assert not liveness.renew(Fence("job:train", "b#1"), ttl_s=0.5)
    liveness.release(Fence("job:train", "b#1"))  # not b's to release
    assert liveness.take("job", "train", "b", ttl_s=0.5) is None
    time.sleep(0.7)
    assert not liveness.renew(Fence("job:train", token), ttl_s=0.5)  # a stopped renewing: it lapsed
    assert liveness.take("job", "train", "b", ttl_s=5) == "b#2"  # every lease taken is a new epoch
    liveness.release(Fence("job:train", "b#2"))
    assert liveness.take("job", "train", "a", ttl_s=5) == "a#3"


def test_the_same_owner_taking_a_part_again_gets_a_new_token(liveness: Liveness) -> None:
    first = liveness.take("job", "shard:1", "w/1", ttl_s=5)
    assert first is not None
    liveness.release(Fence("job:shard:1", first))
    second = liveness.take("job", "shard:1", "w/1", ttl_s=5)
    assert second is not None and second != first and Fence("job:shard:1", second).epoch == 2
    assert not liveness.holds(Fence("job:shard:1", first)) and liveness.holds(Fence("job:shard:1", second))


def test_a_held_lease_outlives_its_ttl_through_heartbeats(liveness: Liveness) -> None:
    lease = Lease(liveness, "job", "train", "a", ttl_s=1.2)
    assert lease.acquire() and lease.valid()
    time.sleep(3.0)  # well past the TTL: only heartbeats keep it
    assert liveness.take("job", "train", "b", ttl_s=0.6) is None and not lease.lost and lease.valid()
    lease.release()
    assert liveness.take("job", "train", "b", ttl_s=0.6) is not None


def test_a_holder_learns_when_its_lease_was_taken(liveness: Liveness) -> None:
    lease = Lease(liveness, "job", "train", "a", ttl_s=0.6)
    assert lease.acquire()
    liveness.release(lease.held)  # as if it had lapsed while the holder was cut off
    taker = liveness.take("job", "train", "b", ttl_s=30)
    time.sleep(1.0)
    assert lease.lost and not lease.valid()
    lease.release()
    assert taker is not None and liveness.holds(Fence("job:train", taker))  # releasing a lost lease leaves the taker's


def test_a_lease_beats_while_held_and_stops_beating_on_release(liveness: Liveness) -> None:
    lease = Lease(liveness, "g-job", "shard:8", "w1@host/ab", ttl_s=0.6)
    assert lease.acquire()
    first = liveness.beats("g-job")["shard:8"]
    assert first.owner == "w1@host/ab#1" and first.every_s == pytest.approx(0.2)
    time.sleep(0.5)
    assert liveness.beats("g-job")["shard:8"].at > first.at, "renewals beat"
    lease.release()
    assert liveness.beats("g-job") == {}, "a part that stopped on purpose is not left looking stalled"


def test_a_late_or_stale_heartbeat_changes_nothing(liveness: Liveness) -> None:
    token = liveness.take("g-job", "shard:1", "w/1", ttl_s=30)
    assert token is not None
    fence = Fence("g-job:shard:1", token)
    now = time.time()
    liveness.beat("g-job", "shard:1", fence, Beat(token, now, 10.0))
    liveness.beat("g-job", "shard:1", fence, Beat(token, now - 25, 10.0))  # retransmitted from before a partition
    assert liveness.beats("g-job")["shard:1"].at == now, "a late beat must not make a live part look silent"
    liveness.beat("g-job", "shard:1", Fence("g-job:shard:1", "old/1#0"), Beat("old/1#0", now + 5, 10.0))
    assert liveness.beats("g-job")["shard:1"].owner == token, "a beat of an attempt without the lease is refused"


def test_a_part_whose_worker_stopped_beating_is_a_stall(liveness: Liveness) -> None:
    now = time.time()
    for part, owner, ago in (("shard:8", "augment-123@host/ab", 12), ("shard:9", "augment-124@host/cd", 2),
                             ("shard:3", "augment-125@host/ef", 30), ("train", "augment-123@host/ab", 40)):
        token = liveness.take("g-job", part, owner, ttl_s=60)
        assert token is not None
        liveness.beat("g-job", part, Fence(f"g-job:{part}", token), Beat(token, now - ago, 5.0))
    # shard 3's worker died after recording it: not a stall
    found = stalls(liveness, "g-job", redelivery_after_s=25, finished=lambda part: part == "shard:3", now=now)
    summary = [(stall.part, round(stall.silent_s), round(stall.redelivery_in_s)) for stall in found]
    assert summary == [("train", 40, 0), ("shard:8", 12, 13)]
    assert found[1].note == ("shard 8: its worker augment-123@host stopped heartbeating 12 s ago; "
                             "redelivery pending (due in about 13 s)")
    assert found[0].note == ("training: its worker augment-123@host stopped heartbeating 40 s ago; "
                             "redelivery pending (due now, waiting for a free worker)")
    liveness.end_beat("g-job", "shard:8", Fence("g-job:shard:8", "augment-999@host/zz#1"))  # not that attempt's to end
    assert "shard:8" in liveness.beats("g-job")


@pytest.mark.integration
def test_epochs_count_in_the_jobs_record(redis_job_store: JobStore) -> None:
    redis_job_store.liveness.take("t-job", "train", "a", ttl_s=5)
    redis_job_store.liveness.take("t-job", "shard:2", "a", ttl_s=5)
    assert redis_job_store.get_field("t-job", epoch_field("train")) == "1"
    assert redis_job_store.get_field("t-job", JobField.OUTCOME) is None


def test_a_shards_part_name_is_built_and_read_in_one_place() -> None:
    assert shard_part(8) == "shard:8" and shard_of(shard_part(8)) == 8
    assert shard_of("train") is None and shard_of("shard:x") is None
