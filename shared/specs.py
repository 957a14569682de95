"""Job specs: the versioned contract between the producer and the workers.

Each spec is a frozen :mod:`msgspec` Struct whose fields are declared once, each with its type, default and
allowed range or choices; msgspec checks them and refuses unknown fields. ``__post_init__`` adds the rules that
span fields (epochs or steps, not both). A spec validates itself however it is made, so an invalid spec cannot
exist, and both sides validate: the producer before enqueueing and the worker on receipt (a message can come
from anywhere). Errors are :class:`SpecError`, one line that names the field, the value and what is allowed.

msgspec rather than pydantic v2, because the producer must start quickly and stay light: it adds an eighth of
what pydantic adds to ``import producer.cli`` (docs/benchmarks.md, "Import time of the specs"). What every spec
shares (the base Struct, its error messages, the words a field declares) is :mod:`shared.spec_base`.
"""

import dataclasses
import math
import random
import re
from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal, get_args

import msgspec
import msgspec.inspect
from msgspec import Meta

from shared.spec_base import (
    SPEC_VERSION,
    SpecError,
    _explained,
    _float_list,
    _Spec,
    _whole,
    number_list,
    option,
)

# The choices, each listed once: the specs, the CLI's options and the model code read them from here.
ImageSize = Literal[28, 32, 64]
Loss = Literal["bce", "hinge"]
Conditioning = Literal["concat", "projection"]  # how D sees the label: one-hot planes or a projection head
# the generator/discriminator pair: the seed's DCGAN, or residual blocks with class-conditional BatchNorm in G and a
# spectral-norm projection D (worker/resnet.py)
Architecture = Literal["dcgan", "resnet"]
Precision = Literal["auto", "fp32", "bf16"]
EvaluationMode = Literal["quality", "utility"]
# utility: where the classifiers are scored. "validation" holds out images of the training split that the small
# subset leaves out, for choosing recipes and settings; "test" is for final figures only.
Holdout = Literal["test", "validation"]
# a synthetic sample's training target (shards and the study): "hard" the one-hot conditioning label; "teacher" the
# teacher's probabilities; "agree" the one-hot label where the teacher's top class is that label, the teacher's
# probabilities where it is not (the conditioning label is trusted only where a second opinion backs it)
TargetRule = Literal["hard", "teacher", "agree"]
# what a training job's quality curve measures on its validation split, and which it keeps the best checkpoint by
QualityMetric = Literal["fid", "kid", "precision", "recall", "label_accuracy"]
LOWER_IS_BETTER = frozenset({"fid", "kid"})
DEFAULT_SELECT: QualityMetric = "fid"
# what a sweep ranks its trials by: a point of their validation curves, or "utility", the GAN share of a small
# augmentation study of each trial's best checkpoint on its validation split (higher is better)
SweepMetric = Literal["fid", "kid", "precision", "recall", "label_accuracy", "utility"]
UTILITY: SweepMetric = "utility"
# which of a training job's checkpoints samples are drawn from: the best on its validation curve, or the last
CheckpointChoice = Literal["best", "last"]
# utility: which of the study's arms train: all of them, or the three that score a GAN against mixup (real, real +
# mixup, real + GAN with teacher labels): what a sweep ranks trials by (``augment sweep --select utility``)
StudyArms = Literal["all", "gan-vs-mixup"]
IMAGE_SIZES: tuple[int, ...] = get_args(ImageSize)
LOSSES: tuple[str, ...] = get_args(Loss)
CONDITIONINGS: tuple[str, ...] = get_args(Conditioning)
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
PRECISIONS: tuple[str, ...] = get_args(Precision)
QUALITY_METRICS: tuple[str, ...] = get_args(QualityMetric)
BUILTIN_DATASETS = ("fashion-mnist", "cifar10", "fake")
AUGMENTATIONS = ("translation", "cutout", "color")
# DiffAugment helped at 1,000 training images (FID 218 -> 168) and hurt at 60,000 (58 -> 116): "auto" turns it on
# below this size, a point between the two measurements (the DiffAugment paper's gains are all under ~20k images).
SMALL_DATASET = 10_000
AUTO_AUGMENTATIONS = ("translation", "cutout")
# The small-data recipe: what `augment train` runs below SMALL_DATASET images unless told otherwise, chosen on a
# validation split at 1,000 Fashion-MNIST images: 6,000 steps, the mode-seeking term and a teacher that guides G
# (docs/training.md has the measurements).
SMALL_DATA_STEPS = 6000
SMALL_DATA_MODE_SEEKING = 1.0
SMALL_DATA_GUIDANCE = 1.0
# The teacher measured in docs/evaluation.md: 3 classifiers of width 32, trained TEACHER_STEPS steps each, but
# never longer than the GAN (a 40-step smoke job stays one).
AUTO_TEACHER_MEMBERS = 3
# The teacher sees images at most this large, its members trained and G's samples guided at that size: at 64 px a
# full-size teacher took twice the GAN's training time (docs/training.md, "The teacher at 64 px").
TEACHER_SIZE = 32
# measurements on the validation split in a run whose spec does not say how often, but never closer than
# VALIDATE_EVERY_FLOOR steps: a measurement costs about as much as 3 steps of the default networks (docs/training.md)
VALIDATION_POINTS = 20
VALIDATE_EVERY_FLOOR = 50
# the reference classifier's training steps, unless a spec says otherwise
REFERENCE_STEPS = 1500
TEACHER_STEPS = 1000
# A long-tailed subset: class counts fall exponentially from per_class to per_class / imbalance (Cao et al. 2019's
# CIFAR-10-LT profile); 1 is balanced.
Imbalance = Annotated[float, Meta(ge=1.0, le=1000.0)]
JOB_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{2,63}")
_JOB_ID_RULE = "3-64 characters of a-z, 0-9 and '-' (as printed by augment)"


JobId = Annotated[str, Meta(pattern=_whole(JOB_ID_PATTERN.pattern)), _explained("a job id", _JOB_ID_RULE)]
Dataset = Annotated[
    str,
    Meta(pattern="(?s)" + _whole("|".join(map(re.escape, BUILTIN_DATASETS)) + "|imagefolder:.+")),
    _explained("a dataset", f"one of {', '.join(BUILTIN_DATASETS)} or imagefolder:<path or s3://...>"),
]
Seed = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Steps = Annotated[int, Meta(ge=1, le=10_000_000)]
Width = Annotated[int, Meta(ge=4, le=512)]
DiffAugment = Annotated[
    str,
    Meta(pattern=_whole(rf"auto|none|(?:{'|'.join(AUGMENTATIONS)})(?:,(?:{'|'.join(AUGMENTATIONS)}))*")),
    _explained(None, f"auto, none or a comma list of {', '.join(AUGMENTATIONS)}"),
]
# class index -> number of images. Keys are canonical ASCII decimals only, so "1" and "01" cannot both name
# class 1 (and JSON object keys are strings).
# what transparent pixels of an image folder are composited on: a named colour or #rrggbb
Background = Annotated[
    str,
    Meta(pattern=_whole("white|black|grey|#[0-9a-fA-F]{6}")),
    _explained("a background", "white, black, grey or a colour as #rrggbb"),
]
DEFAULT_BACKGROUND = "white"
ClassCounts = Annotated[
    dict[Annotated[str, Meta(pattern=_whole("0|[1-9][0-9]{0,3}"))], Annotated[int, Meta(ge=0)]],
    Meta(min_length=1),
    _explained(None, 'a non-empty object of class index ("0", "1", ...) -> non-negative integer count'),
]


def check_job_id(job_id: object, field_name: str = "job_id", kind: str = "job") -> str:
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise SpecError(kind, field_name, f"{job_id!r} is not a job id; use {_JOB_ID_RULE}")
    return job_id


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a training job runs once its spec's automatic choices are made for its data (:meth:`TrainSpec.recipe`)."""

    steps: int
    augmentations: tuple[str, ...]  # DiffAugment policies
    mode_seeking: float
    teacher: int  # classifiers in the teacher; 0: none
    teacher_steps: int
    guidance: float
    class_balanced: bool = False  # D's real batches, and so G's labels, drawn class-balanced
    validate_every: int = 0  # steps between measurements on the validation split; 0: no validation split
    reference_steps: int = REFERENCE_STEPS  # of the reference classifier whose feature space the curve measures in


class TrainSpec(_Spec, frozen=True):
    """What to train. ``epochs`` and ``steps`` are exclusive; with neither, one epoch is trained, but at least
    SMALL_DATA_STEPS on a small dataset (one epoch of 1,000 images is 16 steps: nowhere near a trained GAN).
    Fields left at None are chosen for the data by :meth:`recipe`: the small-data recipe below SMALL_DATASET images."""

    kind: ClassVar[str] = "train"

    job_id: JobId
    dataset: Annotated[Dataset, option("fashion-mnist, cifar10, fake, or imagefolder:<path or s3://bucket/prefix>")]
    epochs: Annotated[int, Meta(ge=1, le=10_000), option(
        "Passes over the dataset (exclusive with --steps).",
        f"1, and at least {SMALL_DATA_STEPS:,} steps below {SMALL_DATASET:,} images")] | None = None
    steps: Annotated[Steps, option(
        "Optimizer steps (exclusive with --epochs).",
        f"one epoch, at least {SMALL_DATA_STEPS:,} steps below {SMALL_DATASET:,} images")] | None = None
    # a promoted sweep trial, or a user who wants more steps of a finished job: the run goes on where JOB ended, as if
    # it had been submitted with these steps from the start (worker.train.resume_or_start)
    continues: Annotated[JobId, option(
        "Continue finished training job JOB to --steps: its weights, optimizers, teacher and validation curve carry on; "
        "every other setting must be JOB's.")] | None = None
    # a sweep's trials share the teacher of its first trial (trained on the same images with the same teacher
    # settings): the teacher of JOB is used where it is the one this spec's recipe would train, else one is trained
    teacher_from: JobId | None = None
    image_size: Annotated[ImageSize, option("28, 32 or 64.", "the dataset's own")] | None = None
    # 1 or 3 converts grey <-> RGB at load time
    channels: Annotated[Literal[1, 3], _explained(None, "1 or 3"), option("1 or 3.", "the dataset's own")] | None = None
    # white as an image viewer or a web page shows a transparent icon, cut-out or product photo (docs/training.md)
    background: Annotated[Background, option(
        "What transparent pixels of an image folder are composited on: white, black, grey or #rrggbb.")] = DEFAULT_BACKGROUND
    batch_size: Annotated[int, Meta(ge=1, le=4096), option("Images per optimizer step.")] = 64
    conditional: Annotated[bool, option("Condition on class labels.", "when the dataset has them",
                                        "--conditional/--unconditional")] | None = None
    seed: Annotated[Seed, option("Seed of the run, and of the images a --per-class subset draws.")] = 0
    nz: Annotated[int, Meta(ge=1, le=1024)] = 100
    width: Annotated[Width, option("Base channel width of G and D (ngf = ndf, as in the seed's DCGAN).")] = 64
    lr: Annotated[float, Meta(ge=1e-6, le=1.0)] = 2e-4
    beta1: Annotated[float, Meta(ge=0.0, le=0.999)] = 0.5
    beta2: Annotated[float, Meta(ge=0.0, le=0.9999)] = 0.999
    # Stabilisers; defaults chosen by measurement (docs/training.md: on 100 images per class, DiffAugment
    # on the seed's recipe gave the best FID; hinge, spectral norm, projection and EMA made it worse).
    arch: Annotated[Architecture, option(
        "The generator/discriminator pair: the seed's DCGAN, or resnet (residual blocks, class-conditional BatchNorm in "
        "G, a projection D with spectral norm, whatever --conditioning and --spectral-norm say).")] = "dcgan"
    loss: Annotated[Loss, option("GAN loss: the seed's BCE or the hinge loss.")] = "bce"
    spectral_norm: Annotated[bool, option("Spectral norm on D's layers (instead of D's BatchNorm).")] = False
    conditioning: Annotated[Conditioning, option(
        "How D sees labels: one-hot label planes concatenated to the image, or a projection discriminator.")] = "concat"
    # "auto" as measured (docs/training.md)
    diffaugment: Annotated[DiffAugment, option(
        f"Differentiable augmentation of real and fake images for D: auto (translation,cutout below {SMALL_DATASET:,} "
        "training images, none above), none, or a comma list of translation, cutout, color (color for RGB).")] = "auto"
    grad_clip: Annotated[float, Meta(ge=0.0, le=1e6), option("Max gradient norm for G and D; 0 disables.")] = 0.0
    ema: Annotated[float, Meta(ge=0.0, le=0.99999), option(
        "Decay of a moving average of G's weights used for every sample, e.g. 0.999; 0 disables.")] = 0.0
    mode_seeking: Annotated[float, Meta(ge=0.0, le=100.0), option(
        "Weight of the mode-seeking term (Mao et al. 2019) that rewards G for turning different noise into different "
        "images of a class; 0 disables.",
        f"`{SMALL_DATA_MODE_SEEKING:g}` below {SMALL_DATASET:,} training images, else `0`")] | None = None
    limit: Annotated[int, Meta(ge=1, le=100_000_000), option("Train on the first LIMIT images only.", "every image")] | None = None
    per_class: Annotated[Steps, option("Train on PER_CLASS images of each class (small-data runs).",
                                                  "every image")] | None = None
    imbalance: Annotated[Imbalance, option(
        "With --per-class: a long-tailed subset, PER_CLASS images of the commonest class down to PER_CLASS / IMBALANCE "
        "of the rarest (exponential profile; class order drawn by --seed).", "`1`, balanced")] | None = None
    log_every: Annotated[int, Meta(ge=1, le=1_000_000), option("Steps between progress reports.")] = 50
    checkpoint_every: Annotated[Steps, option("Steps between checkpoints.")] = 500
    sample_every: Annotated[Steps, option(
        "Steps between sample grids (models/<job>/samples/step-NNNNNNN.png).", "one epoch")] | None = None
    precision: Annotated[Precision, option(
        "auto: bf16 autocast where the hardware has bf16 (CUDA, CPUs with AVX512-BF16 or AMX), else fp32.")] = "auto"
    compile: Annotated[bool, option("torch.compile the networks (faster after a warm-up, on GPUs mostly).")] = False
    teacher: Annotated[int, Meta(ge=0, le=16), option(
        "Classifiers trained on the same real images whose averaged probabilities label every generated sample "
        "(soft labels in the shards); 0: no teacher.",
        f"`{AUTO_TEACHER_MEMBERS}` for labelled data below {SMALL_DATASET:,} images, else `0`")] | None = None
    teacher_width: Width = 32
    teacher_size: Annotated[int, Meta(ge=8, le=512), option(
        "Image size (px) the teacher's classifiers see: real images, and G's samples when it guides, are scaled down "
        "to it (antialiased), never up; smaller is cheaper.",
        f"the images' size, at most {TEACHER_SIZE}")] | None = None
    teacher_steps: Annotated[Steps, option("Training steps of each teacher classifier.",
                                           f"{TEACHER_STEPS:,}, or the GAN's steps when fewer")] | None = None
    guidance: Annotated[float, Meta(ge=0.0, le=100.0), option(
        "Weight of the teacher's cross-entropy on G's samples while training (the teacher is trained first): samples "
        "look more like the class they were asked for; needs a teacher; 0 disables.",
        f"`{SMALL_DATA_GUIDANCE:g}` below {SMALL_DATASET:,} images when there is a teacher, else `0`")] | None = None
    class_balanced: Annotated[bool, option(
        "Draw D's real batches, and so the labels G is asked for, class-balanced, a rare class's images repeating "
        "(for long-tailed data).")] = False
    # The validation curve (worker/validation.py): a stratified share of the training images that neither the GAN nor
    # its teacher trains on, measured against every VALIDATE_EVERY steps.
    validation: Annotated[float, Meta(ge=0.0, le=0.5), option(
        "Share of each class's images held out as a validation split (a class keeps at least one image for training), "
        "against which the job measures its samples as it trains and keeps its best checkpoint; 0: no split, no "
        "curve, the last checkpoint is the model.")] = 0.1
    validate_every: Annotated[Steps, option(
        "Steps between measurements on the validation split.",
        f"a {VALIDATION_POINTS}th of the run, at least {VALIDATE_EVERY_FLOOR}; and the last step")] | None = None
    select: Annotated[QualityMetric, option(
        "The validation metric that picks the best checkpoint: fid, kid (lower is better), precision, recall or "
        "label_accuracy (higher is better).")] = DEFAULT_SELECT
    patience: Annotated[int, Meta(ge=1, le=100_000), option(
        "Stop once the selected metric has not improved for PATIENCE measurements in a row.",
        "never stop early")] | None = None
    reference_steps: Annotated[Steps, option(
        "Steps of the dataset's reference classifier, whose features the validation curve measures in (trained once "
        "per dataset and step count, and stored; evaluations use the same one).",
        f"{REFERENCE_STEPS:,}, or the GAN's steps when fewer")] | None = None
    version: int = SPEC_VERSION

    def _check_fields_together(self) -> None:
        if self.patience is not None and self.validation == 0:
            raise self._fail("patience", "stopping early needs a validation curve; give validation above 0 or leave "
                             "patience out")
        if self.epochs is not None and self.steps is not None:
            raise self._fail("steps", "give either epochs or steps, not both")
        if self.continues is not None and self.steps is None:
            raise self._fail("continues", "continuing a job needs the steps to train it to; give steps (--steps)")
        if self.guidance and self.teacher == 0:
            raise self._fail("guidance", "guidance needs a teacher to guide with; give teacher=3 (--teacher 3) or guidance=0")
        if self.limit is not None and self.per_class is not None:
            raise self._fail("per_class", "give either limit or per_class, not both")
        if self.imbalance is not None and self.per_class is None:
            raise self._fail("imbalance", "a long-tailed subset needs per_class, the count of its commonest class")

    def teacher_image_size(self, image_size: int) -> int:
        """The size the teacher of a job on IMAGE_SIZE px images works at."""
        return min(self.teacher_size or TEACHER_SIZE, image_size)

    def recipe(self, num_images: int, num_classes: int, steps_per_epoch: int) -> Recipe:
        """What this spec trains on NUM_IMAGES images of NUM_CLASSES classes (0 or 1: unlabelled)."""
        small = num_images < SMALL_DATASET
        if self.steps is not None:
            steps = self.steps
        elif self.epochs is not None:
            steps = self.epochs * steps_per_epoch
        else:
            steps = max(steps_per_epoch, SMALL_DATA_STEPS) if small else steps_per_epoch
        augmentations: tuple[str, ...]
        if self.diffaugment == "auto":
            augmentations = AUTO_AUGMENTATIONS if small else ()
        else:
            augmentations = () if self.diffaugment == "none" else tuple(self.diffaugment.split(","))
        wants_teacher = small or (self.guidance or 0) > 0
        teacher = self.teacher if self.teacher is not None else AUTO_TEACHER_MEMBERS * wants_teacher
        teacher = teacher if num_classes > 1 else 0  # nothing to tell apart
        guidance = self.guidance if self.guidance is not None else SMALL_DATA_GUIDANCE * small
        return Recipe(
            steps=steps,
            augmentations=augmentations,
            mode_seeking=self.mode_seeking if self.mode_seeking is not None else SMALL_DATA_MODE_SEEKING * small,
            teacher=teacher,
            teacher_steps=self.teacher_steps if self.teacher_steps is not None else min(TEACHER_STEPS, steps),
            guidance=guidance if teacher > 0 else 0.0,
            class_balanced=self.class_balanced,
            validate_every=(self.validate_every or max(VALIDATE_EVERY_FLOOR, steps // VALIDATION_POINTS))
            if self.validation > 0 else 0,
            reference_steps=self.reference_steps or min(REFERENCE_STEPS, steps),
        )


def long_tail_counts(per_class: int, imbalance: float, num_classes: int, seed: int) -> list[int]:
    """Images of each class (indexed by class) in a long-tailed subset: PER_CLASS * IMBALANCE ** (-r / (K - 1)) for
    the class of rank r, from PER_CLASS down to PER_CLASS / IMBALANCE; which class gets which rank is drawn by SEED."""
    ranks = list(range(num_classes))
    random.Random(seed).shuffle(ranks)
    steps = max(num_classes - 1, 1)
    return [max(1, round(per_class * imbalance ** (-rank / steps))) for rank in ranks]


def rebalance_counts(real_counts: Mapping[str, int], to: int) -> dict[str, int]:
    """Synthetic images per class that bring every class of REAL_COUNTS (class index -> real images) to TO."""
    return {label: max(to - count, 0) for label, count in sorted(real_counts.items(), key=lambda item: int(item[0]))}


class GenerateSpec(_Spec, frozen=True):
    """What to generate: COUNT images from a trained model, balanced over classes unless CLASS_COUNTS is given."""

    kind: ClassVar[str] = "generate"

    job_id: JobId
    model: JobId
    count: Annotated[int, Meta(ge=1, le=100_000_000)]
    shard_size: Annotated[int, Meta(ge=1, le=100_000), option("Images per tar shard.")] = 1000
    seed: Annotated[Seed, option("Seed of the noise: the same seed makes the same images.")] = 0
    batch_size: Annotated[int, Meta(ge=1, le=8192)] = 256
    class_counts: ClassCounts | None = None  # overrides COUNT's balance
    # the latent noise's standard deviation: above 1 reaches further from the modes G learned, trading label
    # accuracy for coverage (docs/training.md measures it); below 1 the reverse (truncation)
    noise_scale: Annotated[float, Meta(ge=0.01, le=10.0), option(
        "Scale of the latent noise: above 1 trades label accuracy for coverage, below 1 the reverse.")] = 1.0
    # a rebalancing plan (`augment generate --rebalance`): the model's training images per class (from its card)
    # and the per-class total real + synthetic that CLASS_COUNTS brings every class to
    real_counts: ClassCounts | None = None
    rebalance_to: Annotated[int, Meta(ge=1, le=100_000_000)] | None = None
    # each sample's training target, written to its metadata when the model has a teacher (TargetRule above);
    # "teacher" measured best of the three on the long-tail validation split (docs/evaluation.md)
    targets: Annotated[TargetRule, option(
        "Each sample's training target, for a model with a teacher: hard (its label), teacher (the teacher's "
        "probabilities), agree (its label where the teacher's top class agrees, else the teacher's).")] = "teacher"
    checkpoint: Annotated[CheckpointChoice, option(
        "Sample from the model's best checkpoint on its validation curve, or from its last.")] = "best"
    version: int = SPEC_VERSION

    def _check_fields_together(self) -> None:
        if self.class_counts is not None and sum(self.class_counts.values()) != self.count:
            raise self._fail("class_counts", f"counts add up to {sum(self.class_counts.values())}, not count={self.count}")
        if (self.real_counts is None) != (self.rebalance_to is None):
            raise self._fail("rebalance_to", "a rebalancing plan needs both real_counts and rebalance_to")
        if self.real_counts is not None and self.rebalance_to is not None and \
                self.class_counts != rebalance_counts(self.real_counts, self.rebalance_to):
            raise self._fail("class_counts", f"they are not the rebalancing plan to {self.rebalance_to} per class; "
                             "leave them out and let `augment generate --rebalance` plan them")

    @property
    def shard_count(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def shard_images(self, index: int) -> range:
        """The global indices of the images shard INDEX holds: ``[index * shard_size, ...)``, the last one short."""
        start = index * self.shard_size
        return range(start, min(self.count, start + self.shard_size))


class EvaluateSpec(_Spec, frozen=True):
    """An evaluation: the quality of a trained model (``quality``), or whether GAN samples help a classifier
    trained on a small real subset (``utility``: the GAN is trained on that subset only)."""

    kind: ClassVar[str] = "evaluate"

    job_id: JobId
    mode: EvaluationMode
    dataset: Annotated[Dataset, option(
        "utility: the dataset whose small subset is augmented, e.g. fashion-mnist; quality: the real data to compare "
        "with.", "the model's training dataset")] | None = None
    model: Annotated[JobId, option(
        "The training job whose generator is scored. utility: its samples, with its own training images as the real "
        "subset (and its validation split as the held-out images with --holdout validation), instead of a GAN trained "
        "on a subset of --dataset.")] | None = None
    per_class: Annotated[int, Meta(ge=2, le=100_000), option(
        "Real images of each class in the subset (with --imbalance: of its commonest class).")] = 100
    # utility: 1 is the balanced scenario; above 1 the long-tail one, scored on the balanced held-out images
    imbalance: Annotated[Imbalance, option(
        "The long-tail scenario: PER_CLASS images of the commonest class down to PER_CLASS / IMBALANCE of the rarest, "
        "scored by balanced accuracy and the rarest third's; 1 is balanced.")] = 1.0
    # utility: mean and standard deviation over seeds (docs/evaluation.md says how large seed noise is)
    seeds: Annotated[int, Meta(ge=1, le=20), option("Classifier trainings per setting.")] = 5
    seed: Annotated[Seed, option("Seed of the subset, the GAN, the samples and the classifiers.")] = 0
    gan_steps: Annotated[Steps, option("Steps of the GAN trained on the subset.", "augment train's budget")] | None = None
    gan_width: Annotated[Width, option("Base channel width of that GAN.", "augment train's")] | None = None
    gan_class_balanced: bool | None = None  # utility: its class_balanced (None: augment train's default)
    holdout: Annotated[Holdout, option(
        "Score on the test split (for final figures) or on a validation split of training images outside the subset "
        "(for choosing recipes and settings).")] = "test"
    validation_size: Annotated[int, Meta(ge=10, le=1_000_000), option("Images in that validation split.")] = 10_000
    sweep: Annotated[bool, option(
        "Also run the earlier sweep: synthetic:real ratios, loss weights, confidence filters, pre-training (arms "
        "(a)-(d)).")] = False
    classifier_steps: Annotated[Steps, option("Steps of each classifier trained (for a setting, or for CAS).")] = 1000
    reference_steps: Annotated[Steps, option(
        "Steps of the reference classifier, trained once per dataset on its real training split (its features are "
        "the default feature space).")] = REFERENCE_STEPS
    samples_per_class: Annotated[int, Meta(ge=2, le=100_000), option(
        "Generated images per class: scored (quality), or the pool of GAN samples the classifiers draw from "
        "(utility).")] = 1000
    test_limit: Annotated[int, Meta(ge=10, le=10_000_000), option(
        "Score against the first TEST_LIMIT real test images only.", "every test image")] | None = None
    ratios: Annotated[str, number_list(0.0, 64.0), option("Sweep: synthetic:real ratios to try.")] = "0.25,0.5,1,2,4"
    synthetic_weights: Annotated[str, number_list(0.0, 1.0), option(
        "Sweep: loss weights of synthetic samples to try (at ratio 1).")] = "0.5,0.25"
    min_confidences: Annotated[str, number_list(0.0, 1.0), option(
        "Sweep: keep synthetic samples whose label a real-trained classifier gives at least this; the filters to "
        "try.")] = "0.5,0.9"
    inception_weights: Annotated[str, option(
        "A local InceptionV3 weights file (FID-compatible): use its features instead of the classifier's.",
        "the reference classifier's features")] | None = None
    checkpoint: Annotated[CheckpointChoice, option(
        "Score the model's best checkpoint on its validation curve, or its last.")] = "best"
    arms: Annotated[StudyArms, option(
        "utility: every arm of the study, or only real, real + mixup and real + GAN (teacher labels), without the "
        "sample-quality measurement: the GAN against mixup, what a sweep ranks trials by.")] = "all"
    version: int = SPEC_VERSION

    def _check_fields_together(self) -> None:
        if self.mode == "quality" and self.model is None:
            raise self._fail("model", "a quality evaluation needs the training job id of the model to score")
        if self.mode == "utility" and self.dataset is None and self.model is None:
            raise self._fail("dataset", "a utility evaluation needs a dataset (to train a GAN on a subset of) or a model")
        if self.mode == "utility" and self.model is not None:
            self._check_model_study()

    def _check_model_study(self) -> None:
        """A study of a trained model takes its real subset from the model: the fields that choose a subset, or the
        GAN to train on it, would be silently ignored, so they are refused."""
        subset_fields = {"dataset", "per_class", "imbalance", "gan_steps", "gan_width", "gan_class_balanced",
                         "validation_size", "sweep"}
        given = [field.name for field in msgspec.structs.fields(self)
                 if field.name in subset_fields and getattr(self, field.name) != field.default]
        if given:
            raise self._fail(given[0], "a utility study of --model uses that model's own training images and "
                             "validation split; leave it out, or give --dataset without --model to train a GAN on a subset")

    @property
    def ratio_list(self) -> list[float]:
        return _float_list(self.ratios)

    @property
    def weight_list(self) -> list[float]:
        return _float_list(self.synthetic_weights)

    @property
    def confidence_list(self) -> list[float]:
        return _float_list(self.min_confidences)


__all__ = [
    "SPEC_VERSION",
    "IMAGE_SIZES",
    "CONDITIONINGS",
    "LOSSES",
    "PRECISIONS",
    "SpecError",
    "Recipe",
    "long_tail_counts",
    "rebalance_counts",
    "TrainSpec",
    "GenerateSpec",
    "EvaluateSpec",
    "check_job_id",
]
