"""Generation across a fleet, on real parts: CLI processes, real Redis, real SeaweedFS S3, real worker processes."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from shared.broker import GENERATE_QUEUE, GENERATE_SHARD_TASK, make_celery
from shared.manifest import Manifest
from shared.settings import Settings
from shared.storage import open_storage
from tests.support.processes import run_cli, shard_writes, train_tiny_model
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_two_workers_share_a_job_and_write_every_shard_once(augment_env, start_worker):
    # one of each kind: solo (all queues) and a generate-only worker, which runs two shard tasks at once in threads
    workers = [start_worker(), start_worker(queues="generate")]
    assert "concurrency: 2 (thread)" in workers[1].log_path.read_text()
    model = train_tiny_model(augment_env)
    # many small shards: the job must outlast the watch's start-up (~1 s) for it to show progress lines
    submitted = run_cli(augment_env, "generate", "--model", model, "--count", "2000", "--shard-size", "8", "--seed", "2")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.2", timeout=240)
    assert watched.returncode == 0, watched.stderr
    assert re.search(r"shards \d+/250 images \d+/2000", watched.stderr)

    writes = shard_writes(workers, job_id)
    indices = Counter(index for _, index in writes.elements())
    assert indices == Counter(range(250)), "every shard written exactly once"
    assert len({log for log, _ in writes}) == 2, "both workers made shards"

    storage = open_storage(Settings.from_env(augment_env))
    manifest = Manifest.load(storage, job_id)
    assert manifest.total == 2000 and len(manifest.shards) == 250
    assert storage.list(f"synthetic/{job_id}") == sorted(
        [manifest.shard_key(shard) for shard in manifest.shards] + [f"synthetic/{job_id}/manifest.json"]
    )
    for shard in manifest.shards:
        data = storage.get_bytes(manifest.shard_key(shard))
        assert (len(data), hashlib.sha256(data).hexdigest()) == (shard.size, shard.sha256)
    status = json.loads(run_cli(augment_env, "status", job_id, "--json").stdout)
    assert status["state"] == "SUCCESS" and status["result"]["images"] == 2000

    # A shard task delivered again after the job finished (a redelivery, a duplicate) changes nothing.
    app = make_celery(Settings.from_env(augment_env))
    app.send_task(GENERATE_SHARD_TASK, kwargs={"spec": manifest.spec, "shard": 7}, queue=GENERATE_QUEUE)
    wait_for(lambda: any(f"job {job_id} has ended (SUCCESS): shard 7 is left" in w.log_path.read_text() for w in workers),
             60, "the duplicate shard task")
    assert shard_writes(workers, job_id) == writes
    assert Manifest.load(storage, job_id) == manifest
    assert json.loads(run_cli(augment_env, "status", job_id, "--json").stdout)["state"] == "SUCCESS"


def test_cancelling_a_running_generation_stops_it_without_a_manifest(augment_env, start_worker):
    worker = start_worker()
    model = train_tiny_model(augment_env)
    job_id = run_cli(augment_env, "generate", "--model", model, "--count", "20000", "--shard-size", "50").stdout.strip()
    wait_for(lambda: len(shard_writes([worker], job_id)) >= 3, 120, "three shards")
    cancelled = run_cli(augment_env, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    at_cancel = len(shard_writes([worker], job_id))
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.2", timeout=120)
    assert watched.returncode == 3, watched.stderr
    # a running job stops at its next shard: the one in the making when the cancel came may still be finished
    assert len(shard_writes([worker], job_id)) - at_cancel <= 1, "shards went on being made after the cancel"
    storage = open_storage(Settings.from_env(augment_env))
    assert not storage.exists(f"synthetic/{job_id}/manifest.json")
    assert len(storage.list(f"synthetic/{job_id}")) < 400
    status = json.loads(run_cli(augment_env, "status", job_id, "--json").stdout)
    assert status["state"] == "CANCELLED" and "cancelled" in status["progress"]["reason"]
