"""Does GAN data help a classifier trained on little real data? The augmentation-utility experiment.

The same small CNN is trained, with the same number of steps, on
  (a) the real subset,  (b) the real subset with classic augmentation (flip, crop),
  (c) the real subset plus GAN samples,  (d) both,
and tested on the real test split. Naive mixing can hurt, so (c) and (d) are swept over how the synthetic data
is used: the synthetic:real ratio, a lower loss weight for synthetic samples, keeping only synthetic samples whose
label a classifier trained on the same real subset believes, and pre-training on synthetic data then fine-tuning
on real data. Every setting runs with several seeds; the summary names the best setting and says plainly when
no setting beats its baseline.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.classifier import Classifier, accuracy, label_confidence, train_classifier

# The classifier every setting trains: small, so that a sweep of ~20 settings x seeds fits minutes on a CPU.
SMALL_CNN: dict[str, Any] = {"width": 16, "batch_size": 64}


@dataclass(frozen=True)
class Setting:
    name: str
    arm: str  # a, b, c or d
    ratio: float = 0.0  # synthetic images per real image
    weight: float = 1.0  # loss weight of a synthetic sample (a real one weighs 1)
    min_confidence: float = 0.0  # keep synthetic samples the real-subset classifier gives their label at least this
    pretrain: bool = False  # train on synthetic only, then fine-tune on real
    classic: bool = False  # flip and crop augmentation

    @property
    def baseline(self) -> str:
        """The arm this setting is compared with: (c) with (a), (d) with (b)."""
        return {"c": "a", "d": "b"}.get(self.arm, self.arm)


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


@dataclass
class ExperimentData:
    real_images: torch.Tensor  # (N, C, H, W) uint8: the small real subset (the GAN's training data too)
    real_labels: torch.Tensor  # (N,)
    synthetic_images: torch.Tensor  # (M, C, H, W) uint8: a pool of GAN samples, balanced over classes
    synthetic_labels: torch.Tensor  # (M,)
    test_images: torch.Tensor  # the real test split
    test_labels: torch.Tensor
    num_classes: int
    synthetic_confidence: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (M,), see filter_by_confidence


def synthetic_subset(data: ExperimentData, setting: Setting, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RATIO x N synthetic samples for SETTING (after confidence filtering), drawn by SEED from the pool."""
    keep = torch.ones(len(data.synthetic_images), dtype=torch.bool)
    if setting.min_confidence > 0:
        keep = data.synthetic_confidence >= setting.min_confidence
    candidates = torch.nonzero(keep).flatten()
    order = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))]
    chosen = order[: round(setting.ratio * len(data.real_images))]
    return data.synthetic_images[chosen], data.synthetic_labels[chosen]


def run_setting(data: ExperimentData, setting: Setting, seed: int, steps: int) -> float:
    """Train SETTING's classifier with SEED; returns its accuracy on the real test split."""
    synthetic, synthetic_labels = synthetic_subset(data, setting, seed)
    def train(images: torch.Tensor, labels: torch.Tensor, **options: Any) -> Classifier:
        return train_classifier(images, labels, data.num_classes, steps=steps, seed=seed, augment=setting.classic,
                                **SMALL_CNN, **options)

    if setting.pretrain and len(synthetic):
        model = train(data.real_images, data.real_labels, init=train(synthetic, synthetic_labels))
    elif len(synthetic):
        images = torch.cat([data.real_images, synthetic])
        labels = torch.cat([data.real_labels, synthetic_labels])
        weights = torch.cat([torch.ones(len(data.real_images)), torch.full((len(synthetic),), setting.weight)])
        model = train(images, labels, weights=weights)
    else:
        model = train(data.real_images, data.real_labels)
    return accuracy(model, data.test_images, data.test_labels)


def filter_by_confidence(data: ExperimentData, steps: int, seed: int) -> None:
    """Score every synthetic sample with a classifier trained on the same real subset (nothing else leaks in)."""
    judge = train_classifier(data.real_images, data.real_labels, data.num_classes, steps=steps, seed=seed, **SMALL_CNN)
    data.synthetic_confidence = label_confidence(judge, data.synthetic_images, data.synthetic_labels)


@dataclass(frozen=True)
class Outcome:
    setting: Setting
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def run_sweep(
    data: ExperimentData, settings: list[Setting], seeds: int, steps: int,
    progress: Callable[[int, int, str], None] = lambda done, total, name: None,
) -> list[Outcome]:
    outcomes = []
    for number, setting in enumerate(settings):
        progress(number, len(settings), setting.name)
        outcomes.append(Outcome(setting, [run_setting(data, setting, seed, steps) for seed in range(seeds)]))
    progress(len(settings), len(settings), "done")
    return outcomes


@dataclass(frozen=True)
class Verdict:
    best: Outcome  # the best setting overall
    best_c: Outcome  # the best (c) setting, compared with (a)
    best_d: Outcome  # the best (d) setting, compared with (b)
    delta_c: float  # best (c) - (a), in accuracy points (fractions of 1)
    delta_d: float  # best (d) - (b)
    naive_delta_c: float  # (c) at ratio 1, weight 1, no filter - (a): plain mixing
    naive_delta_d: float
    helps: bool  # does any GAN setting beat its baseline by more than the seeds' noise?
    warning: str | None


def verdict(outcomes: list[Outcome]) -> Verdict:
    by_arm = {arm: [o for o in outcomes if o.setting.arm == arm] for arm in "abcd"}
    baseline = {arm: by_arm[arm][0] for arm in "ab"}
    best_c = max(by_arm["c"], key=lambda o: o.mean)
    best_d = max(by_arm["d"], key=lambda o: o.mean)

    def plain(arm: str) -> Outcome:
        return next(o for o in by_arm[arm] if o.setting.ratio == 1 and o.setting.weight == 1
                    and not o.setting.min_confidence and not o.setting.pretrain)

    def beats(candidate: Outcome, base: Outcome) -> bool:
        noise = max(candidate.std, base.std)  # one standard deviation of either: below that it is a coin toss
        return candidate.mean - base.mean > noise

    helps = beats(best_c, baseline["a"]) or beats(best_d, baseline["b"])
    warning = None if helps else (
        "No way of using the synthetic data beat its baseline by more than the seed-to-seed noise: "
        "on this data, this GAN's samples do not help this classifier. Train without them, or train a better GAN."
    )
    return Verdict(
        best=max(outcomes, key=lambda o: o.mean), best_c=best_c, best_d=best_d,
        delta_c=best_c.mean - baseline["a"].mean, delta_d=best_d.mean - baseline["b"].mean,
        naive_delta_c=plain("c").mean - baseline["a"].mean, naive_delta_d=plain("d").mean - baseline["b"].mean,
        helps=helps, warning=warning,
    )
