"""Does GAN data help a classifier trained on little real data? The augmentation study.

Every arm trains the same small CNN for the same steps and seeds on the same real subset, with the same classic
augmentation (per-sample random crop and flip), and is tested on the same held-out images. The arms differ only in
a second batch of inputs each step (the same number of them in every arm that has one):

  real                               no second batch
  + GAN, hard labels                 GAN samples with the label they were generated for (cross-entropy)
  + mixup, teacher labels (no GAN)   mixtures of two real images, labelled by the teacher's probabilities
  + GAN, teacher labels              GAN samples labelled by the teacher's probabilities
  + mixup + GAN, teacher labels      half of each

The teacher is the GAN training job's own (classifiers trained on the same real images, worker/teacher.py). The
verdict names the GAN's own share: the best arm with GAN samples minus the best arm without them. The earlier sweep
over how GAN samples are mixed in (ratio, loss weight, confidence filter, pre-training; arms (a)-(d)) stays
available as an option.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from shared.progress import shifted
from worker.classifier import Classifier, ExtraBatch, accuracy, label_confidence, train_classifier
from worker.teacher import Teacher

# The classifier every setting trains: small, so that a sweep of ~20 settings x seeds fits minutes on a CPU.
SMALL_CNN: dict[str, Any] = {"width": 16, "batch_size": 64}


@dataclass(frozen=True)
class Setting:
    name: str
    arm: str  # the study's arms: real, gan-hard, mixup, gan-soft, both; the optional sweep's: a, b, c, d
    ratio: float = 0.0  # sweep: synthetic images per real image, pooled with the real ones
    weight: float = 1.0  # sweep: loss weight of a synthetic sample (a real one weighs 1)
    min_confidence: float = 0.0  # sweep: keep synthetic samples the real-subset classifier gives their label at least this
    pretrain: bool = False  # sweep: train on synthetic only, then fine-tune on real
    classic: bool = False  # per-sample random crop and flip
    # study: sources of the second batch each step, sharing it equally: "gan_hard" (GAN samples with their
    # conditioning labels), "gan_soft" (with the teacher's probabilities), "mixup" (two real images mixed, teacher-labelled)
    extra: tuple[str, ...] = ()

    @property
    def baseline(self) -> str:
        """The arm this setting is compared with: (c) with (a), (d) with (b); a study arm with the real one."""
        return {"c": "a", "d": "b"}.get(self.arm, self.arm if self.arm in "ab" else "real")

    @property
    def uses_gan(self) -> bool:
        return self.ratio > 0 or any(source.startswith("gan") for source in self.extra)


STUDY_ARMS = [
    Setting("real", "real", classic=True),
    Setting("real + GAN, hard labels", "gan-hard", classic=True, extra=("gan_hard",)),
    Setting("real + mixup, teacher labels (no GAN)", "mixup", classic=True, extra=("mixup",)),
    Setting("real + GAN, teacher labels", "gan-soft", classic=True, extra=("gan_soft",)),
    Setting("real + mixup + GAN, teacher labels", "both", classic=True, extra=("mixup", "gan_soft")),
]


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
    test_images: torch.Tensor  # held-out real images: the test split, or a validation split of the training split
    test_labels: torch.Tensor
    num_classes: int
    synthetic_confidence: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (M,), see filter_by_confidence
    teacher: Teacher | None = None  # labels mixup images on the fly
    synthetic_probs: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (M, K): the teacher's, per GAN sample
    extra_batch: int = 64  # second-batch inputs per step, in every arm that has a second batch


def synthetic_subset(data: ExperimentData, setting: Setting, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RATIO x N synthetic samples for SETTING (after confidence filtering), drawn by SEED from the pool."""
    keep = torch.ones(len(data.synthetic_images), dtype=torch.bool)
    if setting.min_confidence > 0:
        keep = data.synthetic_confidence >= setting.min_confidence
    candidates = torch.nonzero(keep).flatten()
    order = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))]
    chosen = order[: round(setting.ratio * len(data.real_images))]
    return data.synthetic_images[chosen], data.synthetic_labels[chosen]


def mix_real_pairs(images: torch.Tensor, count: int, rng: torch.Generator) -> torch.Tensor:
    """COUNT mixtures l * x_i + (1 - l) * x_j of random real image pairs, l ~ U(0, 1) (mixup), as uint8 images."""
    first, second = torch.randint(0, len(images), (2, count), generator=rng)
    share = torch.rand(count, 1, 1, 1, generator=rng)
    return (share * images[first].float() + (1 - share) * images[second].float()).round().to(torch.uint8)


def extra_batches(data: ExperimentData, sources: tuple[str, ...]) -> ExtraBatch:
    """A step's second batch for SOURCES: DATA.extra_batch inputs with their target probabilities, split equally."""
    each = data.extra_batch // len(sources)

    def draw(rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = [], []
        for source in sources:
            if source == "mixup":
                assert data.teacher is not None, "mixup arms need a teacher"
                mixed = mix_real_pairs(data.real_images, each, rng)
                images.append(mixed)
                targets.append(data.teacher.probs(mixed))
                continue
            chosen = torch.randint(0, len(data.synthetic_images), (each,), generator=rng)
            images.append(data.synthetic_images[chosen])
            targets.append(data.synthetic_probs[chosen] if source == "gan_soft"
                           else F.one_hot(data.synthetic_labels[chosen], data.num_classes).float())
        return torch.cat(images), torch.cat(targets)

    return draw


def setting_steps(setting: Setting, steps: int) -> int:
    """Classifier steps SETTING trains for one seed: pre-training trains twice."""
    return 2 * steps if setting.pretrain else steps


def run_setting(data: ExperimentData, setting: Setting, seed: int, steps: int,
                after_step: Callable[[int], None] = lambda done: None) -> float:
    """Train SETTING's classifier with SEED; returns its accuracy on the held-out images. AFTER_STEP gets the steps
    done of :func:`setting_steps`."""
    synthetic, synthetic_labels = synthetic_subset(data, setting, seed)
    def train(images: torch.Tensor, labels: torch.Tensor, before: int = 0, **options: Any) -> Classifier:
        return train_classifier(images, labels, data.num_classes, steps=steps, seed=seed, augment=setting.classic,
                                after_step=shifted(after_step, before), **SMALL_CNN, **options)

    if setting.extra:
        model = train(data.real_images, data.real_labels, extra=extra_batches(data, setting.extra))
    elif setting.pretrain and len(synthetic):
        model = train(data.real_images, data.real_labels, before=steps, init=train(synthetic, synthetic_labels))
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


def sweep_steps(settings: list[Setting], seeds: int, steps: int) -> int:
    """Classifier steps of a whole sweep: what its progress counts."""
    return seeds * sum(setting_steps(setting, steps) for setting in settings)


def run_sweep(
    data: ExperimentData, settings: list[Setting], seeds: int, steps: int,
    after_step: Callable[[int], None] = lambda done: None,
) -> list[Outcome]:
    """Every setting with every seed; AFTER_STEP gets the classifier steps done of :func:`sweep_steps`."""
    outcomes, done = [], 0
    for setting in settings:
        accuracies = []
        for seed in range(seeds):
            accuracies.append(run_setting(data, setting, seed, steps, shifted(after_step, done)))
            done += setting_steps(setting, steps)
        outcomes.append(Outcome(setting, accuracies))
    return outcomes


@dataclass(frozen=True)
class Verdict:
    best: Outcome  # the best setting overall
    best_c: Outcome  # the best (c) setting, compared with (a)
    best_d: Outcome  # the best (d) setting, compared with (b)
    delta_c: float  # best (c) - (a), in accuracy points (fractions of 1)
    delta_d: float  # best (d) - (b)
    helps: bool  # does any GAN setting beat its baseline by more than the seeds' noise?
    warning: str | None


def verdict(outcomes: list[Outcome]) -> Verdict:
    by_arm = {arm: [o for o in outcomes if o.setting.arm == arm] for arm in "abcd"}
    baseline = {arm: by_arm[arm][0] for arm in "ab"}
    best_c = max(by_arm["c"], key=lambda o: o.mean)
    best_d = max(by_arm["d"], key=lambda o: o.mean)

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
        helps=helps, warning=warning,
    )


@dataclass(frozen=True)
class GanShare:
    """What the GAN's samples add: the best setting that uses them against the best that does not."""

    with_gan: Outcome
    without_gan: Outcome
    share: float  # with_gan.mean - without_gan.mean, in accuracy (fractions of 1)
    over_real: float  # with_gan.mean - the "real" arm's (or (b)'s) mean: the gain over the fair classic baseline
    helps: bool  # share positive and larger than one standard deviation of either
    warning: str | None


def gan_share(outcomes: list[Outcome]) -> GanShare:
    with_gan = max((o for o in outcomes if o.setting.uses_gan), key=lambda o: o.mean)
    without_gan = max((o for o in outcomes if not o.setting.uses_gan), key=lambda o: o.mean)
    baseline = next(o for o in outcomes if o.setting.arm in ("real", "b"))
    share = with_gan.mean - without_gan.mean
    noise = max(with_gan.std, without_gan.std)
    helps = share > noise
    warning = None
    if share <= 0:
        warning = (f"The GAN's samples add nothing here: the best setting with them ({with_gan.setting.name}) is "
                   f"{-100 * share:.2f} points below the best without them ({without_gan.setting.name}). Train without "
                   "them, or train a better GAN.")
    elif not helps:
        warning = (f"The GAN's share (+{100 * share:.2f} points) is within the seed-to-seed noise "
                   f"(std {100 * with_gan.std:.2f} and {100 * without_gan.std:.2f}): not shown to help.")
    return GanShare(with_gan, without_gan, share, with_gan.mean - baseline.mean, helps, warning)
