"""Quality metrics and the feature space on cases with known answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.classifier import FeatureExtractor, accuracy
from worker.metrics import InceptionFeatures, classifier_score, frechet_distance, kernel_distance, precision_recall


def test_reference_classifier_learns_the_fake_classes(fake_classifier):
    _, test, classifier = fake_classifier
    assert accuracy(classifier, test.images, test.labels) > 0.8


def test_frechet_distance_is_near_zero_for_identical_sets_and_grows_with_a_shift(fake_classifier):
    train, _, classifier = fake_classifier
    extractor = FeatureExtractor(classifier)
    real = train.images[:320]
    same = frechet_distance(extractor, real, real.clone())
    shifted = frechet_distance(extractor, real, (real.int() // 2 + 100).to(torch.uint8))  # washed-out copies
    other_classes = frechet_distance(extractor, real, train.images[320:][train.labels[320:] < 3])
    assert abs(same) < 1e-3
    assert shifted > 1.0 and other_classes > 1.0


def test_kid_is_near_zero_for_identical_sets_and_grows_with_a_shift(fake_classifier):
    train, _, classifier = fake_classifier
    images = train.images
    extractor = FeatureExtractor(classifier)
    same, _ = kernel_distance(extractor, images[:300], images[:300].clone())
    shifted, _ = kernel_distance(extractor, images[:300], (images[:300].int() // 2 + 100).to(torch.uint8))
    assert shifted > 0 and abs(same) < 0.1 * shifted  # unbiased: scatters around 0 for equal sets


def test_precision_and_recall_are_one_for_the_same_set_and_fall_for_a_collapsed_one(fake_classifier):
    train, _, classifier = fake_classifier
    images, labels = train.images, train.labels
    extractor = FeatureExtractor(classifier)
    assert precision_recall(extractor, images[:300], images[:300].clone()) == (1.0, 1.0)
    one_class = images[labels == 0][:30]  # a "generator" that only ever makes class 0, faithfully
    precision, recall = precision_recall(extractor, images[:300], one_class)
    assert precision > 0.9 and recall < 0.3
    far = (images[:300].int() // 4 + 190).to(torch.uint8)
    assert precision_recall(extractor, images[:300], far)[0] < 0.1


def test_classifier_score_is_one_for_one_class_and_near_k_for_all_classes(fake_classifier):
    train, _, classifier = fake_classifier
    images, labels = train.images, train.labels
    assert classifier_score(classifier, images[labels == 3][:50]) < 1.5
    assert classifier_score(classifier, images) > 6


def test_inception_needs_a_real_weights_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="Inception weights .* do not exist"):
        InceptionFeatures(str(tmp_path / "missing.pth"))
