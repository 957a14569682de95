"""Everything the dashboard reads, in one place: job records, live states and progress, training history, the shard
ledger, workers (its ``fleet``), and objects in storage (always through storage's key checks).

The web layer (:mod:`producer.dashboard.app`) only calls this module, so a change to how jobs, progress or outputs
are kept is adapted here. Every value returned is plain data (str, numbers, lists, dicts) for templates and JSON.
"""

from __future__ import annotations

import base64
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from markdown_it import MarkdownIt

from producer.client import Client
from producer.dashboard.fleet import Fleet
from shared.contracts import ContractError, QualityReport, SweepReport, TrialOutcome, UtilityReport, kind_of, read_report
from shared.layout import model_card_key, model_prefix, report_markdown_key, report_prefix, shard_object_key
from shared.lifecycle import CANCELLED, PENDING, SUCCESS, TERMINAL_STATES
from shared.manifest import Manifest
from shared.models import ModelCard, read_model_card
from shared.progress import QualityPoint, best_point, progress_from_dict
from shared.records import JobRecord
from shared.settings import Settings
from shared.shards import read_shard
from shared.specs import DEFAULT_SELECT, QUALITY_METRICS, UTILITY, GenerateSpec, SpecError, check_job_id
from shared.storage import ObjectNotFound, Storage, StorageError, join_key, open_storage
from shared.sweeps import SweepSpec, describe
from shared.verdicts import verdict

SAMPLE_GRID = re.compile(r"^step-(\d+)\.png$")
# The only files served from a job's prefix: images, by a plain name (sample grids sit one folder down).
SERVED_FILE = re.compile(r"^(samples/)?[A-Za-z0-9_-][A-Za-z0-9_.-]*\.png$")
FINAL_IMAGES = ("grid.png", "losses.png")  # a finished training job's, at the keys its model card names
CURVE_POINTS = 500  # a curve of more records is thinned to this many points: more than a chart's width shows
STRIP_IMAGES = 16
STRIP_CACHE_SIZE = 32
T = TypeVar("T")


class JobNotFound(LookupError):
    """No such job: an unknown id, or not a job id at all."""


def state_name(state: Any) -> str:
    """A state as its plain name, whether a str or a str-valued Enum."""
    return str(getattr(state, "value", state))


@dataclass
class DashboardData:
    client: Client
    settings: Settings

    def __post_init__(self) -> None:
        self._storage: Storage | None = None
        self._lock = threading.Lock()
        self.fleet = Fleet(self.client)  # the workers page's
        # finished shards never change, so their sample strips are read once (bounded: a dashboard runs for weeks)
        self._strips: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._markdown = MarkdownIt("commonmark", {"html": False}).enable("table")

    @classmethod
    def connect(cls, settings: Settings) -> DashboardData:
        """Connect to Redis now (fails fast with a one-line reason); storage is opened on first use."""
        return cls(Client.connect(settings), settings)

    @property
    def storage(self) -> Storage:
        # Opened lazily and never created: a read-only dashboard may start before any job has made the bucket.
        if self._storage is None:
            self._storage = open_storage(self.settings, create_bucket=False)
        return self._storage

    # ---- jobs ----

    def record(self, job_id: str) -> JobRecord:
        try:
            check_job_id(job_id)
        except SpecError:
            raise JobNotFound(job_id) from None
        record = self.client.store.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def jobs(self, limit: int = 500, kind: str = "", state: str = "") -> list[dict[str, Any]]:
        """Recent jobs, newest first, each a row with its state and progress; KIND and STATE filter when given."""
        rows = []
        for record in self.client.store.recent(limit):
            if kind and record.kind != kind:
                continue
            row = self._summary(record)
            if not state or row["state"] == state:
                rows.append(row)
        return rows

    def _summary(self, record: JobRecord) -> dict[str, Any]:
        status = self.client.status(record.job_id) or {"state": PENDING}
        state = state_name(status["state"])
        progress = status.get("progress") or {}
        row: dict[str, Any] = {
            "job_id": record.job_id,
            "kind": record.kind,
            "state": state,
            "submitted_at": record.submitted_at,
            "fraction": None,
            "detail": "",
            "rate": "",
            "eta_s": None,
            # a running job's latest verdict; a finished one keeps its final warnings in its result
            "warnings": [str(warning) for warning in (progress or status.get("result") or {}).get("warnings", [])],
            "error": str(status.get("error") or ""),
            "cancellable": state not in TERMINAL_STATES,
        }
        record_of_progress = progress_from_dict(progress)
        if record_of_progress is not None:
            row["fraction"] = record_of_progress.fraction
            row["detail"] = record_of_progress.detail()
            row["rate"] = record_of_progress.rate_text()
            row["eta_s"] = record_of_progress.eta_s if row["rate"] else None
        elif state == CANCELLED:
            row["detail"] = str(progress.get("reason", ""))
        if state == SUCCESS:
            row["fraction"] = 1.0
            try:
                row["detail"] = kind_of(record.kind, record.spec).decode_result(status.get("result"), record.job_id).summary()
            except ContractError as exc:
                row["detail"] = str(exc)
        elif row["fraction"] is None and (state in TERMINAL_STATES or state == PENDING):
            row["fraction"] = 0.0  # an empty bar: a moving one would say that work is going on
        return row

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's row plus what its page shows for its kind. What storage holds is left empty, with the reason in
        ``storage_error``, while storage cannot be read (an outage, or a bucket no job has made yet): the live
        state and progress come from Redis and still show."""
        record = self.record(job_id)
        detail = {**self._summary(record), "spec": record.spec}
        errors: list[str] = []
        if record.kind == "train":
            detail |= self._training(record, errors)
        elif record.kind == "generate":
            detail |= self._generation(record, errors)
        elif record.kind == "evaluate":
            detail |= self._evaluation(record, errors)
        elif record.kind == "sweep":
            detail |= self._sweep(record, errors)
        detail["storage_error"] = errors[0] if errors else ""
        return detail

    def _stored(self, errors: list[str], read: Callable[[], T]) -> T | None:
        """READ's value, or None (noting why in ERRORS) while storage cannot be read."""
        try:
            return read()
        except StorageError as exc:
            errors.append(str(exc))
            return None

    def cancel(self, job_id: str) -> str:
        self.record(job_id)
        return state_name(self.client.cancel(job_id))

    # ---- training ----

    def _training(self, record: JobRecord, errors: list[str]) -> dict[str, Any]:
        job_id = record.job_id
        card = self._stored(errors, lambda: self._model_card(job_id, errors))
        samples: list[dict[str, Any]] = []
        for key in self._stored(errors, lambda: self.storage.list(join_key(model_prefix(job_id), "samples"))) or []:
            name = key.rsplit("/", 1)[-1]
            match = SAMPLE_GRID.match(name)
            if match:
                samples.append({"step": int(match.group(1)), "url": f"/jobs/{job_id}/files/samples/{name}"})
        samples.sort(key=lambda sample: sample["step"])
        count = 10 * max(len(card.class_names), 1) if card else 10_000
        history = latest_per_step(self.client.store.history(job_id))
        # a record's spec is shown whatever it holds (a hostile or older one too): only a known metric is used
        select = str(record.spec.get("select")) if record.spec.get("select") in QUALITY_METRICS else DEFAULT_SELECT
        # the validation curve: the card's once written, else the points the progress records carried
        curve = [QualityPoint.from_dict(point) for point in
                 (card.curve if card else [entry["quality"] for entry in history if entry.get("quality")])]
        return {
            "history": thin(history, CURVE_POINTS),
            "curve": [point.__dict__ for point in curve],
            "curve_note": card.validation.get("why_none") if card else None,
            "best": best.__dict__ if (best := best_point(curve, select)) is not None else None,
            "select": select,
            "samples": samples,
            "model_card": card.to_dict() if card else None,
            "generate_command": f"augment generate --model {job_id} --count {max(count, 1000)} --shard-size 1000",
        }

    # ---- generation ----

    def _generation(self, record: JobRecord, errors: list[str]) -> dict[str, Any]:
        job_id = record.job_id
        shards_done, images_done = self.client.store.shard_totals(job_id)
        manifest = self._stored(errors, lambda: self._manifest(job_id))
        info: dict[str, Any] = {
            "shards_done": shards_done,
            "images_done": images_done,
            "shards_total": GenerateSpec.from_dict(record.spec).shard_count,
            "manifest": None,
            "strip": self._stored(errors, lambda: self._strip(job_id, manifest)) or [],
        }
        if manifest is not None:
            names = manifest.class_names
            info["manifest"] = {
                "total": manifest.total,
                "model_id": manifest.model_id,
                "image_size": manifest.image_size,
                "channels": manifest.channels,
                "created_at": manifest.created_at,
                "classes": [
                    {"label": label, "name": names[int(label)] if int(label) < len(names) else "", "count": count}
                    for label, count in sorted(manifest.class_counts.items(), key=lambda item: int(item[0]))
                ],
                "shards": [
                    {"name": entry.name, "count": entry.count, "size": entry.size, "sha256": entry.sha256,
                     "url": self.storage.url_for(manifest.shard_key(entry))}
                    for entry in manifest.shards
                ],
            }
        return info

    def _manifest(self, job_id: str) -> Manifest | None:
        try:
            return Manifest.load(self.storage, job_id)
        except ObjectNotFound:
            return None

    def _strip(self, job_id: str, manifest: Manifest | None) -> list[dict[str, Any]]:
        """A few samples of the job's first finished shard, as data: URLs with their labels."""
        with self._lock:
            if job_id in self._strips:
                self._strips.move_to_end(job_id)
                return self._strips[job_id]
        if manifest is not None and manifest.shards:
            key = manifest.shard_key(manifest.shards[0])
        else:
            records = self.client.store.shard_records(job_id)
            if not records:
                return []
            key = shard_object_key(job_id, records[min(records)].name)
        strip = []
        for sample in read_shard(self.storage.get_bytes(key)):
            strip.append({
                "src": "data:image/png;base64," + base64.b64encode(sample.png).decode("ascii"),
                "label": sample.label,
                "class_name": str(sample.meta.get("class_name", "")),
            })
            if len(strip) == STRIP_IMAGES:
                break
        with self._lock:
            self._strips[job_id] = strip
            while len(self._strips) > STRIP_CACHE_SIZE:
                self._strips.popitem(last=False)
        return strip

    # ---- evaluation ----

    def _evaluation(self, record: JobRecord, errors: list[str]) -> dict[str, Any]:
        report = self._report(record, errors)
        shown = None
        if isinstance(report, str):
            shown = unreadable(report)
        elif report is not None and not isinstance(report, SweepReport):
            shown = verdict(report)
        return {"verdict": shown, **self._report_files(record.job_id, errors)}

    def _report(self, record: JobRecord, errors: list[str]) -> QualityReport | UtilityReport | SweepReport | str | None:
        """The job's report.json, decoded; None before it is written; why, when it cannot be read."""
        kind = kind_of(record.kind, record.spec)
        text = self._stored(errors, lambda: self._text(kind.report_key(record.job_id)))
        if not text:
            return None
        try:
            return read_report(kind, text, record.job_id)
        except ContractError as exc:
            return str(exc)

    def _report_files(self, job_id: str, errors: list[str]) -> dict[str, Any]:
        """A finished evaluation's or sweep's report.md, as HTML, and its published images."""
        prefix = report_prefix(job_id)
        markdown = self._stored(errors, lambda: self._text(report_markdown_key(job_id))) or ""
        keys = self._stored(errors, lambda: self.storage.list(prefix)) or []
        # the published report's images, not those each attempt wrote under attempts/ before the report was fixed
        images = [name for key in keys if (name := key[len(prefix) + 1:]).endswith(".png") and "/" not in name]
        return {
            # html=False: any HTML in the report (a class name, a dataset path) is shown as text, never as markup
            "report_html": self._markdown.render(markdown) if markdown else "",
            "report_images": [{"name": name, "url": f"/jobs/{job_id}/files/{name}"} for name in images],
        }

    # ---- sweeps ----

    def _sweep(self, record: JobRecord, errors: list[str]) -> dict[str, Any]:
        """The leaderboard and every trial's validation curve: the report's once written, else live from the trials'
        jobs (their model cards, or the curve points their progress records carried)."""
        try:
            spec = SweepSpec.from_dict(record.spec)
        except SpecError as exc:
            return {"trials": [], "curves": [], "select": DEFAULT_SELECT, "curve_metric": DEFAULT_SELECT,
                    "sweep_error": str(exc)}
        report = self._report(record, errors)
        outcomes = report.trials if isinstance(report, SweepReport) else [
            self._live_trial(spec, trial, errors) for trial in range(len(spec.settings))]
        rows = [{
            "trial": outcome.trial, "settings": describe(outcome.settings), "steps": outcome.steps, "state": outcome.state,
            "best": outcome.best, "best_step": outcome.best_step, "jobs": outcome.jobs,
            "winner": isinstance(report, SweepReport) and outcome.trial == report.winner,
        } for outcome in outcomes]
        curves = [{"name": f"trial {outcome.trial}",
                   "points": [[point["step"], point.get(spec.curve_metric)] for point in outcome.curve]} for outcome in outcomes]
        return {"trials": rows, "curves": curves, "select": spec.select, "curve_metric": spec.curve_metric, "rungs": spec.rungs,
                "sweep_error": report if isinstance(report, str) else "", **self._report_files(record.job_id, errors)}

    def _live_trial(self, spec: SweepSpec, trial: int, errors: list[str]) -> TrialOutcome:
        """TRIAL of a running sweep as its jobs stand now."""
        jobs = [job_id for rung in range(len(spec.rungs))
                if self.client.store.get(job_id := spec.trial_job_id(trial, rung)) is not None]
        if not jobs:
            return TrialOutcome(trial=trial, settings=spec.settings[trial], jobs=[], state=PENDING, steps=0, best=None,
                                best_step=None)
        state = state_name(self.client.state(jobs[-1]))
        card = self._stored(errors, lambda: self._model_card(jobs[-1], errors)) if state == SUCCESS else None
        history = [] if card else latest_per_step(self.client.store.history(jobs[-1]))
        curve = card.curve if card else [entry["quality"] for entry in history if entry.get("quality")]
        best = best_point([QualityPoint.from_dict(point) for point in curve], spec.curve_metric)
        figure = best.value(spec.curve_metric) if best else None
        if spec.select == UTILITY:
            figure = self._latest_study(spec, trial, len(jobs))
        return TrialOutcome(trial=trial, settings=spec.settings[trial], jobs=jobs, state=state,
                            steps=card.steps if card else int(history[-1]["step"]) if history else 0,
                            best=figure, best_step=best.step if best else None, curve=curve)

    def _latest_study(self, spec: SweepSpec, trial: int, rungs: int) -> float | None:
        """The GAN share of TRIAL's furthest study that has succeeded, of its first RUNGS rungs (select utility)."""
        for rung in reversed(range(rungs)):
            state, result = self.client.states.read(spec.score_job_id(trial, rung))
            if state == SUCCESS and isinstance(result, dict):
                return float(result["gan_share"])
        return None

    # ---- storage ----

    def _text(self, key: str) -> str:
        try:
            return self.storage.get_text(key)
        except ObjectNotFound:
            return ""

    def _model_card(self, job_id: str, errors: list[str]) -> ModelCard | None:
        """The model card of training job JOB_ID; None before it is written, or (noting why in ERRORS) unreadable."""
        text = self._text(model_card_key(job_id))
        try:
            return read_model_card(text, job_id) if text else None
        except ContractError as exc:
            errors.append(str(exc))
            return None

    def job_file(self, job_id: str, name: str) -> bytes:
        """An image under the job's output prefix; JobNotFound for anything else (the key is checked by storage too)."""
        record = self.record(job_id)
        if not SERVED_FILE.match(name):
            raise JobNotFound(f"{job_id}/{name}")
        key = join_key(kind_of(record.kind, record.spec).prefix(job_id), name)
        card = self._model_card(job_id, []) if record.kind == "train" and name in FINAL_IMAGES else None
        if card is not None:  # the final grid and curve are the finishing attempt's, which the card names
            key = card.grid if name == "grid.png" else card.loss_curve
        try:
            return self.storage.get_bytes(key)
        except (ObjectNotFound, ValueError):
            raise JobNotFound(f"{job_id}/{name}") from None


def latest_per_step(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resumed job repeats the steps after its checkpoint: keep the latest record of each step, in step order."""
    by_step = {int(record["step"]): record for record in history}
    return [by_step[step] for step in sorted(by_step)]


def thin(records: list[dict[str, Any]], points: int) -> list[dict[str, Any]]:
    """At most POINTS records, evenly spaced, always keeping the last."""
    if len(records) <= points:
        return records
    stride = len(records) / points
    picked = [records[int(index * stride)] for index in range(points - 1)]
    return picked + [records[-1]]


def unreadable(message: str) -> dict[str, Any]:
    """The verdict of a report this version cannot read: why, in one line, in place of the headline."""
    return {"headline": "The report cannot be read", "good": None, "lines": [], "warning": message}
