"""The evaluation jobs end to end on tiny data: the reference classifier, the quality and utility reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from producer.client import Client, SubmitError
from shared.lifecycle import JobStopped
from shared.liveness import Attempt
from shared.progress import StageProgress
from shared.settings import Settings
from shared.specs import EvaluateSpec, SpecError, TrainSpec
from shared.storage import FileStorage
from worker.classifier import ClassifierConfig
from worker.evaluate import run_quality, run_utility
from worker.reference import reference_classifier
from worker.report import publish_report
from worker.train import run_training


def test_evaluate_specs_say_what_is_missing_or_malformed():
    with pytest.raises(SpecError, match="model: a quality evaluation needs"):
        EvaluateSpec(job_id="e-x", mode="quality")
    with pytest.raises(SpecError, match="dataset: a utility evaluation needs a dataset .* or a model"):
        EvaluateSpec(job_id="e-x", mode="utility")
    for chosen in ({"dataset": "fake"}, {"per_class": 50}, {"gan_steps": 10}, {"sweep": True}):
        # each would choose a subset or a GAN that a study of a trained model does not train: refused, not ignored
        with pytest.raises(SpecError, match=f"{next(iter(chosen))}: a utility study of --model uses that model's own"):
            EvaluateSpec(job_id="e-x", mode="utility", model="t-x", **chosen)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="ratios: 'a,b' is not a comma list"):
        EvaluateSpec(job_id="e-x", mode="utility", dataset="fake", ratios="a,b")
    with pytest.raises(SpecError, match="min_confidences"):
        EvaluateSpec(job_id="e-x", mode="utility", dataset="fake", min_confidences="1.5")
    with pytest.raises(SpecError, match="mode"):
        EvaluateSpec(job_id="e-x", mode="vibes", dataset="fake")


class CountingStorage(FileStorage):
    def __init__(self, root: Path):
        super().__init__(root)
        self.puts: list[str] = []

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.puts.append(key)
        super().put_bytes(key, data, content_type)


def test_the_reference_classifier_is_trained_once_and_reused(tmp_path: Path):
    storage = CountingStorage(tmp_path)
    first, meta = reference_classifier(storage, Settings(), "fake", 28, 1, steps=40)
    second, again = reference_classifier(storage, Settings(), "fake", 28, 1, steps=40)
    assert storage.puts == ["references/fake-28px-1ch-40steps/classifier.pt"]
    assert meta == again and 0 <= meta["test_accuracy"] <= 1 and "penultimate layer" in meta["feature_space"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    assert isinstance(first.config, ClassifierConfig)


SMOKE = dict(classifier_steps=20, reference_steps=20, test_limit=100)


def test_utility_report_end_to_end(tmp_path: Path):
    storage = FileStorage(tmp_path)
    spec = EvaluateSpec(job_id="e-utility", mode="utility", dataset="fake", per_class=8, seeds=2, gan_steps=6, gan_width=8,
                        samples_per_class=10, sweep=True, ratios="0.5,1", synthetic_weights="0.5", min_confidences="0.5",
                        **SMOKE)  # type: ignore[arg-type]
    reports: list[StageProgress] = []
    result = run_utility(spec, Settings(), storage, reports.append)
    stages = list(dict.fromkeys(report.stage for report in reports))  # in order, once each
    assert stages == ["training the GAN on the real subset", "training the teacher (3 classifiers)", "confidence filter",
                      "training the reference classifier", "the study's classifiers (19 settings x 2 seeds)"]
    arms = [report for report in reports if report.stage == stages[-1]]
    # every setting x seed x classifier step, pre-training twice: one bar from 0 to its end, with a rate
    assert arms[-1].done == arms[-1].total == 2 * 20 * (19 + 2) and arms[-1].per_s > 0
    assert [report.done for report in arms] == sorted(report.done for report in arms)
    names = ("accuracy.png", "grid.png", "losses.png", "report.json", "report.md")
    published = [f"reports/e-utility/{name}" for name in names]
    written = [f"reports/e-utility/attempts/a000000/{name}" for name in names]  # the attempt's own, then fixed and copied
    assert sorted(storage.list("reports/e-utility")) == sorted(published + written)
    assert all(storage.get_bytes(a) == storage.get_bytes(b) for a, b in zip(published, written, strict=True))
    report = json.loads(storage.get_text("reports/e-utility/report.json"))
    assert len(report["outcomes"]) == 7 + 2 + 2 * 5 and all(len(o["accuracies"]) == 2 for o in report["outcomes"])
    assert report["ceiling"] is not None and report["imbalance"] == 1 and report["class_counts"] == [8] * 10
    assert report["real_images"] == 80 and report["gan_share"] == result.gan_share and report["holdout"] == "test"
    assert report["teacher"]["members"] == 3 and report["teacher"]["steps"] == SMOKE["classifier_steps"]
    markdown = storage.get_text("reports/e-utility/report.md")
    assert markdown.index("The GAN's own share") < markdown.index("| setting |")  # the verdict first
    assert "| real + mixup, teacher labels (no GAN) |" in markdown and "Sweep: (c) - (a)" in markdown
    assert "feature space: penultimate layer" in markdown and "per-class FID" in markdown
    card = json.loads(storage.get_text("models/e-utility-gan/model.json"))
    assert card["num_train_images"] == 80 and card["spec"]["per_class"] == 8  # the GAN saw the 80 subset images only


def test_utility_on_a_validation_split_never_reads_the_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import worker.evaluate as evaluate

    def no_test_split(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test split was read")

    monkeypatch.setattr(evaluate, "_test_split", no_test_split)
    spec = EvaluateSpec(job_id="e-valid", mode="utility", dataset="fake", per_class=8, seeds=1, gan_steps=2, gan_width=8,
                        samples_per_class=4, holdout="validation", validation_size=60, **SMOKE)  # type: ignore[arg-type]
    run_utility(spec, Settings(), FileStorage(tmp_path))
    report = json.loads(FileStorage(tmp_path).get_text("reports/e-valid/report.json"))
    assert report["held_out_images"] == 60 and report["holdout"] == "validation"
    assert "validation (training-split) images" in FileStorage(tmp_path).get_text("reports/e-valid/report.md")


def test_utility_of_a_trained_model_trains_on_its_images_and_scores_on_its_validation_split(tmp_path: Path):
    storage = FileStorage(tmp_path)
    trained = TrainSpec(job_id="t-studied", dataset="fake", per_class=12, steps=4, width=8, batch_size=32, teacher=3,
                        teacher_steps=10, validation=0.25, reference_steps=20)
    run_training(trained, Settings(), storage)
    spec = EvaluateSpec(job_id="e-model", mode="utility", model="t-studied", holdout="validation", arms="gan-vs-mixup",
                        seeds=2, samples_per_class=4, classifier_steps=20, reference_steps=20)
    reports: list[StageProgress] = []
    result = run_utility(spec, Settings(), storage, reports.append)
    assert "training the GAN on the real subset" not in {report.stage for report in reports}  # the model is the GAN
    report = json.loads(storage.get_text("reports/e-model/report.json"))
    # 12 per class, a quarter held out: 9 of each class trained the GAN, its teacher and now the classifiers
    assert report["real_images"] == 90 and report["class_counts"] == [9] * 10 and report["held_out_images"] == 30
    assert report["gan"] == "t-studied" and report["teacher"]["members"] == 3
    assert [outcome["setting"]["arm"] for outcome in report["outcomes"]] == ["real", "mixup", "gan-soft"]
    assert report["ceiling"] is None and report["gan_share"] == result.gan_share
    markdown = storage.get_text("reports/e-model/report.md")
    assert "the 90 real images model t-studied trained on" in markdown and "the model's own split" in markdown

    untaught = TrainSpec(job_id="t-untaught", dataset="fake", per_class=12, steps=2, width=8, batch_size=32, teacher=0,
                         validation=0)
    run_training(untaught, Settings(), storage)
    with pytest.raises(ValueError, match="model t-untaught has no validation split to score on .*; give --holdout test"):
        run_utility(EvaluateSpec(job_id="e-none", mode="utility", model="t-untaught", holdout="validation"), Settings(),
                    storage)
    client = Client.connect(Settings.from_env({"AUGMENT_BROKER_URL": "memory://", "AUGMENT_STORAGE_URL": tmp_path.as_uri()}))
    with pytest.raises(SubmitError, match="cannot study model t-untaught: model t-untaught has no validation split"):
        client.submit_evaluate(mode="utility", model="t-untaught", holdout="validation")  # refused before it is queued
    with pytest.raises(ValueError, match="model t-untaught has no teacher, .*train it with --teacher 3"):
        run_utility(EvaluateSpec(job_id="e-none", mode="utility", model="t-untaught", test_limit=20), Settings(), storage)


def test_quality_report_end_to_end(tmp_path: Path):
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-scored", dataset="fake", steps=5, width=8, batch_size=32), Settings(), storage)
    spec = EvaluateSpec(job_id="e-quality", mode="quality", model="t-scored", samples_per_class=10, **SMOKE)  # type: ignore[arg-type]
    reports: list[StageProgress] = []
    result = run_quality(spec, Settings(), storage, reports.append)
    scoring = [report for report in reports if report.stage.startswith("classification accuracy score")]
    assert scoring[-1].done == scoring[-1].total == 2 * SMOKE["classifier_steps"]
    report = json.loads(storage.get_text("reports/e-quality/report.json"))
    assert report["quality"]["fid"] == result.fid > 0 and 0 <= report["cas"] <= 1
    assert set(report["quality"]["per_class_fid"]) == {f"class{label}" for label in range(10)}
    markdown = storage.get_text("reports/e-quality/report.md")
    assert "Feature space: penultimate layer" in markdown and "| CAS: trained on synthetic only" in markdown


def test_an_evaluation_whose_lease_was_taken_over_publishes_nothing(tmp_path: Path):
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-scored", dataset="fake", steps=2, width=8, batch_size=32), Settings(), storage)
    spec = EvaluateSpec(job_id="e-late", mode="quality", model="t-scored", samples_per_class=4, **SMOKE)  # type: ignore[arg-type]
    fixed: list[str] = []

    def commit_once(payload: str) -> str:  # the store's commit: the first payload stands
        fixed.append(payload)
        return fixed[0]

    with pytest.raises(JobStopped, match="lease was taken over"):
        run_quality(spec, Settings(), storage, attempt=Attempt(1, commit=lambda payload: None))
    assert not storage.exists("reports/e-late/report.md") and storage.list("reports/e-late/attempts/a000001")
    first = run_quality(spec, Settings(), storage, attempt=Attempt(2, commit=commit_once))
    markdown = storage.get_bytes("reports/e-late/report.md")
    assert markdown == storage.get_bytes("reports/e-late/attempts/a000002/report.md")
    # a worker that dies after the commit leaves it to the next delivery, which publishes the same bytes and result
    storage.put_bytes("reports/e-late/report.md", b"torn")
    assert publish_report(storage, "e-late", fixed[0]) == first.to_dict()
    assert storage.get_bytes("reports/e-late/report.md") == markdown
