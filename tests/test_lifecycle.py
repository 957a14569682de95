"""A job's state has one owner (shared/lifecycle.py): its transitions, the first final state standing, and the stop
reasons. On the demo's in-process broker and result backend (the product's own memory mode); the same transitions
through real workers, Redis and S3 are in tests/test_resume.py, tests/test_evaluation_stops.py and tests/test_faults.py."""

from __future__ import annotations

import uuid

import pytest

from producer.client import Client
from shared.lifecycle import JobStates, JobStopped, StopReason
from shared.progress import StageProgress
from shared.records import make_record
from shared.settings import Settings
from shared.specs import TrainSpec
from shared.storage import FileStorage
from worker.train import run_training


@pytest.fixture
def client(tmp_path) -> Client:
    return Client.connect(Settings.from_env({"AUGMENT_BROKER_URL": "memory://", "AUGMENT_STORAGE_URL": tmp_path.as_uri()}))


def submitted(client: Client) -> str:
    job_id = f"t-{uuid.uuid4().hex[:12]}"
    client.store.add(make_record(job_id, "train", {"job_id": job_id, "dataset": "fake"}))
    return job_id


def test_a_job_goes_from_queued_through_running_to_its_result(client: Client, tmp_path) -> None:
    states, job_id = client.states, submitted(client)
    assert states.read(job_id)[0] == "PENDING" and not states.ended(job_id)
    states.started(job_id)
    assert client.state(job_id) == "STARTED"
    states.progress(job_id, StageProgress("training the teacher (3 classifiers)", 5, 10))
    assert client.status(job_id)["progress"]["done"] == 5  # type: ignore[index]
    states.retrying(job_id, ConnectionError("S3 is down"))
    assert states.read(job_id)[0] == "RETRY" and str(states.read(job_id)[1]) == "S3 is down"
    result = run_training(TrainSpec(job_id=job_id, dataset="fake", steps=2, width=8, batch_size=16, teacher=0), Settings(),
                          FileStorage(tmp_path))
    assert states.succeeded(job_id, result) and states.ended(job_id)
    status = client.status(job_id)
    assert status is not None and status["state"] == "SUCCESS" and client.finished(job_id, status["result"]) == result


def test_the_first_final_state_stands(client: Client) -> None:
    states, job_id = client.states, submitted(client)
    assert states.cancelled(job_id, "cancelled by a person")
    assert not states.failed(job_id, RuntimeError("a late shard task failed"))
    assert not states.cancelled(job_id, "a second cancel")
    # a worker that took the job just before it was cancelled cannot make it look running again
    states.started(job_id)
    states.progress(job_id, StageProgress("sampling"))
    states.handed_back(job_id, "worker shutting down")
    states.retrying(job_id, ConnectionError("S3 is down"))
    assert states.read(job_id) == ("CANCELLED", {"reason": "cancelled by a person"})


def test_a_failure_keeps_its_error(client: Client) -> None:
    states, job_id = client.states, submitted(client)
    assert states.failed(job_id, ValueError("spec job_id t-x does not match task id t-y"))
    status = client.status(job_id)
    assert status is not None and status["state"] == "FAILURE"
    assert status["error"] == "ValueError: spec job_id t-x does not match task id t-y"


def test_a_handed_back_job_is_queued_again_and_a_cancel_then_ends_it_at_once(client: Client) -> None:
    states, job_id = client.states, submitted(client)
    states.started(job_id)
    states.handed_back(job_id, "worker shutting down: handed to another worker")
    assert states.read(job_id) == ("PENDING", {"reason": "worker shutting down: handed to another worker"})
    assert client.cancel(job_id) == "CANCELLED" and states.ended(job_id)


def test_the_states_of_one_broker_are_one_record(client: Client) -> None:
    # the producer's and a worker's JobStates over the same backend and store see the same record
    job_id = submitted(client)
    worker_side = JobStates(client.app.backend, client.store)
    worker_side.started(job_id)
    assert client.states.read(job_id)[0] == "STARTED"


def test_a_stop_says_why() -> None:
    stopped = JobStopped(StopReason.LEASE_LOST, "job t-x stopped at step 40")
    assert stopped.reason is StopReason.LEASE_LOST and str(stopped) == "job t-x stopped at step 40 (lease lost)"
    assert {str(reason) for reason in StopReason} == {"cancelled", "preempted", "lease lost"}
