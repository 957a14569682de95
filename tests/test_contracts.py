"""One typed contract per kind of job: what the worker writes, the producer and the dashboard read through the same
types (shared/contracts.py). Every fixture here is written by the worker's own code (a tiny training, generation,
quality and utility job on fake data), never built by hand; older and newer formats are made from those."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from producer.client import Client
from producer.dashboard.data import DashboardData
from shared.contracts import KINDS, ContractError, QualityReport, SweepReport, UtilityReport, kind_of, read_report
from shared.lifecycle import SUCCESS
from shared.liveness import Attempt
from shared.models import read_card, read_model_card
from shared.progress import SweepProgress
from shared.records import MemoryJobStore, make_record
from shared.settings import Settings
from shared.specs import EvaluateSpec, GenerateSpec, TrainSpec
from shared.storage import FileStorage
from shared.sweeps import SweepSpec
from worker.evaluate import run_quality, run_utility
from worker.generate import GeneratorCache, finalize_job, plan_job, run_shard
from worker.sweep import advance
from worker.train import pick_device, run_training

SMOKE = dict(classifier_steps=10, reference_steps=10, test_limit=50)


@dataclass(frozen=True)
class Written:
    """A storage root holding one finished job of every kind, and each job's result as its task returned it (JSON)."""

    root: Path
    specs: dict[str, TrainSpec | GenerateSpec | EvaluateSpec | SweepSpec]
    results: dict[str, dict[str, Any]]
    study: EvaluateSpec  # a utility study of the trained model, as a sweep ranks a trial by


def as_sent(result: Any) -> dict[str, Any]:
    """RESULT as the result backend hands it back: the task's dict through JSON."""
    assert result is not None
    return json.loads(json.dumps(result.to_dict()))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    root = tmp_path_factory.mktemp("contracts")
    storage, settings = FileStorage(root), Settings()
    train = TrainSpec(job_id="t-contract", dataset="fake", steps=2, width=8, batch_size=16)
    generate = GenerateSpec(job_id="g-contract", model=train.job_id, count=12, shard_size=5, batch_size=4)
    quality = EvaluateSpec(job_id="e-quality", mode="quality", model=train.job_id, samples_per_class=4, **SMOKE)  # type: ignore[arg-type]
    utility = EvaluateSpec(job_id="e-utility", mode="utility", dataset="fake", per_class=6, seeds=1, gan_steps=2,
                           gan_width=8, samples_per_class=4, **SMOKE)  # type: ignore[arg-type]
    results = {"train": as_sent(run_training(train, settings, storage))}
    store, dispatched = MemoryJobStore(), []
    plan_job(generate, store, dispatched.append)
    for index in dispatched:
        run_shard(generate, index, storage, store, GeneratorCache(), pick_device(), "worker-a/1")
    results["generate"] = as_sent(finalize_job(generate, storage, store, lambda index: pytest.fail(f"shard {index} redispatched")))
    results["evaluate-quality"] = as_sent(run_quality(quality, settings, storage))
    results["evaluate-utility"] = as_sent(run_utility(utility, settings, storage))
    study = EvaluateSpec(job_id="e-study", mode="utility", model=train.job_id, holdout="validation", arms="gan-vs-mixup",
                         seeds=1, samples_per_class=4, classifier_steps=20)
    results["study"] = as_sent(run_utility(study, settings, storage))
    sweep = SweepSpec(job_id="s-contract", base={"dataset": "fake", "width": 8, "batch_size": 16, "teacher": 0,
                                                  "reference_steps": 10, "validate_every": 1},
                      space={"lr": [1e-4, 2e-4]}, steps=2, min_steps=1, eta=2)
    states = Client.connect(Settings.from_env({"AUGMENT_BROKER_URL": "memory://", "AUGMENT_STORAGE_URL": root.as_uri()})).states

    def train_trial(trial: TrainSpec) -> None:  # at once, in-process, as a worker would
        states.succeeded(trial.job_id, run_training(trial, settings, storage))

    while isinstance(outcome := advance(sweep, states, storage, train_trial, Attempt(), 0.0), SweepProgress):
        pass
    results["sweep"] = as_sent(outcome)
    specs = {"train": train, "generate": generate, "evaluate-quality": quality, "evaluate-utility": utility, "sweep": sweep}
    return Written(root, specs, results, study)  # type: ignore[arg-type]


@pytest.fixture
def dashboard(written: Written) -> DashboardData:
    """The producer's client and the dashboard on the in-process broker, with every written job recorded and finished."""
    settings = Settings.from_env({"AUGMENT_BROKER_URL": "memory://", "AUGMENT_STORAGE_URL": written.root.as_uri()})
    client = Client.connect(settings)
    for name, spec in written.specs.items():
        client.store.add(make_record(spec.job_id, KINDS[name].record_kind, spec.to_dict()))
        client.states.succeeded(spec.job_id, KINDS[name].decode_result(written.results[name], spec.job_id))
    client.store.add(make_record(written.study.job_id, "evaluate", written.study.to_dict()))
    client.states.succeeded(written.study.job_id, KINDS["evaluate-utility"].decode_result(written.results["study"], "e-study"))
    return DashboardData(client, settings)


@pytest.mark.parametrize("name", list(KINDS))
def test_the_producer_decodes_each_kinds_result_as_the_worker_wrote_it(written: Written, dashboard: DashboardData,
                                                                       name: str) -> None:
    spec = written.specs[name]
    status = dashboard.client.status(spec.job_id)
    assert status is not None and status["state"] == SUCCESS
    decoded = dashboard.client.finished(spec.job_id, status["result"])
    assert type(decoded) is KINDS[name].result and decoded.to_dict() == written.results[name]
    assert kind_of(KINDS[name].record_kind, spec.to_dict()) is KINDS[name]


def test_the_dashboard_shows_each_kinds_result_and_report_from_the_same_records(dashboard: DashboardData,
                                                                                 written: Written) -> None:
    rows = {spec.job_id: dashboard.job(spec.job_id) for spec in written.specs.values()}
    train, generate = rows["t-contract"], rows["g-contract"]
    assert train["detail"].startswith("2 steps; best at step 2: FID ")
    assert train["model_card"]["class_counts"] and not train["storage_error"]
    assert generate["detail"] == "12 images in 3 shards" and generate["manifest"]["total"] == 12
    quality, utility = rows["e-quality"], rows["e-utility"]
    assert quality["detail"].startswith("FID ") and quality["verdict"]["headline"] == "Quality of model t-contract"
    assert utility["detail"].startswith("the GAN's own share ") and utility["verdict"]["headline"].startswith("The synthetic data")
    assert any(line.startswith("the true-label ceiling adds") for line in utility["verdict"]["lines"])
    assert utility["warnings"] == written.results["evaluate-utility"]["warnings"]
    study = dashboard.job("e-study")  # a study of a trained model measures no sample quality: its report still reads
    assert study["verdict"]["headline"].startswith("The synthetic data") and "t-contract trained on" in study["report_html"]
    sweep = rows["s-contract"]
    assert sweep["detail"].startswith("winner s-contract-t00") and sweep["detail"].endswith("3 GAN steps against a full grid's 4")
    assert [row["steps"] for row in sweep["trials"]] == [2, 1] and sweep["trials"][0]["winner"]
    assert [len(curve["points"]) for curve in sweep["curves"]] == [2, 1] and "Winner: trial" in sweep["report_html"]


def test_the_worker_and_the_producer_read_the_same_model_card(written: Written) -> None:
    storage = FileStorage(written.root)
    card = read_card(storage, "t-contract")
    text = storage.get_text("models/t-contract/model.json")
    assert card == read_model_card(text, "t-contract") and card.format == 1 and card.image_size == 28
    # the job's images: those it trained on and its validation split
    assert sum(card.class_counts.values()) == card.num_train_images + card.validation["images"]
    assert card.spec == written.specs["train"].to_dict()


def test_each_report_reads_as_its_kinds_type(written: Written) -> None:
    storage = FileStorage(written.root)
    quality = read_report(KINDS["evaluate-quality"], storage.get_text("reports/e-quality/report.json"), "e-quality")
    utility = read_report(KINDS["evaluate-utility"], storage.get_text("reports/e-utility/report.json"), "e-utility")
    assert isinstance(quality, QualityReport) and quality.quality.fid == written.results["evaluate-quality"]["fid"]
    assert isinstance(utility, UtilityReport) and utility.gan_share == written.results["evaluate-utility"]["gan_share"]
    assert utility.outcomes and all(len(outcome.accuracies) == 1 for outcome in utility.outcomes)
    # the study's warning reaches the result's warnings, which the dashboard shows for every kind alike
    assert written.results["evaluate-utility"]["warnings"] == ([utility.warning] if utility.warning else [])
    older = read_report(KINDS["evaluate-utility"], rewritten(storage.get_text("reports/e-utility/report.json"), format=1),
                        "e-utility")  # format 1, before a study could skip the sample quality, reads as it did
    assert isinstance(older, UtilityReport) and older.quality is not None
    study = read_report(KINDS["evaluate-utility"], storage.get_text("reports/e-study/report.json"), "e-study")
    assert isinstance(study, UtilityReport) and study.quality is None and study.gan == "t-contract"
    assert study.gan_share == written.results["study"]["gan_share"] and len(study.outcomes) == 3
    sweep = read_report(KINDS["sweep"], storage.get_text("reports/s-contract/report.json"), "s-contract")
    assert isinstance(sweep, SweepReport) and sweep.winner_model == written.results["sweep"]["winner"]
    assert [trial.steps for trial in sweep.trials] == [2, 1] and sweep.compute_steps == written.results["sweep"]["compute_steps"]


def rewritten(text: str, **changes: Any) -> str:
    """A stored record of the real writer with fields changed (None: removed), as an older or newer writer wrote it."""
    data = json.loads(text)
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return json.dumps(data)


def test_a_record_from_before_versioning_still_reads(written: Written) -> None:
    storage = FileStorage(written.root)
    card = rewritten(storage.get_text("models/t-contract/model.json"), format=None, class_counts=None, recipe=None)
    old = read_model_card(card, "t-contract")
    assert old.format == 0 and old.class_counts == {} and old.steps == 2
    report = rewritten(storage.get_text("reports/e-utility/report.json"), format=None, imbalance=None, ceiling=None)
    assert read_report(KINDS["evaluate-utility"], report, "e-utility").format == 0


def test_an_unreadable_format_is_one_line_naming_it(written: Written) -> None:
    storage = FileStorage(written.root)
    newer = rewritten(storage.get_text("reports/e-quality/report.json"), format=2)
    with pytest.raises(ContractError, match=r"^report.json of evaluate-quality job e-quality is format 2, newer than this "
                                            r"reader \(format 1\): upgrade gan-augment$"):
        read_report(KINDS["evaluate-quality"], newer, "e-quality")
    # the utility report of the first study (before the augmentation study's arms): no verdict fields
    first_study = json.dumps({"delta_c": 0.01, "delta_d": 0.02, "helps": True})
    with pytest.raises(ContractError) as raised:
        read_report(KINDS["evaluate-utility"], first_study, "e-old")
    message = str(raised.value)
    assert "(unversioned) cannot be read as format 2" in message and "run the job again" in message
    assert "\n" not in message
    with pytest.raises(ContractError, match="result of train job t-x"):
        KINDS["train"].decode_result({"images": 3}, "t-x")
    # a model card is not an evaluation's report, even where its kind is asked to read one
    with pytest.raises(ContractError, match="^train job t-contract writes no report.json: only evaluations and sweeps do$"):
        read_report(KINDS["train"], storage.get_text("models/t-contract/model.json"), "t-contract")


def test_the_dashboard_shows_an_unreadable_report_in_one_line(written: Written, dashboard: DashboardData) -> None:
    storage = FileStorage(written.root)
    storage.put_text("reports/e-newer/report.json", rewritten(storage.get_text("reports/e-quality/report.json"), format=9))
    dashboard.client.store.add(make_record("e-newer", "evaluate", written.specs["evaluate-quality"].to_dict()))
    shown = dashboard.job("e-newer")["verdict"]
    assert shown["headline"] == "The report cannot be read" and "format 9, newer than this reader" in shown["warning"]


def test_every_kind_declares_its_task_queue_and_prefix() -> None:
    assert {kind.task for kind in KINDS.values()} == {"augment.train", "augment.generate", "augment.evaluate", "augment.sweep"}
    assert {name: kind.prefix("j-1") for name, kind in KINDS.items()} == {
        "train": "models/j-1", "generate": "synthetic/j-1", "evaluate-quality": "reports/j-1",
        "evaluate-utility": "reports/j-1", "sweep": "reports/j-1"}
    assert KINDS["generate"].report_key("j-1") == "synthetic/j-1/manifest.json"
    with pytest.raises(ContractError, match="unknown kind of job 'publish'"):
        kind_of("publish", {})
