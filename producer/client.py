"""Submitting and following jobs: the producer's plain functions (the CLI is a thin layer over these).

Nothing here imports torch or the worker's task code: tasks are sent by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery

from shared.broker import check_broker, make_celery, redelivery_after_s
from shared.contracts import ContractError, Result, kind_of
from shared.datasets import locate_dataset
from shared.layout import model_card_key, report_markdown_key
from shared.lifecycle import PENDING, TERMINAL_STATES, JobStates, cancel_sweep, describe_status
from shared.liveness import Stall, shard_of, stalls
from shared.models import ModelNotFound, check_model, continuation_problem, read_card, study_problem
from shared.progress import generation_progress, progress_to_dict
from shared.records import JobStore, make_record, new_job_id, open_job_store
from shared.settings import Settings
from shared.specs import EvaluateSpec, GenerateSpec, TrainSpec, rebalance_counts
from shared.storage import ObjectNotFound, open_storage
from shared.sweeps import SweepSpec


class SubmitError(RuntimeError):
    """The job cannot run as asked (missing dataset or model); nothing was enqueued."""


@dataclass
class Client:
    """A connection to the job system: Celery app, job records and storage, all from one Settings."""

    settings: Settings
    app: Celery
    store: JobStore

    @classmethod
    def connect(cls, settings: Settings, app: Celery | None = None) -> Client:
        if not settings.broker_url.startswith("memory"):
            check_broker(settings)  # fail in seconds with a clear message rather than hang in kombu's retries
        return cls(settings, app or make_celery(settings), open_job_store(settings))

    def _enqueue(self, kind: str, spec: TrainSpec | GenerateSpec | EvaluateSpec | SweepSpec) -> str:
        spec_dict = spec.to_dict()
        self.store.add(make_record(spec.job_id, kind, spec_dict))
        kind_of(kind, spec_dict).send(self.app, spec_dict)
        return spec.job_id

    def submit_train(self, **fields: Any) -> str:
        """Validate a train spec, check the dataset exists, enqueue; returns the job id."""
        spec = TrainSpec.from_dict({"job_id": new_job_id("train"), **fields})
        locate_dataset(spec.dataset, self.settings)  # raises DatasetNotFound saying where it looked
        if spec.continues is not None:
            self._check_model(spec.continues)
            problem = continuation_problem(spec, read_card(open_storage(self.settings), spec.continues))
            if problem is not None:
                raise SubmitError(f"cannot continue {spec.continues}: {problem}")
        return self._enqueue("train", spec)

    def _check_model(self, model: str) -> None:
        storage = open_storage(self.settings)
        try:
            check_model(storage, model)
        except ModelNotFound:
            record = self.store.get(model)
            hint = (
                f"training job {model} has not finished yet (state {self.state(model)})"
                if record is not None and record.kind == "train"
                else "pass the job id that `augment train` printed"
            )
            raise SubmitError(f"unknown model {model}: no {storage.url_for(model_card_key(model))}; {hint}") from None

    def submit_generate(self, **fields: Any) -> str:
        """Validate a generate spec, check the model exists in storage, enqueue; returns the job id."""
        spec = GenerateSpec.from_dict({"job_id": new_job_id("generate"), **fields})
        self._check_model(spec.model)
        return self._enqueue("generate", spec)

    def submit_rebalance(self, model: str, to: int | None = None, **fields: Any) -> str:
        """A generation job that brings every class of MODEL's training set to TO images, real plus synthetic (None:
        to its largest class), planned from the model card's per-class counts; returns the job id."""
        self._check_model(model)
        try:
            card = read_card(open_storage(self.settings), model)
        except ContractError as exc:
            raise SubmitError(str(exc)) from None
        real_counts = card.class_counts
        if not real_counts:
            raise SubmitError(f"model {model}'s card has no per-class counts (an unconditional model, or one trained "
                              "before they were recorded); give --class-counts instead, or train it again")
        target = max(real_counts.values()) if to is None else to
        class_counts = rebalance_counts(real_counts, target)
        if sum(class_counts.values()) == 0:
            raise SubmitError(f"every class of model {model} has {target} or more training images already: nothing to "
                              f"generate; give --to above {min(real_counts.values())}")
        return self.submit_generate(model=model, count=sum(class_counts.values()), class_counts=class_counts,
                                    real_counts=real_counts, rebalance_to=target, **fields)

    def submit_evaluate(self, **fields: Any) -> str:
        """Validate an evaluate spec, check its model or dataset exists, enqueue; returns the job id."""
        spec = EvaluateSpec.from_dict({"job_id": new_job_id("evaluate"), **fields})
        if spec.model is not None:
            self._check_model(spec.model)
        if spec.mode == "utility" and spec.model is not None:
            problem = study_problem(read_card(open_storage(self.settings), spec.model), spec.holdout)
            if problem is not None:
                raise SubmitError(f"cannot study model {spec.model}: {problem}")
        if spec.dataset is not None:
            locate_dataset(spec.dataset, self.settings)
        return self._enqueue("evaluate", spec)

    def submit_sweep(self, **fields: Any) -> SweepSpec:
        """Validate a sweep spec (every trial's training spec with it), check its dataset exists, enqueue; returns
        the spec (its job id and plan)."""
        spec = SweepSpec.from_dict({"job_id": new_job_id("sweep"), **fields})
        locate_dataset(spec.dataset, self.settings)
        self._enqueue("sweep", spec)
        return spec

    def report(self, job_id: str) -> str:
        """The markdown report of a finished evaluation job."""
        try:
            return open_storage(self.settings).get_text(report_markdown_key(job_id))
        except ObjectNotFound:
            raise SubmitError(f"job {job_id} has no report (yet); `augment status {job_id}` shows where it is") from None

    def finished(self, job_id: str, result: object) -> Result:
        """RESULT, a finished job's result as its status holds it, decoded as the result type of the job's kind."""
        record = self.store.get(job_id)
        if record is None:
            raise SubmitError(f"unknown job {job_id}: `augment list` shows the jobs this broker knows")
        return kind_of(record.kind, record.spec).decode_result(result, job_id)

    @property
    def states(self) -> JobStates:
        return JobStates(self.app.backend, self.store)

    def state(self, job_id: str) -> str:
        return self.states.read(job_id)[0]

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's record merged with its live state; None for an unknown job id."""
        record = self.store.get(job_id)
        state, info = self.states.read(job_id)
        if record is None and state == PENDING:
            return None
        status = describe_status(record, state, info)
        if record is None or state in TERMINAL_STATES | {PENDING}:
            return status
        stalled = self._stalls(job_id)
        if stalled:
            # what waits for a new worker is shown as such, apart from the work that is running
            status["stalled"] = [{**asdict(stall), "note": stall.note} for stall in stalled]
        if record.kind == "generate":
            spec = GenerateSpec.from_dict(record.spec)
            shards = [index for index in (shard_of(stall.part) for stall in stalled) if index is not None]
            waiting = sum(len(spec.shard_images(index)) for index in shards)
            status["progress"] = progress_to_dict(generation_progress(self.store, job_id, spec.shard_count, spec.count, waiting))
        elif stalled and isinstance(status.get("progress"), dict):
            # none of it runs now: no rate, so no ETA
            progress = status["progress"]
            status["progress"] = {**progress, **{rate: 0.0 for rate in ("images_per_s", "per_s") if rate in progress}}
        return status

    def _stalls(self, job_id: str) -> list[Stall]:
        def finished(part: str) -> bool:  # a shard its worker recorded just before it died is done, not stalled
            index = shard_of(part)
            return index is not None and self.store.shard_record(job_id, index) is not None

        return stalls(self.store.liveness, job_id, redelivery_after_s(self.settings), finished)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [
            {"job_id": record.job_id, "kind": record.kind, "submitted_at": record.submitted_at, "state": self.state(record.job_id)}
            for record in self.store.recent(limit)
        ]

    def cancel(self, job_id: str) -> str:
        """Ask a job to stop; a queued job is marked CANCELLED at once, and a sweep with every trial it submitted.
        Returns the state after the request."""
        record = self.store.get(job_id)
        if record is not None and record.kind == "sweep":
            return cancel_sweep(self.states, SweepSpec.from_dict(record.spec), "cancelled (`augment cancel`)")
        return self.states.cancel(job_id)

    def wait(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None] = lambda status: None,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job reaches a terminal state; returns its final status."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status(job_id) or {"state": PENDING, "job_id": job_id}
            on_update(status)
            if status["state"] in TERMINAL_STATES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status['state']} after {timeout_s:.0f} s")
            time.sleep(poll_s)
