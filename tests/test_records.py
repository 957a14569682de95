"""shared.records: job records, the shard ledger, history, pointers and the commit, each write fenced, on a real Redis
and on the in-process store."""

from __future__ import annotations

import time

import pytest
import redis

from shared.keys import JobField, Keys
from shared.liveness import Fence
from shared.progress import generation_progress
from shared.records import JobStore, RedisJobStore, ShardRecord, StateWrite, make_record


def record(count: int, digest: str = "aa") -> ShardRecord:
    return ShardRecord(name="shard", count=count, size=1, sha256=digest, class_counts={})


def fence_for(store: JobStore, job_id: str, part: str, owner: str = "w/1") -> Fence:
    token = store.liveness.take(job_id, part, owner, ttl_s=30)
    assert token is not None
    return Fence(f"{job_id}:{part}", token)


def take_over(store: JobStore, stale: Fence, job_id: str, part: str) -> Fence:
    """What a partition leads to: the stale attempt's lease lapsed, and another worker took the part."""
    store.liveness.release(stale)
    return fence_for(store, job_id, part, "w/2")


def test_a_shards_record_is_replaced_by_its_holder_and_counts_once(job_store: JobStore) -> None:
    zero, one = fence_for(job_store, "g-job", "shard:0"), fence_for(job_store, "g-job", "shard:1")
    assert job_store.put_shard("g-job", 0, record(10, "first"), zero) == 1
    assert job_store.put_shard("g-job", 0, record(10, "first"), zero) == 1  # sent again after a timeout
    assert job_store.put_shard("g-job", 1, record(4), one) == 2
    assert job_store.put_shard("g-job", 0, record(8, "second"), zero) == 2
    assert job_store.shard_record("g-job", 0) == record(8, "second") and job_store.shard_record("g-job", 5) is None
    assert job_store.shard_totals("g-job") == (2, 12)
    job_store.forget_shard("g-job", 0, record(8, "second"))
    job_store.forget_shard("g-job", 0, record(8, "second"))  # forgetting twice takes the images off once
    assert job_store.shard_totals("g-job") == (1, 4) and set(job_store.shard_records("g-job")) == {1}
    assert job_store.shard_totals("g-other") == (0, 0)


def test_a_stale_attempts_ledger_write_is_refused(job_store: JobStore) -> None:
    stale = fence_for(job_store, "g-job", "shard:0")
    current = take_over(job_store, stale, "g-job", "shard:0")
    assert job_store.put_shard("g-job", 0, record(10, "current"), current) == 1
    assert job_store.put_shard("g-job", 0, record(10, "stale"), stale) is None
    assert job_store.shard_record("g-job", 0) == record(10, "current") and job_store.shard_totals("g-job") == (1, 10)


def test_a_late_forget_leaves_the_record_written_after_it(job_store: JobStore) -> None:
    fence = fence_for(job_store, "g-job", "shard:0")
    job_store.put_shard("g-job", 0, record(10, "lost"), fence)
    job_store.forget_shard("g-job", 0, record(10, "lost"))
    job_store.put_shard("g-job", 0, record(10, "again"), fence)
    job_store.forget_shard("g-job", 0, record(10, "lost"))  # delivered late: it names the record it saw
    assert job_store.shard_record("g-job", 0) == record(10, "again") and job_store.shard_totals("g-job") == (1, 10)


def test_a_committed_job_takes_no_more_ledger_or_pointer_writes(job_store: JobStore) -> None:
    fence = fence_for(job_store, "g-job", "shard:0")
    job_store.put_shard("g-job", 0, record(10), fence)
    assert job_store.commit("g-job", '{"manifest": 1}') == '{"manifest": 1}'
    assert job_store.commit("g-job", '{"manifest": 2}') == '{"manifest": 1}', "the first commit stands"
    assert job_store.put_shard("g-job", 0, record(10, "late"), fence) is None
    job_store.forget_shard("g-job", 0, record(10))
    assert job_store.shard_record("g-job", 0) == record(10)
    assert not job_store.set_pointer("g-job", JobField.CHECKPOINT, "key", fence)


def test_only_the_lease_holder_commits(job_store: JobStore) -> None:
    stale = fence_for(job_store, "t-job", "train")
    current = take_over(job_store, stale, "t-job", "train")
    assert job_store.commit("t-job", "stale card", stale) is None
    assert job_store.commit("t-job", "card", current) == "card"
    assert job_store.commit("t-job", "stale card", stale) == "card"


def test_history_takes_the_holders_records_once_each(job_store: JobStore) -> None:
    stale = fence_for(job_store, "t-job", "train")
    assert job_store.history("t-job") == []
    for step in (5, 10):
        job_store.append_history("t-job", {"step": step, "loss_d": step / 10}, stale)
    job_store.append_history("t-job", {"step": 10, "loss_d": 1.0}, stale)  # the same record sent again after a timeout
    current = take_over(job_store, stale, "t-job", "train")
    job_store.append_history("t-job", {"step": 5, "loss_d": 0.5}, current)  # a resumed job repeats steps
    job_store.append_history("t-job", {"step": 15, "loss_d": 9.9}, stale)  # the cut-off attempt, late
    assert job_store.history("t-job") == [{"step": 5, "loss_d": 0.5}, {"step": 10, "loss_d": 1.0}, {"step": 5, "loss_d": 0.5}]


def state(payload: str, final: str | None = None, fence: Fence | None = None, step: int | None = None) -> StateWrite:
    return StateWrite(key="celery-task-meta-t-job", payload=payload, ttl_s=60, final=final, fence=fence, step=step)


def test_the_state_record_takes_the_holders_writes_in_step_order_and_one_final_state(job_store: JobStore) -> None:
    job_store.add(make_record("t-job", "train", {}))
    stale = fence_for(job_store, "t-job", "train")
    assert job_store.put_state("t-job", state("started", fence=stale))
    assert job_store.put_state("t-job", state("at 2600", fence=stale, step=2600))
    current = take_over(job_store, stale, "t-job", "train")
    assert not job_store.put_state("t-job", state("stale retry", fence=stale)), "a cut-off attempt writes no state"
    assert not job_store.put_state("t-job", state("at 2400", fence=current, step=2400)), "progress never goes back"
    assert job_store.put_state("t-job", state("at 2700", fence=current, step=2700))
    assert job_store.active() == ["t-job"]
    assert job_store.put_state("t-job", state("success", final="SUCCESS"))
    assert job_store.put_state("t-job", state("success", final="SUCCESS")), "the same final write, sent again, lands again"
    assert not job_store.put_state("t-job", state("failure", final="FAILURE"))
    assert not job_store.put_state("t-job", state("at 2800", fence=current, step=2800))
    assert job_store.get_state("t-job", "celery-task-meta-t-job") == "success"
    assert job_store.get_field("t-job", JobField.OUTCOME) == "SUCCESS" and job_store.active() == []


def test_set_once_answers_a_repeated_call_as_the_first(job_store: JobStore) -> None:
    assert job_store.set_once("g-job", JobField.FINALIZE_SENT, "task-a")
    assert job_store.set_once("g-job", JobField.FINALIZE_SENT, "task-a"), "the same caller, after a timeout"
    assert not job_store.set_once("g-job", JobField.FINALIZE_SENT, "task-b")
    job_store.clear_field("g-job", JobField.FINALIZE_SENT)
    assert job_store.get_field("g-job", JobField.FINALIZE_SENT) is None


def test_progress_comes_from_the_ledger(job_store: JobStore) -> None:
    job_store.set_once("g-job", JobField.STARTED_AT, repr(time.time() - 2))
    job_store.put_shard("g-job", 0, record(100), fence_for(job_store, "g-job", "shard:0"))
    progress = generation_progress(job_store, "g-job", shards_total=4, images_total=400)
    assert progress.shards_done == 1 and progress.images_done == 100
    assert 30 < progress.images_per_s < 60 and 5 < progress.eta_s < 7
    # a shard waiting for redelivery is not live work: the ETA leaves it out
    waiting = generation_progress(job_store, "g-job", shards_total=4, images_total=400, stalled_images=300)
    assert waiting.eta_s == 0


@pytest.mark.integration
def test_every_redis_key_comes_from_keys(redis_job_store: RedisJobStore) -> None:
    client: redis.Redis = redis_job_store.client
    redis_job_store.add(make_record("g-job", "generate", {}))
    redis_job_store.put_shard("g-job", 0, record(3), fence_for(redis_job_store, "g-job", "shard:0"))
    assert set(client.keys("*")) == {Keys.jobs(), Keys.active(), Keys.job("g-job"), Keys.shards("g-job"), Keys.lease("g-job:shard:0")}
    assert client.hget(Keys.job("g-job"), JobField.IMAGES_DONE) == "3"
