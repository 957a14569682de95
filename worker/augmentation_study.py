"""Does GAN data help a classifier trained on little real data? The augmentation study.

Every arm trains the same small CNN for the same steps and seeds on the same real subset, with the same classic
augmentation (per-sample random crop and flip), and is tested on the same held-out images. The arms differ only in
a second batch of inputs each step (the same number of them in every arm that has one), or in the real images' loss
weights:

  real                               no second batch
  real, class-balanced loss weights  each real image weighs 1 / its class's count (long-tailed subsets only)
  + mixup, teacher labels (no GAN)   mixtures of two real images, labelled by the teacher's probabilities
  + GAN, hard labels                 GAN samples, drawn class-balanced, with the label they were generated for
  + GAN, teacher labels              the same samples with the teacher's probabilities
  + GAN, label where teacher agrees  the label where the teacher's top class is that label, else the teacher's view
  + GAN drawn as the real classes    (long-tailed subsets) teacher-labelled samples whose classes come as often as in
                                     the real subset, not class-balanced: logit adjustment then corrects the prior
  ceiling arms                       real held-out images in the GAN's place (a perfect generator), with the
                                     teacher's and with their true labels: shown, counted on neither side

The subset is balanced (PER_CLASS images of every class) or long-tailed (an exponential profile, shared/specs.py
``long_tail_counts``); the held-out images are balanced either way. Every arm is scored plainly and with post-hoc
logit adjustment (Menon et al. ICLR 2021: logits minus the log of the label prior the classifier was trained on),
by balanced accuracy (the mean of per-class accuracies) and by the accuracy of the rarest third of classes. The
teacher is the GAN training job's own (classifiers trained on the same real images, worker/teacher.py). The verdict
names the GAN's own share: the best arm with GAN samples minus the best arm without them, each side with its better
scoring, and which part of the true-label ceiling's gain that is. The earlier sweep over how GAN samples are mixed
in (arms (a)-(d)) is worker/ratio_sweep.py; its settings run here too.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from shared.progress import shifted
from shared.specs import StudyArms, TargetRule
from worker.classifier import Classifier, ExtraBatch, logits_of_images, train_classifier
from worker.teacher import Teacher, sample_targets

# The classifier every setting trains: small, so that a sweep of ~20 settings x seeds fits minutes on a CPU.
SMALL_CNN: dict[str, Any] = {"width": 16, "batch_size": 64}


class PoolSource(NamedTuple):
    """A second-batch source that draws from a pool of images."""

    pool: Literal["gan", "held_out"]  # the GAN's samples, or real held-out images
    rule: TargetRule  # how each drawn image's target is made from its label and the teacher's view
    # "balanced": every class as often (the pools are class-balanced); "prior": each class as often as in the real
    # subset (measured on a long tail: a GAN's rare classes drawn class-balanced cost 2.2 points, docs/evaluation.md)
    draw: Literal["balanced", "prior"] = "balanced"


POOL_SOURCES: dict[str, PoolSource] = {
    "gan_hard": PoolSource("gan", "hard"), "gan_soft": PoolSource("gan", "teacher"),
    "gan_agree": PoolSource("gan", "agree"), "gan_soft_prior": PoolSource("gan", "teacher", "prior"),
    "held_out_teacher": PoolSource("held_out", "teacher"), "held_out_true": PoolSource("held_out", "hard"),
}


@dataclass(frozen=True)
class Arm:
    """A kind of setting: its role in the verdict, and its colour in the accuracy chart."""

    role: Literal["baseline", "without_gan", "with_gan", "ceiling", "sweep"]
    colour: str


# Every arm a setting can belong to: the study's, then the legacy sweep's (a)-(d). The baseline is the real images
# with the classic augmentation; ceilings are shown and not counted.
ARMS: dict[str, Arm] = {
    "real": Arm("baseline", "#4c72b0"), "balanced": Arm("without_gan", "#64b5cd"), "mixup": Arm("without_gan", "#8172b3"),
    "gan-hard": Arm("with_gan", "#dd8452"), "gan-soft": Arm("with_gan", "#c44e52"), "gan-agree": Arm("with_gan", "#55a868"),
    "gan-soft-prior": Arm("with_gan", "#937860"),
    "ceiling-teacher": Arm("ceiling", "#bbbbbb"), "ceiling-true": Arm("ceiling", "#999999"),
    "a": Arm("sweep", "#888888"), "b": Arm("baseline", "#4c72b0"), "c": Arm("sweep", "#dd8452"), "d": Arm("sweep", "#55a868"),
}


@dataclass(frozen=True)
class Setting:
    name: str
    arm: str  # one of ARMS
    ratio: float = 0.0  # sweep: synthetic images per real image, pooled with the real ones
    weight: float = 1.0  # sweep: loss weight of a synthetic sample (a real one weighs 1)
    min_confidence: float = 0.0  # sweep: keep synthetic samples the real-subset classifier gives their label at least this
    pretrain: bool = False  # sweep: train on synthetic only, then fine-tune on real
    classic: bool = False  # per-sample random crop and flip
    # study: sources of the second batch each step, sharing it equally: "mixup" (two real images mixed,
    # teacher-labelled) or one of POOL_SOURCES
    extra: tuple[str, ...] = ()
    class_balanced: bool = False  # each real image's loss weighs 1 / its class's count in the subset

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"setting {self.name!r} has arm {self.arm!r}, which ARMS does not list; add it there with "
                             "its role and colour")

    @property
    def uses_gan(self) -> bool:
        return self.ratio > 0 or any(source.startswith("gan") for source in self.extra)

    @property
    def ceiling(self) -> bool:
        """Real held-out images stand where GAN samples go: what a perfect generator would add."""
        return any(source.startswith("held_out") for source in self.extra)


def study_arms(imbalanced: bool, ceiling: bool, arms: StudyArms = "all") -> list[Setting]:
    """The study's arms: class-balanced weighting where the subset is IMBALANCED, the ceiling arms where there is
    a pool of held-out real images for them. ARMS "gan-vs-mixup": only the real baseline, mixup and the GAN with
    teacher labels (the study's best GAN arm on balanced subsets, docs/evaluation.md), what a sweep ranks by."""
    if arms == "gan-vs-mixup":
        return [Setting("real", "real", classic=True),
                Setting("real + mixup, teacher labels (no GAN)", "mixup", classic=True, extra=("mixup",)),
                Setting("real + GAN, teacher labels", "gan-soft", classic=True, extra=("gan_soft",))]
    chosen = [Setting("real", "real", classic=True)]
    if imbalanced:
        chosen.append(Setting("real, class-balanced loss weights", "balanced", classic=True, class_balanced=True))
    chosen += [
        Setting("real + mixup, teacher labels (no GAN)", "mixup", classic=True, extra=("mixup",)),
        Setting("real + GAN, hard labels", "gan-hard", classic=True, extra=("gan_hard",)),
        Setting("real + GAN, teacher labels", "gan-soft", classic=True, extra=("gan_soft",)),
        Setting("real + GAN, label where the teacher agrees, else teacher", "gan-agree", classic=True, extra=("gan_agree",)),
    ]
    if imbalanced:  # on a balanced subset the real classes' shares are the balanced draw
        chosen.append(Setting("real + GAN drawn as the real classes, teacher labels", "gan-soft-prior", classic=True,
                            extra=("gan_soft_prior",)))
    if ceiling:
        chosen += [
            Setting("ceiling: real held-out images, teacher labels", "ceiling-teacher", classic=True,
                    extra=("held_out_teacher",)),
            Setting("ceiling: real held-out images, true labels", "ceiling-true", classic=True, extra=("held_out_true",)),
        ]
    return chosen


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
    # real training-split images outside the subset and the scored images, balanced over classes: the ceiling arms'
    ceiling_images: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    ceiling_labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    ceiling_probs: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (P, K): the teacher's

    def pool(self, source: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, labels and teacher probabilities that SOURCE (one of POOL_SOURCES) draws from."""
        if POOL_SOURCES[source].pool == "gan":
            return self.synthetic_images, self.synthetic_labels, self.synthetic_probs
        return self.ceiling_images, self.ceiling_labels, self.ceiling_probs

    def real_prior(self) -> torch.Tensor:
        """The share of each class (K,) in the real subset."""
        return label_prior(self.real_labels, self.num_classes)

    def drawer(self, source: str) -> Callable[[int, torch.Generator], torch.Tensor]:
        """Draws COUNT indices into SOURCE's pool: uniformly, or with each class as often as in the real subset.
        The pool's grouping by class is made here, once, not at every training step."""
        _, labels, _ = self.pool(source)
        if POOL_SOURCES[source].draw == "balanced":
            return lambda count, rng: torch.randint(0, len(labels), (count,), generator=rng)
        prior = self.real_prior()
        by_class = torch.argsort(labels, stable=True)  # pool indices, grouped by class
        members = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(members, 0) - members

        def draw(count: int, rng: torch.Generator) -> torch.Tensor:
            classes = torch.multinomial(prior, count, replacement=True, generator=rng)  # (count,)
            offsets = (torch.rand(count, generator=rng) * members[classes]).long()  # a member of each drawn class
            return by_class[starts[classes] + offsets]

        return draw

    def rarest_third(self) -> list[int]:
        """The third of the classes (at least one) with the fewest real images; ties go to the lower index."""
        counts = torch.bincount(self.real_labels, minlength=self.num_classes).tolist()
        return sorted(sorted(range(self.num_classes), key=lambda label: counts[label])[: max(1, self.num_classes // 3)])


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
    drawers = {source: data.drawer(source) for source in sources if source != "mixup"}

    def draw(rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = [], []
        for source in sources:
            if source == "mixup":
                assert data.teacher is not None, "mixup arms need a teacher"
                mixed = mix_real_pairs(data.real_images, each, rng)
                images.append(mixed)
                targets.append(data.teacher.probs(mixed))
                continue
            pool_images, pool_labels, pool_probs = data.pool(source)
            chosen = drawers[source](each, rng)
            images.append(pool_images[chosen])
            targets.append(sample_targets(POOL_SOURCES[source].rule, pool_labels[chosen], pool_probs[chosen]))
        return torch.cat(images), torch.cat(targets)

    return draw


def label_prior(labels: torch.Tensor, num_classes: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The share of each class (K,) among LABELS, each counted with its weight."""
    counts = torch.bincount(labels, weights=weights, minlength=num_classes).double()
    return (counts / counts.sum()).float()


def class_balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 / the count of each sample's class (N,): every class weighs the same in the loss."""
    return 1.0 / torch.bincount(labels, minlength=num_classes).clamp_min(1).float()[labels]


def source_prior(data: ExperimentData, source: str) -> torch.Tensor:
    """The mean target (K,) of what SOURCE draws: its share of the label prior a classifier trained on it learns."""
    if source == "mixup":
        assert data.teacher is not None, "mixup arms need a teacher"
        return data.teacher.probs(mix_real_pairs(data.real_images, 1024, torch.Generator().manual_seed(0))).mean(0)
    _, labels, probs = data.pool(source)
    targets = sample_targets(POOL_SOURCES[source].rule, labels, probs)  # (P, K)
    if POOL_SOURCES[source].draw == "balanced":
        return targets.mean(0)
    # each class's mean target, weighed by how often the draw picks that class
    per_class = torch.zeros(data.num_classes, targets.shape[1]).index_add_(0, labels, targets)
    per_class /= torch.bincount(labels, minlength=data.num_classes).clamp_min(1)[:, None]
    return data.real_prior() @ per_class


def training_prior(data: ExperimentData, setting: Setting, batch: int) -> torch.Tensor:
    """The label prior (K,) SETTING's classifier is trained on, real batches of BATCH plus its second batches:
    what post-hoc logit adjustment takes out."""
    weights = class_balanced_weights(data.real_labels, data.num_classes) if setting.class_balanced else None
    real = label_prior(data.real_labels, data.num_classes, weights)
    if not setting.extra:
        return real
    extra = torch.stack([source_prior(data, source) for source in setting.extra]).mean(0)
    return (batch * real + data.extra_batch * extra) / (batch + data.extra_batch)


@dataclass(frozen=True)
class Scores:
    """One trained classifier on the held-out images: per class, by its argmax and after logit adjustment."""

    accuracy: float
    class_accuracy: list[float]  # by class index
    class_accuracy_adjusted: list[float]  # argmax of logits - log(training prior)

    def balanced(self, adjusted: bool) -> float:
        return statistics.fmean(self.class_accuracy_adjusted if adjusted else self.class_accuracy)

    def of_classes(self, classes: list[int], adjusted: bool) -> float:
        per_class = self.class_accuracy_adjusted if adjusted else self.class_accuracy
        return statistics.fmean(per_class[label] for label in classes)


def score(model: Classifier, images: torch.Tensor, labels: torch.Tensor, prior: torch.Tensor) -> Scores:
    logits = logits_of_images(model, images)  # (N, K)
    classes = logits.shape[1]

    def per_class(predicted: torch.Tensor) -> list[float]:
        right = (predicted == labels).float()
        return [float(right[labels == label].mean()) if bool((labels == label).any()) else 0.0 for label in range(classes)]

    plain = logits.argmax(1)
    adjusted = (logits - prior.clamp_min(1e-12).log()).argmax(1)
    return Scores(float((plain == labels).float().mean()), per_class(plain), per_class(adjusted))


def setting_steps(setting: Setting, steps: int) -> int:
    """Classifier steps SETTING trains for one seed: pre-training trains twice."""
    return 2 * steps if setting.pretrain else steps


def run_setting(data: ExperimentData, setting: Setting, seed: int, steps: int,
                after_step: Callable[[int], None] = lambda done: None) -> Scores:
    """Train SETTING's classifier with SEED; returns its scores on the held-out images. AFTER_STEP gets the steps
    done of :func:`setting_steps`."""
    synthetic, synthetic_labels = synthetic_subset(data, setting, seed)
    batch = min(SMALL_CNN["batch_size"], len(data.real_images))

    def train(images: torch.Tensor, labels: torch.Tensor, before: int = 0, **options: Any) -> Classifier:
        return train_classifier(images, labels, data.num_classes, steps=steps, seed=seed, augment=setting.classic,
                                after_step=shifted(after_step, before), **SMALL_CNN, **options)

    prior = training_prior(data, setting, batch)
    if setting.extra:
        model = train(data.real_images, data.real_labels, extra=extra_batches(data, setting.extra))
    elif setting.class_balanced:
        model = train(data.real_images, data.real_labels, weights=class_balanced_weights(data.real_labels, data.num_classes))
    elif setting.pretrain and len(synthetic):
        model = train(data.real_images, data.real_labels, before=steps, init=train(synthetic, synthetic_labels))
    elif len(synthetic):
        images = torch.cat([data.real_images, synthetic])
        labels = torch.cat([data.real_labels, synthetic_labels])
        weights = torch.cat([torch.ones(len(data.real_images)), torch.full((len(synthetic),), setting.weight)])
        model = train(images, labels, weights=weights)
        prior = label_prior(labels, data.num_classes, weights)
    else:
        model = train(data.real_images, data.real_labels)
    return score(model, data.test_images, data.test_labels, prior)


@dataclass(frozen=True)
class Outcome:
    setting: Setting
    scores: list[Scores]  # one per seed

    @property
    def accuracies(self) -> list[float]:
        return [scores.accuracy for scores in self.scores]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return _std(self.accuracies)

    def scored(self, adjusted: bool, rare: list[int]) -> Scored:
        """Balanced accuracy (and the RARE classes' accuracy) over seeds, plainly or with logit adjustment."""
        balanced = [scores.balanced(adjusted) for scores in self.scores]
        rare_accuracy = [scores.of_classes(rare, adjusted) for scores in self.scores]
        return Scored(self, adjusted, statistics.fmean(balanced), _std(balanced), statistics.fmean(rare_accuracy),
                      _std(rare_accuracy))

    def best_scored(self, rare: list[int]) -> Scored:
        """The better of the plain and the logit-adjusted scoring, by balanced accuracy."""
        return max((self.scored(False, rare), self.scored(True, rare)), key=lambda scored: scored.mean)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Scored:
    outcome: Outcome
    adjusted: bool  # with post-hoc logit adjustment
    mean: float  # balanced accuracy, mean over seeds
    std: float
    rare_mean: float  # the rarest third's accuracy
    rare_std: float

    @property
    def setting(self) -> Setting:
        return self.outcome.setting

    @property
    def label(self) -> str:
        return f"{self.setting.name}{', logit-adjusted' if self.adjusted else ''}"


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
        scores = []
        for seed in range(seeds):
            scores.append(run_setting(data, setting, seed, steps, shifted(after_step, done)))
            done += setting_steps(setting, steps)
        outcomes.append(Outcome(setting, scores))
    return outcomes


@dataclass(frozen=True)
class GanShare:
    """What the GAN's samples add: the best setting that uses them against the best that does not, by balanced
    accuracy, each with its better scoring (logit-adjusted or not); the ceiling arms count on neither side."""

    with_gan: Scored
    without_gan: Scored
    share: float  # with_gan.mean - without_gan.mean, in balanced accuracy (fractions of 1)
    rare_share: float  # the same for the rarest third's accuracy
    over_real: float  # with_gan.mean - the "real" arm's (or (b)'s) best: the gain over the fair classic baseline
    helps: bool  # share positive and larger than one standard deviation of either
    warning: str | None
    ceiling: Scored | None  # the true-label ceiling arm (a perfect generator), when the study has one
    captured: float | None  # share / the ceiling's gain over without_gan: the part of it the GAN captures

    @property
    def ceiling_gain(self) -> float | None:
        return None if self.ceiling is None else self.ceiling.mean - self.without_gan.mean


def gan_share(outcomes: list[Outcome], rare: list[int]) -> GanShare:
    counted = [o for o in outcomes if not o.setting.ceiling]
    with_gan = max((o.best_scored(rare) for o in counted if o.setting.uses_gan), key=lambda scored: scored.mean)
    without_gan = max((o.best_scored(rare) for o in counted if not o.setting.uses_gan), key=lambda scored: scored.mean)
    baseline = next(o for o in outcomes if ARMS[o.setting.arm].role == "baseline").best_scored(rare)
    ceiling = next((o.best_scored(rare) for o in outcomes if o.setting.arm == "ceiling-true"), None)
    share = with_gan.mean - without_gan.mean
    noise = max(with_gan.std, without_gan.std)
    helps = share > noise
    warning = None
    if share <= 0:
        warning = (f"The GAN's samples add nothing here: the best setting with them ({with_gan.label}) is "
                   f"{-100 * share:.2f} points below the best without them ({without_gan.label}). Train without "
                   "them, or train a better GAN.")
    elif not helps:
        warning = (f"The GAN's share (+{100 * share:.2f} points) is within the seed-to-seed noise "
                   f"(std {100 * with_gan.std:.2f} and {100 * without_gan.std:.2f}): not shown to help.")
    ceiling_gain = None if ceiling is None else ceiling.mean - without_gan.mean
    captured = share / ceiling_gain if ceiling_gain is not None and ceiling_gain > 0 else None
    return GanShare(with_gan, without_gan, share, with_gan.rare_mean - without_gan.rare_mean,
                    with_gan.mean - baseline.mean, helps, warning, ceiling, captured)
