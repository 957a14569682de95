"""A dataset's reference classifier: trained once on the dataset's real training split, stored under ``references/``
and reused. Its penultimate layer is the feature space of every quality figure (evaluations and a training job's
validation curve), its predictions the label accuracy of generated samples."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.layout import reference_key
from shared.progress import StageMeter, StageProgress
from shared.settings import Settings
from shared.specs import DEFAULT_BACKGROUND
from shared.storage import Storage
from worker.classifier import (
    FEATURE_SPACE,
    REFERENCE_KIND,
    Classifier,
    ClassifierFileError,
    accuracy,
    classifiers_from_bytes,
    classifiers_to_bytes,
    train_classifier,
)
from worker.data import load_dataset

log = logging.getLogger("augment.reference")


def reference_classifier(
    storage: Storage, settings: Settings, dataset: str, image_size: int, channels: int, steps: int, seed: int = 0,
    progress: Callable[[StageProgress], None] = lambda info: None, background: str = DEFAULT_BACKGROUND,
) -> tuple[Classifier, dict[str, Any]]:
    """The dataset's reference classifier: loaded from storage, or trained on the real training split (transparent
    pixels on BACKGROUND) and stored."""
    key = reference_key(dataset, image_size, channels, steps, background)
    if storage.exists(key):
        try:
            (model,), meta = classifiers_from_bytes(REFERENCE_KIND, storage.get_bytes(key))
            return model, meta
        except ClassifierFileError as exc:  # a reference stored by an older version: a cache, so train it again
            log.info("reference classifier for %s is stale (%s); training it again", dataset, exc)
    train = load_dataset(dataset, settings, "train", image_size=image_size, channels=channels, background=background)
    test = load_dataset(dataset, settings, "test", image_size=image_size, channels=channels, background=background)
    started = time.perf_counter()
    model = train_classifier(train.images, train.labels, len(train.info.class_names), steps=steps, seed=seed,
                             after_step=StageMeter("training the reference classifier", steps, progress))
    meta = {
        "dataset": dataset, "image_size": image_size, "channels": channels, "train_images": len(train),
        "steps": steps, "test_accuracy": accuracy(model, test.images, test.labels),
        "train_seconds": round(time.perf_counter() - started, 1), "feature_space": FEATURE_SPACE,
    }
    storage.put_bytes(key, classifiers_to_bytes(REFERENCE_KIND, [model], meta))
    log.info("reference classifier for %s: test accuracy %.4f", dataset, meta["test_accuracy"])
    return model, meta


def describe(meta: dict[str, Any]) -> str:
    """The feature space of reference META in words, as reports and model cards name it."""
    return f"{meta['feature_space']}; {meta['dataset']}, test accuracy {meta['test_accuracy']:.4f}"
