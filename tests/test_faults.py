"""Nothing lost: worker crashes, Redis restarts, S3 outages, hostile messages and input, secrets.

Real processes throughout: redis-server, SeaweedFS S3 and `augment worker` processes that are SIGKILLed.
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
from shared.jobs import RedisJobStore
from shared.manifest import Manifest
from shared.settings import Settings
from shared.specs import SpecError
from shared.storage import open_storage
from tests.processes import run_cli
from tests.servers import RedisServer
from tests.test_fleet import shard_writes, train_tiny_model, wait_for
from tests.test_specs import train_dicts

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
    env = dict(augment_env, AUGMENT_VISIBILITY_TIMEOUT="3")  # a dead worker's message comes back after 3 s
    doomed = start_worker(env=env)
    model = train_tiny_model(env)
    job_id = run_cli(env, "generate", "--model", model, "--count", "3000", "--shard-size", "100").stdout.strip()
    wait_for(lambda: len(shard_writes([doomed], job_id)) >= 3, 120, "three shards on the first worker")
    doomed.kill()
    survivor = start_worker(env=env, queues="generate")
    watched = run_cli(env, "watch", job_id, "--interval", "0.3", timeout=240)
    assert watched.returncode == 0, watched.stderr + survivor.log_tail()

    manifest = assert_manifest_matches_storage(env, job_id, 30)
    assert manifest.total == 3000
    # The ledger says who made each shard (a SIGKILL can cut a worker's last log line, never its record).
    ledger = RedisJobStore(redis.Redis.from_url(env["AUGMENT_BROKER_URL"], decode_responses=True)).shard_records(job_id)
    maker = {index: record["worker"].split("@")[0] for index, record in ledger.items()}
    assert sorted(maker) == list(range(30))
    assert set(maker.values()) == {f"augment-{doomed.pid}", f"augment-{survivor.pid}"}, "both workers made shards"
    writes = shard_writes([doomed, survivor], job_id)
    assert max(writes.values()) == 1, "no worker wrote a shard twice"
    written_by = {}
    for log, index in writes:
        assert index not in written_by, f"shard {index} was written by both workers"
        written_by[index] = log
    survivor_made = {index for index, name in maker.items() if name == f"augment-{survivor.pid}"}
    assert {index for index, log in written_by.items() if log == survivor.log_path.name} == survivor_made


def test_a_redelivered_training_job_never_runs_beside_the_first(augment_env, start_worker):
    # A visibility timeout far shorter than the job: Redis hands the running job to the idle second worker.
    env = dict(augment_env, AUGMENT_VISIBILITY_TIMEOUT="2")
    workers = [start_worker(env=env, queues="train"), start_worker(env=env, queues="train")]
    job_id = run_cli(env, "train", "--dataset", "fake", "--steps", "400", "--width", "16", "--batch-size", "32",
                     "--log-every", "20").stdout.strip()
    watched = run_cli(env, "watch", job_id, "--interval", "0.3", timeout=240)
    assert watched.returncode == 0, watched.stderr

    def trained_steps(log: str) -> list[int]:
        return [int(step) for step in re.findall(rf"job {job_id} step (\d+)/400 ", log)]

    logs = [worker.log_path.read_text() for worker in workers]
    training = [log for log in logs if trained_steps(log)]
    assert len(training) == 1, "the job trained on one worker only"
    assert trained_steps(training[0]) == list(range(20, 401, 20))
    assert any(f"job {job_id} is running on another worker" in log for log in logs), "the job was redelivered"


def test_redis_restart_loses_no_job(augment_env, start_worker, redis_server: RedisServer):
    worker = start_worker()
    running = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "300", "--width", "16",
                      "--batch-size", "32", "--log-every", "10").stdout.strip()
    queued = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "20", "--width", "8").stdout.strip()
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
