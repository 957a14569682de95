"""Quality metrics on cases with known answers, the utility sweep's logic, and both evaluations end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.settings import Settings
from shared.specs import EvaluateSpec, SpecError, TrainSpec
from shared.storage import FileStorage
from worker.data import load_dataset
from worker.evaluate import Classifier, ClassifierConfig, FeatureExtractor, train_classifier
from worker.evaluation import reference_classifier, run_quality, run_utility
from worker.metrics import InceptionFeatures, classifier_score, kernel_distance, precision_recall
from worker.train import run_training
from worker.utility import Outcome, Setting, sweep, verdict


@pytest.fixture(scope="module")
def fake_split() -> tuple[torch.Tensor, torch.Tensor, Classifier]:
    train = load_dataset("fake", Settings(), "train")
    classifier = train_classifier(train.images, train.labels, 10, steps=150, batch_size=64)
    return train.images, train.labels, classifier


def test_kid_is_near_zero_for_identical_sets_and_grows_with_a_shift(fake_split):
    images, _, classifier = fake_split
    extractor = FeatureExtractor(classifier)
    same, _ = kernel_distance(extractor, images[:300], images[:300].clone())
    shifted, _ = kernel_distance(extractor, images[:300], (images[:300].int() // 2 + 100).to(torch.uint8))
    assert shifted > 0 and abs(same) < 0.1 * shifted  # unbiased: scatters around 0 for equal sets


def test_precision_and_recall_are_one_for_the_same_set_and_fall_for_a_collapsed_one(fake_split):
    images, labels, classifier = fake_split
    extractor = FeatureExtractor(classifier)
    assert precision_recall(extractor, images[:300], images[:300].clone()) == (1.0, 1.0)
    one_class = images[labels == 0][:30]  # a "generator" that only ever makes class 0, faithfully
    precision, recall = precision_recall(extractor, images[:300], one_class)
    assert precision > 0.9 and recall < 0.3
    far = (images[:300].int() // 4 + 190).to(torch.uint8)
    assert precision_recall(extractor, images[:300], far)[0] < 0.1


def test_classifier_score_is_one_for_one_class_and_near_k_for_all_classes(fake_split):
    images, labels, classifier = fake_split
    assert classifier_score(classifier, images[labels == 3][:50]) < 1.5
    assert classifier_score(classifier, images) > 6


def test_inception_needs_a_real_weights_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="Inception weights .* do not exist"):
        InceptionFeatures(str(tmp_path / "missing.pth"))


def test_the_sweep_covers_every_way_of_using_synthetic_data():
    settings = sweep([0.5, 2.0], [0.25], [0.9])
    names = [setting.name for setting in settings]
    assert names[:2] == ["(a) real", "(b) real + flip/crop"]
    for arm in ("c", "d"):
        ours = [s for s in settings if s.arm == arm]
        assert [s.ratio for s in ours if s.weight == 1 and not s.min_confidence and not s.pretrain] == [0.5, 2.0]
        assert any(s.weight == 0.25 for s in ours) and any(s.min_confidence == 0.9 for s in ours)
        assert any(s.pretrain for s in ours) and all(s.classic == (arm == "d") for s in ours)
    assert len(set(names)) == len(names)


def outcomes(a: list[float], b: list[float], c: list[float], d: list[float]) -> list[Outcome]:
    return [
        Outcome(Setting("(a) real", "a"), a), Outcome(Setting("(b) real + flip/crop", "b", classic=True), b),
        Outcome(Setting("(c) ratio 1", "c", ratio=1.0), c), Outcome(Setting("(d) ratio 1", "d", ratio=1.0, classic=True), d),
    ]


def test_the_verdict_names_the_gain_and_warns_when_nothing_helps():
    helped = verdict(outcomes([0.80, 0.81], [0.82, 0.83], [0.85, 0.86], [0.84, 0.85]))
    assert helped.helps and helped.warning is None and helped.best.setting.arm == "c"
    assert helped.delta_c == pytest.approx(0.05) and helped.delta_d == pytest.approx(0.02)
    hurt = verdict(outcomes([0.80, 0.81], [0.82, 0.83], [0.78, 0.79], [0.82, 0.83]))
    assert not hurt.helps and "do not help" in (hurt.warning or "")
    noisy = verdict(outcomes([0.70, 0.90], [0.82, 0.83], [0.75, 0.95], [0.82, 0.83]))
    assert not noisy.helps, "a gain inside the seed-to-seed noise is not a gain"


def test_evaluate_specs_say_what_is_missing_or_malformed():
    with pytest.raises(SpecError, match="model: a quality evaluation needs"):
        EvaluateSpec(job_id="e-x", mode="quality")
    with pytest.raises(SpecError, match="dataset: a utility evaluation needs"):
        EvaluateSpec(job_id="e-x", mode="utility")
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
    assert storage.puts == ["references/fake-28px-1ch/classifier.pt"]
    assert meta == again and 0 <= meta["test_accuracy"] <= 1 and "penultimate layer" in meta["feature_space"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))
    assert isinstance(first.config, ClassifierConfig)


SMOKE = dict(classifier_steps=20, reference_steps=20, test_limit=100)


def test_utility_report_end_to_end(tmp_path: Path):
    storage = FileStorage(tmp_path)
    spec = EvaluateSpec(job_id="e-utility", mode="utility", dataset="fake", per_class=8, seeds=2, gan_steps=6, gan_width=8,
                        ratios="0.5,1", synthetic_weights="0.5", min_confidences="0.5", **SMOKE)  # type: ignore[arg-type]
    stages: list[str] = []
    result = run_utility(spec, Settings(), storage, lambda info: stages.append(info["stage"]))
    assert stages[0] == "training the GAN on the real subset" and stages[-1] == "setting: done"
    assert sorted(storage.list("reports/e-utility")) == [
        f"reports/e-utility/{name}" for name in ("accuracy.png", "grid.png", "losses.png", "report.json", "report.md")
    ]
    report = json.loads(storage.get_text("reports/e-utility/report.json"))
    assert len(report["outcomes"]) == 2 + 2 * 5 and all(len(o["accuracies"]) == 2 for o in report["outcomes"])
    assert report["real_images"] == 80 and report["delta_c"] == result["delta_c"]
    markdown = storage.get_text("reports/e-utility/report.md")
    assert "| (a) real |" in markdown and "(c) - (a), best setting" in markdown and "Feature space" not in markdown
    assert "feature space: penultimate layer" in markdown
    assert storage.exists("models/e-utility-gan/model.json")  # the GAN saw the 80 subset images only
    card = json.loads(storage.get_text("models/e-utility-gan/model.json"))
    assert card["num_train_images"] == 80 and card["spec"]["per_class"] == 8


def test_quality_report_end_to_end(tmp_path: Path):
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-scored", dataset="fake", steps=5, width=8, batch_size=32), Settings(), storage)
    spec = EvaluateSpec(job_id="e-quality", mode="quality", model="t-scored", samples_per_class=10, **SMOKE)  # type: ignore[arg-type]
    result = run_quality(spec, Settings(), storage)
    report = json.loads(storage.get_text("reports/e-quality/report.json"))
    assert report["quality"]["fid"] == result["fid"] > 0 and 0 <= report["cas"] <= 1
    assert set(report["quality"]["per_class_fid"]) == {f"class{label}" for label in range(10)}
    markdown = storage.get_text("reports/e-quality/report.md")
    assert "Feature space: penultimate layer" in markdown and "| CAS: trained on synthetic only" in markdown
