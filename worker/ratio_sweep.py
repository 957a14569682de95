"""The earlier sweep over how GAN samples are mixed into a classifier's data, kept as ``augment evaluate utility
--sweep``: arms (a) real, (b) real with crop and flip, (c) real + GAN samples and (d) both, (c) and (d) over the
ratio of synthetic to real images, their loss weight, a confidence filter and pre-training on the GAN's samples. The
augmentation study (worker/augmentation_study.py) replaced it as the verdict; it runs the same settings machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.augmentation_study import SMALL_CNN, ExperimentData, Outcome, Setting
from worker.classifier import label_confidence, train_classifier

SWEEP_ARMS = ("a", "b", "c", "d")


def sweep(ratios: list[float], weights: list[float], confidences: list[float]) -> list[Setting]:
    settings = [Setting("(a) real", "a"), Setting("(b) real + flip/crop", "b", classic=True)]
    for arm, classic, label in (("c", False, "(c) real + GAN"), ("d", True, "(d) real + flip/crop + GAN")):
        settings += [Setting(f"{label}, ratio {ratio:g}", arm, ratio=ratio, classic=classic) for ratio in ratios]
        settings += [Setting(f"{label}, ratio 1, weight {weight:g}", arm, ratio=1.0, weight=weight, classic=classic)
                     for weight in weights if weight != 1.0]
        settings += [Setting(f"{label}, ratio 1, confidence >= {level:g}", arm, ratio=1.0, min_confidence=level,
                             classic=classic) for level in confidences]
        settings.append(Setting(f"{label}, pre-train on GAN then fine-tune", arm, ratio=1.0, pretrain=True, classic=classic))
    return settings


def filter_by_confidence(data: ExperimentData, steps: int, seed: int) -> None:
    """Score every synthetic sample with a classifier trained on the same real subset (nothing else leaks in)."""
    judge = train_classifier(data.real_images, data.real_labels, data.num_classes, steps=steps, seed=seed, **SMALL_CNN)
    data.synthetic_confidence = label_confidence(judge, data.synthetic_images, data.synthetic_labels)


@dataclass(frozen=True)
class Verdict:
    """The sweep's figures; the study's verdict is ``augmentation_study.gan_share``'s."""

    best: Outcome  # the best setting overall
    delta_c: float  # best (c) - (a), in accuracy points (fractions of 1)
    delta_d: float  # best (d) - (b)


def verdict(outcomes: list[Outcome]) -> Verdict:
    by_arm = {arm: [o for o in outcomes if o.setting.arm == arm] for arm in SWEEP_ARMS}
    best_c = max(by_arm["c"], key=lambda o: o.mean)
    best_d = max(by_arm["d"], key=lambda o: o.mean)
    return Verdict(best=max(outcomes, key=lambda o: o.mean), delta_c=best_c.mean - by_arm["a"][0].mean,
                   delta_d=best_d.mean - by_arm["b"][0].mean)
