"""The domain feature space and Frechet distance on cases with known answers."""

from __future__ import annotations

import pytest
import torch

from shared.settings import Settings
from worker.data import load_dataset
from worker.evaluate import FeatureExtractor, accuracy, train_classifier
from worker.metrics import frechet_distance


@pytest.fixture(scope="module")
def fake_data():
    train = load_dataset("fake", Settings(), "train")
    test = load_dataset("fake", Settings(), "test")
    classifier = train_classifier(train.images, train.labels, 10, steps=150, batch_size=64)
    return train, test, classifier


def test_reference_classifier_learns_the_fake_classes(fake_data):
    _, test, classifier = fake_data
    assert accuracy(classifier, test.images, test.labels) > 0.8


def test_frechet_distance_is_near_zero_for_identical_sets_and_grows_with_a_shift(fake_data):
    train, _, classifier = fake_data
    extractor = FeatureExtractor(classifier)
    real = train.images[:320]
    same = frechet_distance(extractor, real, real.clone())
    shifted = frechet_distance(extractor, real, (real.int() // 2 + 100).to(torch.uint8))  # washed-out copies
    other_classes = frechet_distance(extractor, real, train.images[320:][train.labels[320:] < 3])
    assert abs(same) < 1e-3
    assert shifted > 1.0 and other_classes > 1.0
