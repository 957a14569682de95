"""worker.reconcile on a real Redis: a part with no message, lease or ledger record is sent again at the second sweep
that finds it so, and nothing that has a message, a lease or a record is."""

from __future__ import annotations

import json

import pytest

from shared.keys import JobField, Keys
from shared.liveness import Fence
from shared.records import RedisJobStore, ShardRecord, make_record
from shared.specs import GenerateSpec, TrainSpec
from shared.sweeps import SweepSpec
from worker.reconcile import Missing, queue_of, reconcile

pytestmark = pytest.mark.integration


def generation_job(store: RedisJobStore, shards: int = 3) -> GenerateSpec:
    spec = GenerateSpec(job_id="g-job", model="t-model", count=shards * 10, shard_size=10)
    store.add(make_record(spec.job_id, "generate", spec.to_dict()))
    store.set_field(spec.job_id, JobField.DISPATCHED, str(shards))
    return spec


def record_shard(store: RedisJobStore, job_id: str, index: int) -> None:
    token = store.liveness.take(job_id, f"shard:{index}", "w/1", 30)
    assert token is not None
    fence = Fence(f"{job_id}:shard:{index}", token)
    store.put_shard(job_id, index, ShardRecord(name=f"s{index}", count=10, size=1, sha256="a", class_counts={}), fence)
    store.liveness.release(fence)


def queue_message(store: RedisJobStore, queue: str, message_id: str) -> None:
    store.client.lpush(queue, json.dumps({"headers": {"id": message_id}, "body": ""}))


def test_a_lost_shard_is_sent_again_at_the_second_sweep(redis_job_store: RedisJobStore) -> None:
    spec = generation_job(redis_job_store)
    record_shard(redis_job_store, spec.job_id, 0)
    queue_message(redis_job_store, "generate", f"{spec.job_id}-shard-000001-abc123")  # shard 1 waits in its queue
    sent: list[Missing] = []
    assert reconcile(redis_job_store, sent.append, now=1000.0, after_s=30) == []  # first seen: a suspect only
    assert reconcile(redis_job_store, sent.append, now=1010.0, after_s=30) == []  # not long enough
    (again,) = reconcile(redis_job_store, sent.append, now=1031.0, after_s=30)
    assert sent == [again] and again.part == f"{spec.job_id}|shard:2" and again.kwargs["shard"] == 2
    assert again.task_id.startswith(f"{spec.job_id}-shard-000002-")
    assert reconcile(redis_job_store, sent.append, now=1032.0, after_s=30) == [], "sent once, then a suspect anew"


def test_a_part_that_reappears_between_sweeps_is_left_alone(redis_job_store: RedisJobStore) -> None:
    spec = generation_job(redis_job_store, shards=1)
    sent: list[Missing] = []
    reconcile(redis_job_store, sent.append, now=1000.0, after_s=30)
    token = redis_job_store.liveness.take(spec.job_id, "shard:0", "w/1", 30)  # a worker took it meanwhile
    assert token is not None
    assert reconcile(redis_job_store, sent.append, now=1040.0, after_s=30) == []
    assert redis_job_store.client.hgetall(Keys.suspects()) == {}


def test_a_complete_ledger_without_a_finaliser_gets_one_and_a_finished_job_nothing(redis_job_store: RedisJobStore) -> None:
    spec = generation_job(redis_job_store, shards=2)
    for index in range(2):
        record_shard(redis_job_store, spec.job_id, index)
    sent: list[Missing] = []
    reconcile(redis_job_store, sent.append, now=1000.0, after_s=30)
    (finaliser,) = reconcile(redis_job_store, sent.append, now=1030.0, after_s=30)
    assert finaliser.task_id.startswith(f"{spec.job_id}-finalize-") and finaliser.kwargs == {"spec": spec.to_dict()}
    redis_job_store.set_field(spec.job_id, JobField.OUTCOME, "SUCCESS")
    redis_job_store.client.zrem(Keys.active(), spec.job_id)
    assert reconcile(redis_job_store, sent.append, now=1100.0, after_s=30) == []


def test_a_training_job_is_sent_again_unless_it_holds_its_lease_or_has_a_message(redis_job_store: RedisJobStore) -> None:
    spec = TrainSpec(job_id="t-job", dataset="fake", steps=10)
    redis_job_store.add(make_record(spec.job_id, "train", spec.to_dict()))
    queue_message(redis_job_store, "train", spec.job_id)
    sent: list[Missing] = []
    reconcile(redis_job_store, sent.append, now=1000.0, after_s=30)
    assert reconcile(redis_job_store, sent.append, now=1040.0, after_s=30) == [], "queued: its message is there"
    redis_job_store.client.delete("train")  # the message is lost
    reconcile(redis_job_store, sent.append, now=1050.0, after_s=30)
    (again,) = reconcile(redis_job_store, sent.append, now=1080.0, after_s=30)
    assert (again.task, again.task_id, again.kwargs) == ("augment.train", spec.job_id, {"spec": spec.to_dict()})


def test_a_sweep_whose_look_is_lost_is_sent_again_to_its_queue(redis_job_store: RedisJobStore) -> None:
    spec = SweepSpec(job_id="s-job", base={"dataset": "fake"}, steps=40, min_steps=10)
    redis_job_store.add(make_record(spec.job_id, "sweep", spec.to_dict()))
    queue_message(redis_job_store, "sweep", spec.job_id)  # a look waiting for its countdown
    reconcile(redis_job_store, lambda missing: None, now=1000.0, after_s=30)
    assert reconcile(redis_job_store, lambda missing: None, now=1040.0, after_s=30) == [], "its next look is queued"
    redis_job_store.client.delete("sweep")
    reconcile(redis_job_store, lambda missing: None, now=1050.0, after_s=30)
    (again,) = reconcile(redis_job_store, lambda missing: None, now=1080.0, after_s=30)
    assert (again.task, again.task_id, queue_of(again)) == ("augment.sweep", spec.job_id, "sweep")
