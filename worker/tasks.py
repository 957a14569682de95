"""Thin Celery tasks: parse and validate the spec, wire progress and cancellation, call the plain function.

The task id is the job id. Progress goes to the result backend as state ``PROGRESS``; a cancelled job ends in
state ``CANCELLED`` (Celery's ``Ignore`` keeps it from being overwritten).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.utils.log import get_task_logger

from shared.broker import GENERATE_TASK, TRAIN_TASK
from shared.jobs import CANCELLED, PROGRESS, JobCancelled, open_job_store
from shared.settings import Settings
from shared.specs import GenerateSpec, TrainSpec
from shared.storage import open_storage
from worker.app import app
from worker.generate import run_generation
from worker.train import TrainHooks, run_training

log = get_task_logger(__name__)


def _run_job(task: Task, spec_data: Any, parse: Callable[[Any], Any], work: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    spec = parse(spec_data)  # a SpecError fails the task with a one-line reason; retrying cannot fix a bad spec
    if spec.job_id != task.request.id:
        raise ValueError(f"spec job_id {spec.job_id} does not match task id {task.request.id}")
    settings = Settings.from_env()
    store = open_job_store(settings)

    def report(info: dict[str, Any]) -> None:
        task.update_state(state=PROGRESS, meta=info)

    def should_stop() -> bool:
        return store.cancel_requested(spec.job_id)

    try:
        if should_stop():
            raise JobCancelled(f"job {spec.job_id} was cancelled before it started")
        storage = open_storage(settings)
        return work(spec, settings, storage, report, should_stop)
    except JobCancelled as exc:
        log.info("%s", exc)
        task.update_state(state=CANCELLED, meta={"reason": str(exc)})
        raise Ignore() from None


@app.task(name=TRAIN_TASK, bind=True)
def train(self: Task, spec: Any) -> dict[str, Any]:
    return _run_job(
        self, spec, TrainSpec.from_dict,
        lambda spec, settings, storage, report, should_stop: run_training(
            spec, settings, storage, TrainHooks(progress=report, should_stop=should_stop)
        ),
    )


@app.task(name=GENERATE_TASK, bind=True)
def generate(self: Task, spec: Any) -> dict[str, Any]:
    return _run_job(
        self, spec, GenerateSpec.from_dict,
        lambda spec, settings, storage, report, should_stop: run_generation(spec, storage, report, should_stop),
    )
