"""Nothing lost: worker crashes and shutdowns, Redis restarts, S3 outages, hostile messages and input, secrets.

Real processes throughout: redis-server, SeaweedFS S3 and `augment worker` processes that are SIGKILLed or
SIGTERMed, with the shipped visibility timeout (one test shortens it, to show a live task is never handed out).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from kombu import Connection, Exchange, Producer

from producer.client import Client, SubmitError
from shared.broker import TRAIN_TASK, make_celery
from shared.datasets import DatasetNotFound
from shared.manifest import Manifest
from shared.settings import Settings
from shared.specs import SpecError
from shared.storage import open_storage
from shared.transport import heartbeat_interval_s
from tests.support.processes import job_store, parts_held_by, run_cli, shard_writes, train_tiny_model
from tests.support.servers import RedisServer
from tests.support.strategies import train_dicts
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def assert_manifest_matches_storage(env: dict[str, str], job_id: str, shards: int) -> Manifest:
    storage = open_storage(Settings.from_env(env))
    manifest = Manifest.load(storage, job_id)
    assert len(manifest.shards) == shards
    assert storage.list(f"synthetic/{job_id}") == sorted(
        [manifest.shard_key(shard) for shard in manifest.shards] + [f"synthetic/{job_id}/manifest.json"]
    )
    for shard in manifest.shards:
        assert storage.checksum(manifest.shard_key(shard)) == shard.sha256
    return manifest


def test_worker_killed_mid_generation_the_job_completes_on_another(augment_env, start_worker):
    # The shipped visibility timeout: the dead worker's shard comes back within it, not after an hour.
    doomed = start_worker()
    model = train_tiny_model(augment_env)
    job_id = run_cli(augment_env, "generate", "--model", model, "--count", "5000", "--shard-size", "500").stdout.strip()
    store = job_store(augment_env)
    wait_for(lambda: len(shard_writes([doomed], job_id)) >= 2 and bool(parts_held_by(doomed, store, job_id)), 120,
             "a shard in the making on the first worker, after two")
    doomed.kill()
    (part,) = parts_held_by(doomed, store, job_id)

    # Honest status: the shard waits for another worker, and the status says so instead of an ETA.
    def stall_shown() -> bool:
        shown = run_cli(augment_env, "status", job_id)
        return f"{part.replace(':', ' ')}: its worker augment-{doomed.pid}@" in shown.stdout and "redelivery pending" in shown.stdout

    wait_for(stall_shown, 60, "the status to show the stalled shard")
    stalled = json.loads(run_cli(augment_env, "status", job_id, "--json").stdout)["stalled"]
    assert [stall["part"] for stall in stalled] == [part] and stalled[0]["silent_s"] > 10

    survivor = start_worker(queues="generate")
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.3", timeout=240)
    assert watched.returncode == 0, watched.stderr + survivor.log_tail()
    manifest = assert_manifest_matches_storage(augment_env, job_id, 10)
    assert manifest.total == 5000
    # The ledger says who made each shard (a SIGKILL can cut a worker's last log line, never its record).
    maker = {index: record.worker.split("@")[0] for index, record in store.shard_records(job_id).items()}
    assert sorted(maker) == list(range(10))
    assert set(maker.values()) == {f"augment-{doomed.pid}", f"augment-{survivor.pid}"}, "both workers made shards"
    assert maker[int(part.split(":")[1])] == f"augment-{survivor.pid}", "the survivor made the lost shard"
    writes = shard_writes([doomed, survivor], job_id)
    assert sorted(index for _, index in writes) == list(range(10)), "every shard written once, by one worker"
    assert f"job {job_id}: redelivered" in survivor.log_path.read_text()
    assert store.liveness.beats(job_id) == {}, "no part is left looking stalled"


def test_sigterm_a_generation_worker_finishes_its_shards_and_hands_back_the_rest(augment_env, start_worker):
    start_worker(queues="train")
    model = train_tiny_model(augment_env)
    stopping = start_worker(queues="generate")  # two task threads: it runs (and holds) two shards at once
    job_id = run_cli(augment_env, "generate", "--model", model, "--count", "6000", "--shard-size", "300").stdout.strip()
    store = job_store(augment_env)
    wait_for(lambda: len(shard_writes([stopping], job_id)) >= 2 and bool(parts_held_by(stopping, store, job_id)), 120,
             "shards in the making")
    exited_in = stopping.stop(timeout=60)
    assert exited_in is not None, "the worker exited by itself"
    assert parts_held_by(stopping, store, job_id) == [], "it finished what it had started"

    taker = start_worker(queues="generate")
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.3", timeout=240)
    assert watched.returncode == 0, watched.stderr + taker.log_tail()
    assert_manifest_matches_storage(augment_env, job_id, 20)
    writes = shard_writes([stopping, taker], job_id)
    assert sorted(index for _, index in writes) == list(range(20)), "every shard written once, by one worker"
    assert writes and {log for log, _ in writes} == {stopping.log_path.name, taker.log_path.name}


def test_a_live_worker_keeps_its_task_however_long_it_runs(augment_env, start_worker):
    # The one test that shortens the visibility timeout, to far below the job's length: Redis used to hand the
    # running job to the idle second worker every 2 s. Its holder's heartbeat now keeps it from coming due.
    env = dict(augment_env, AUGMENT_VISIBILITY_TIMEOUT="4")
    workers = [start_worker(env=env, queues="train"), start_worker(env=env, queues="train")]
    job_id = run_cli(env, "train", "--dataset", "fake", "--steps", "300", "--width", "8", "--batch-size", "32",
                     "--log-every", "20", "--teacher", "0", "--reference-steps", "30").stdout.strip()
    watched = run_cli(env, "watch", job_id, "--interval", "0.3", timeout=240)
    assert watched.returncode == 0, watched.stderr
    logs = [worker.log_path.read_text() for worker in workers]
    steps = [re.findall(rf"job {job_id} step (\d+)/300 ", log) for log in logs]
    # a progress line every 20 steps and at every validation measurement (every 50): each step once, on one worker
    expected = sorted({*range(20, 301, 20), *range(50, 301, 50)})
    assert sorted(steps, key=len) == [[], [str(step) for step in expected]], "the job trained on one worker, once"
    assert sum(log.count(f"augment.train[{job_id}] received") for log in logs) == 1, "delivered once"
    assert not any("redelivered" in log or "running on another worker" in log for log in logs)


def test_held_messages_stay_invisible_while_their_holder_lives(augment_env):
    settings = Settings.from_env(augment_env)
    index = redis.Redis.from_url(augment_env["AUGMENT_BROKER_URL"])
    with make_celery(settings).connection_for_read() as connection:
        queue = connection.SimpleQueue(f"held-{uuid.uuid4().hex[:8]}")
        queue.put({"n": 1})
        held = queue.get(timeout=10)
        delivered = index.zscore("unacked_index", held.delivery_tag)
        assert delivered is not None
        time.sleep(heartbeat_interval_s(settings.visibility_timeout_s) + 2)
        beaten = index.zscore("unacked_index", held.delivery_tag)
        assert beaten is not None and beaten > delivered, "the heartbeat moved it forward"
        held.ack()
        time.sleep(heartbeat_interval_s(settings.visibility_timeout_s) + 1)
        assert index.zscore("unacked_index", held.delivery_tag) is None, "an acked message is not put back"
        queue.close()


def test_redis_restart_loses_no_job(augment_env, start_worker, redis_server: RedisServer):
    worker = start_worker()
    running = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "300", "--width", "16",
                      "--batch-size", "32", "--log-every", "10", "--teacher", "0", "--reference-steps", "30").stdout.strip()
    queued = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "20", "--width", "8", "--teacher", "0").stdout.strip()
    wait_for(lambda: f"job {running} step 50/300" in worker.log_path.read_text(), 120, "the first job to run")
    records_before = run_cli(augment_env, "status", queued, "--json").stdout
    redis_server.restart()

    for job_id in (running, queued):
        watched = run_cli(augment_env, "watch", job_id, "--interval", "0.3", timeout=240)
        assert watched.returncode == 0, watched.stderr + worker.log_tail()
    after = json.loads(run_cli(augment_env, "status", queued, "--json").stdout)
    assert after["spec"] == json.loads(records_before)["spec"]
    listing = run_cli(augment_env, "list").stdout
    assert running in listing and queued in listing


@pytest.mark.slow
def test_s3_unreachable_for_30_seconds_mid_job(augment_env, start_worker, s3_server):
    worker = start_worker()
    model = train_tiny_model(augment_env)
    job_id = run_cli(augment_env, "generate", "--model", model, "--count", "4000", "--shard-size", "100").stdout.strip()
    wait_for(lambda: len(shard_writes([worker], job_id)) >= 2, 120, "two shards")
    s3_server.stop()
    try:
        time.sleep(30)
    finally:
        s3_server.start()
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.5", timeout=300)
    assert watched.returncode == 0, watched.stderr + worker.log_tail()
    assert_manifest_matches_storage(augment_env, job_id, 40)


def test_hostile_messages_fail_alone_and_the_worker_keeps_serving(augment_env, start_worker):
    worker = start_worker(queues="train")
    client = redis.Redis.from_url(augment_env["AUGMENT_BROKER_URL"])
    client.lpush("train", b"\x00\xffnot json at all")
    client.lpush("train", json.dumps({"body": "e30=", "headers": {}, "properties": {}}))  # an envelope with no task
    app = make_celery(Settings.from_env(augment_env))
    with Connection(augment_env["AUGMENT_BROKER_URL"]) as connection:
        # a pickle payload: the worker accepts JSON only, so it must refuse this without unpickling it
        Producer(connection).publish(
            {"spec": {"job_id": "t-pickled"}}, exchange=Exchange("train"), routing_key="train", serializer="pickle",
            headers={"task": TRAIN_TASK, "id": "t-pickled", "lang": "py"},
        )
    bad_spec_id = f"t-{uuid.uuid4().hex[:12]}"
    app.send_task(TRAIN_TASK, kwargs={"spec": {"job_id": bad_spec_id, "dataset": "fake", "steps": "many"}},
                  task_id=bad_spec_id, queue="train")
    app.send_task(TRAIN_TASK, kwargs={"spec": ["not", "an", "object"]}, task_id="t-notanobject", queue="train")
    app.send_task(TRAIN_TASK, args=[1, 2, 3], task_id="t-wrongargs", queue="train")

    submitted = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "5", "--width", "8")
    assert submitted.returncode == 0, submitted.stderr
    good = submitted.stdout.strip()
    watched = run_cli(augment_env, "watch", good, "--interval", "0.2", timeout=180)
    assert watched.returncode == 0, watched.stderr + worker.log_tail()
    assert worker.process is not None and worker.process.poll() is None, "the worker still runs"
    failed = app.AsyncResult(bad_spec_id)
    assert failed.state == "FAILURE" and "invalid train spec: steps" in str(failed.result)
    log = worker.log_path.read_text()
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert "dropped a malformed message" in log


def test_a_redelivered_message_of_an_ended_job_is_skipped(augment_env, start_worker):
    # a duplicated message, or one handed out again after its job ended: the first final state stands, and the
    # finished model is not trained or written again
    worker = start_worker(queues="train")
    finished = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "3", "--width", "8", "--teacher", "0").stdout.strip()
    assert run_cli(augment_env, "watch", finished, "--interval", "0.2", timeout=180).returncode == 0, worker.log_tail()
    storage = open_storage(Settings.from_env(augment_env))
    card = storage.get_text(f"models/{finished}/model.json")
    spec = Client.connect(Settings.from_env(augment_env)).store.get(finished)
    assert spec is not None
    make_celery(Settings.from_env(augment_env)).send_task(TRAIN_TASK, kwargs={"spec": spec.spec}, task_id=finished, queue="train")
    # the worker takes its queue in order: once a job sent after the duplicate ends, the duplicate has been handled
    after = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "2", "--width", "8", "--teacher", "0").stdout.strip()
    assert run_cli(augment_env, "watch", after, "--interval", "0.2", timeout=180).returncode == 0, worker.log_tail()
    status = json.loads(run_cli(augment_env, "status", finished, "--json").stdout)
    assert status["state"] == "SUCCESS" and status["result"]["steps"] == 3
    assert storage.get_text(f"models/{finished}/model.json") == card
    log = worker.log_path.read_text()
    assert log.count(f"augment.train[{finished}] received") == 2 and f"job {finished}: resuming from step" not in log


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=train_dicts)
def test_fuzzed_submissions_get_clean_errors_and_enqueue_only_valid_jobs(augment_env, fields: dict[str, Any]):
    client = Client.connect(Settings.from_env(augment_env))
    queue = redis.Redis.from_url(augment_env["AUGMENT_BROKER_URL"])
    before = queue.llen("train")
    fields = {name: value for name, value in fields.items() if name != "job_id"}  # the client assigns the id
    try:
        client.submit_train(**fields)
    except (SpecError, DatasetNotFound, SubmitError) as exc:
        assert "\n" not in str(exc)
        assert queue.llen("train") == before, "nothing enqueued for bad input"
    except TypeError as exc:  # a field name that is not an identifier cannot be a keyword at all
        assert not all(isinstance(name, str) and name.isidentifier() for name in fields), exc
    else:
        assert queue.llen("train") == before + 1


def test_redis_with_a_password_works_and_the_password_is_never_shown(augment_env, start_worker, tmp_path):
    password = f"pw-{uuid.uuid4().hex}"
    with RedisServer(password=password) as locked:
        env = dict(augment_env, AUGMENT_BROKER_URL=locked.url)
        assert password in locked.url
        worker = start_worker(env=env, queues="train")
        submitted = run_cli(env, "train", "--dataset", "fake", "--steps", "5", "--width", "8")
        assert submitted.returncode == 0, submitted.stderr
        watched = run_cli(env, "watch", submitted.stdout.strip(), "--interval", "0.2", timeout=180)
        assert watched.returncode == 0, watched.stderr
        wrong = run_cli(dict(env, AUGMENT_BROKER_URL=locked.url.replace(password, "wrong-" + password)), "list")
        assert wrong.returncode == 1 and "refused the password" in wrong.stderr
        for output in (submitted, watched, wrong):
            assert password not in output.stdout + output.stderr
        assert password not in worker.log_path.read_text()
