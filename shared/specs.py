"""Job specs: the versioned contract between the producer and the workers.

A spec is a frozen dataclass that validates itself on construction, so an invalid spec cannot exist.
Both sides validate: the producer before enqueueing and the worker on receipt (a message can come from anywhere).
Errors are :class:`SpecError`, whose message names the field and the allowed values in one line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

SPEC_VERSION = 1
IMAGE_SIZES = (28, 32, 64)
BUILTIN_DATASETS = ("fashion-mnist", "cifar10", "fake")
LOSSES = ("bce", "hinge")
CONDITIONINGS = ("concat", "projection")
AUGMENTATIONS = ("translation", "cutout", "color")
PRECISIONS = ("auto", "fp32", "bf16")
# DiffAugment helped at 1,000 training images (FID 218 -> 168) and hurt at 60,000 (58 -> 116): "auto" turns it on
# below this size, a point between the two measurements (the DiffAugment paper's gains are all under ~20k images).
SMALL_DATASET = 10_000
AUTO_AUGMENTATIONS = ("translation", "cutout")
# The step budget of `augment train` with neither --steps nor --epochs below SMALL_DATASET images (docs/training.md).
SMALL_DATA_STEPS = 4000
# The teacher measured in docs/evaluation.md: 3 classifiers of width 32 (84.5-85.0 % each on 1,000 real images).
AUTO_TEACHER_MEMBERS = 3
JOB_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{2,63}")


class SpecError(ValueError):
    """A job spec is invalid. ``field`` names the offending field."""

    def __init__(self, kind: str, field_name: str, problem: str):
        self.field = field_name
        super().__init__(f"invalid {kind} spec: {field_name}: {problem}")


def check_job_id(job_id: object, field_name: str = "job_id", kind: str = "job") -> str:
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise SpecError(
            kind, field_name, f"{job_id!r} is not a job id; use 3-64 characters of a-z, 0-9 and '-' (as printed by augment)"
        )
    return job_id


def check_dataset_name(name: object) -> str:
    """Accept a built-in dataset name or ``imagefolder:<local path or s3://bucket/prefix>``."""
    if isinstance(name, str):
        if name in BUILTIN_DATASETS:
            return name
        if name.startswith("imagefolder:") and len(name) > len("imagefolder:"):
            return name
    allowed = ", ".join(BUILTIN_DATASETS)
    raise SpecError("train", "dataset", f"{name!r} is not a dataset; use one of {allowed} or imagefolder:<path or s3://...>")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# annotation -> check returning what the value should have been, or None when it fits
_TYPE_PROBLEMS = {
    "bool": lambda v: None if isinstance(v, bool) else "true or false",
    "int": lambda v: None if isinstance(v, int) and not isinstance(v, bool) else "an integer",
    "float": lambda v: None if _is_number(v) else "a number",
    "str": lambda v: None if isinstance(v, str) else "a string",
}


class _Spec:
    """Shared parsing: type checks, range checks and unknown-field rejection for the spec dataclasses."""

    kind: ClassVar[str]
    # field name -> (min, max) for ints and floats
    ranges: ClassVar[dict[str, tuple[float, float]]] = {}

    def _fail(self, field_name: str, problem: str) -> SpecError:
        return SpecError(self.kind, field_name, problem)

    def _check_choice(self, field_name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, field_name)
        if value not in allowed:
            raise self._fail(field_name, f"{value!r} is not allowed; use one of {', '.join(allowed)}")

    def _check_types_and_ranges(self) -> None:
        for spec_field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec_field.name)
            # annotations are strings here (from __future__ import annotations): "int | None", "bool", ...
            base, _, optional = str(spec_field.type).partition(" | ")
            if value is None and optional == "None":
                continue
            problem = _TYPE_PROBLEMS.get(base, lambda v: None)(value)
            if problem:
                raise self._fail(spec_field.name, f"{value!r} is not {problem}")
            if spec_field.name in self.ranges:
                low, high = self.ranges[spec_field.name]
                if not low <= value <= high:
                    raise self._fail(spec_field.name, f"{value!r} is out of range; use {low:g} to {high:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):  # type: ignore[no-untyped-def]
        kind = cls.kind
        if not isinstance(data, Mapping):
            raise SpecError(kind, "spec", f"expected a JSON object, got {type(data).__name__}")
        known = {spec_field.name for spec_field in fields(cls)}  # type: ignore[arg-type]
        # a name that is not an identifier is quoted, so a hostile one cannot add a line to the message
        unknown = sorted(name if isinstance(name, str) and name.isidentifier() else repr(name) for name in set(data) - known)
        if unknown:
            raise SpecError(kind, unknown[0], f"unknown field; allowed fields are {', '.join(sorted(known))}")
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(kind, "version", f"{version!r} is not supported; this worker reads version {SPEC_VERSION}")
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            missing = re.findall(r"'(\w+)'", str(exc))
            raise SpecError(kind, missing[0] if missing else "spec", "is required") from None


@dataclass(frozen=True)
class TrainSpec(_Spec):
    """What to train. ``epochs`` and ``steps`` are exclusive; with neither, one epoch is trained, but at least
    SMALL_DATA_STEPS on a small dataset (one epoch of 1,000 images is 16 steps: nowhere near a trained GAN)."""

    kind: ClassVar[str] = "train"
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "epochs": (1, 10_000),
        "steps": (1, 10_000_000),
        "batch_size": (1, 4096),
        "seed": (0, 2**31 - 1),
        "nz": (1, 1024),
        "width": (4, 512),
        "lr": (1e-6, 1.0),
        "beta1": (0.0, 0.999),
        "beta2": (0.0, 0.9999),
        "limit": (1, 100_000_000),
        "log_every": (1, 1_000_000),
        "checkpoint_every": (1, 10_000_000),
        "per_class": (1, 10_000_000),
        "sample_every": (1, 10_000_000),
        "grad_clip": (0.0, 1e6),
        "ema": (0.0, 0.99999),
        "teacher": (0, 16),
        "teacher_width": (4, 256),
        "teacher_steps": (1, 1_000_000),
    }

    job_id: str
    dataset: str
    epochs: int | None = None
    steps: int | None = None
    image_size: int | None = None  # None: the dataset's native size
    channels: int | None = None  # None: the dataset's own; 1 or 3 converts grey <-> RGB at load time
    batch_size: int = 64
    conditional: bool | None = None  # None: conditional when the dataset has labels
    seed: int = 0
    nz: int = 100
    width: int = 64  # ngf = ndf, as in the seed's DCGAN
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # Stabilisers; defaults chosen by measurement (docs/training.md: on 100 images per class, DiffAugment
    # on the seed's recipe gave the best FID; hinge, spectral norm, projection and EMA made it worse).
    loss: str = "bce"
    spectral_norm: bool = False  # in D
    conditioning: str = "concat"  # how D sees the label: one-hot planes ("concat") or a projection head
    # comma list of translation, cutout, color; "none"; or "auto": translation,cutout for a small training set
    # (under SMALL_DATASET images), none for a large one, as measured (docs/training.md)
    diffaugment: str = "auto"
    grad_clip: float = 0.0  # max gradient norm for G and D; 0 disables
    ema: float = 0.0  # decay of the moving average of G's weights used for sampling (e.g. 0.999); 0 disables
    limit: int | None = None  # train on the first LIMIT images only (small-data runs, tests)
    per_class: int | None = None  # train on PER_CLASS images of each class (small-data experiments)
    log_every: int = 50
    checkpoint_every: int = 500
    sample_every: int | None = None  # steps between sample grids; None: once per epoch
    precision: str = "auto"  # auto: bf16 autocast where the hardware has bf16 (CUDA, AVX512-BF16/AMX CPUs), else fp32
    compile: bool = False  # torch.compile the networks (faster after a warm-up, on GPUs mostly)
    # Classifiers trained on the same real images whose averaged probabilities label every generated sample (soft
    # labels in the shards); 0: no teacher. AUTO_TEACHER_MEMBERS is the teacher measured in docs/evaluation.md.
    teacher: int = 0
    teacher_width: int = 32
    teacher_steps: int = 1000
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        check_job_id(self.job_id, kind=self.kind)
        check_dataset_name(self.dataset)
        self._check_types_and_ranges()
        if self.epochs is not None and self.steps is not None:
            raise self._fail("steps", "give either epochs or steps, not both")
        if self.image_size is not None and self.image_size not in IMAGE_SIZES:
            raise self._fail("image_size", f"{self.image_size!r} is not allowed; use one of {', '.join(map(str, IMAGE_SIZES))}")
        if self.limit is not None and self.per_class is not None:
            raise self._fail("per_class", "give either limit or per_class, not both")
        if self.channels is not None and self.channels not in (1, 3):
            raise self._fail("channels", f"{self.channels!r} is not allowed; use 1 or 3")
        self._check_choice("loss", LOSSES)
        self._check_choice("conditioning", CONDITIONINGS)
        self._check_choice("precision", PRECISIONS)
        if self.diffaugment not in ("none", "auto"):
            for policy in self.diffaugment.split(","):
                if policy not in AUGMENTATIONS:
                    raise self._fail(
                        "diffaugment", f"{policy!r} is not allowed; use auto, none or a comma list of {', '.join(AUGMENTATIONS)}"
                    )

    def default_steps(self, num_images: int, steps_per_epoch: int) -> int:
        """The steps trained when the spec gives neither steps nor epochs."""
        return max(steps_per_epoch, SMALL_DATA_STEPS) if num_images < SMALL_DATASET else steps_per_epoch

    def augmentations(self, num_images: int) -> tuple[str, ...]:
        """The DiffAugment policies for a training set of NUM_IMAGES images."""
        if self.diffaugment == "auto":
            return AUTO_AUGMENTATIONS if num_images < SMALL_DATASET else ()
        return () if self.diffaugment == "none" else tuple(self.diffaugment.split(","))


@dataclass(frozen=True)
class GenerateSpec(_Spec):
    """What to generate: COUNT images from a trained model, balanced over classes unless CLASS_COUNTS is given."""

    kind: ClassVar[str] = "generate"
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "count": (1, 100_000_000),
        "shard_size": (1, 100_000),
        "seed": (0, 2**31 - 1),
        "batch_size": (1, 8192),
    }

    job_id: str
    model: str
    count: int
    shard_size: int = 1000
    seed: int = 0
    batch_size: int = 256
    # class index (as a string: JSON object keys are strings) -> number of images; overrides COUNT's balance
    class_counts: dict[str, int] | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        check_job_id(self.job_id, kind=self.kind)
        check_job_id(self.model, field_name="model", kind=self.kind)
        self._check_types_and_ranges()
        if self.class_counts is not None:
            self._check_class_counts(self.class_counts)

    def _check_class_counts(self, counts: object) -> None:
        if not isinstance(counts, dict) or not counts:
            raise self._fail("class_counts", "use a non-empty object of class index -> count")
        for label, number in counts.items():
            # canonical ASCII decimals only, so "1" and "01" cannot both name class 1
            if not isinstance(label, str) or not re.fullmatch(r"0|[1-9][0-9]{0,3}", label):
                raise self._fail("class_counts", f"class {label!r} is not a class index (0, 1, ...)")
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise self._fail("class_counts", f"count {number!r} for class {label} is not a non-negative integer")
        if sum(counts.values()) != self.count:
            raise self._fail("class_counts", f"counts add up to {sum(counts.values())}, not count={self.count}")

    @property
    def shard_count(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def labels_plan(self, num_classes: int) -> list[int]:
        """How many images of each class to make: balanced (remainder to the first classes) or as asked."""
        if num_classes <= 0:
            return [self.count]
        if self.class_counts is None:
            base, extra = divmod(self.count, num_classes)
            return [base + (1 if label < extra else 0) for label in range(num_classes)]
        plan = [0] * num_classes
        for label, number in self.class_counts.items():
            if int(label) >= num_classes:
                raise self._fail("class_counts", f"class {label} does not exist; the model has classes 0-{num_classes - 1}")
            plan[int(label)] = number
        return plan


EVALUATION_MODES = ("quality", "utility")
# utility: where the classifiers are scored. "validation" holds out images of the training split that the small
# subset leaves out, for choosing recipes and settings; "test" is for final figures only.
HOLDOUTS = ("test", "validation")


def _float_list(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


@dataclass(frozen=True)
class EvaluateSpec(_Spec):
    """An evaluation: the quality of a trained model (``quality``), or whether GAN samples help a classifier
    trained on a small real subset (``utility``: the GAN is trained on that subset only)."""

    kind: ClassVar[str] = "evaluate"
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "per_class": (2, 100_000),
        "seeds": (1, 20),
        "validation_size": (10, 1_000_000),
        "seed": (0, 2**31 - 1),
        "gan_steps": (1, 10_000_000),
        "gan_width": (4, 512),
        "classifier_steps": (1, 10_000_000),
        "reference_steps": (1, 10_000_000),
        "samples_per_class": (2, 100_000),
        "test_limit": (10, 10_000_000),
    }

    job_id: str
    mode: str
    dataset: str | None = None  # utility: the dataset; quality: the model's own unless given
    model: str | None = None  # quality: the training job whose generator is scored
    per_class: int = 100  # utility: real images of each class in the small subset
    seeds: int = 5  # utility: classifier trainings per setting (mean and standard deviation; +-0.5 points at 1,000 images)
    seed: int = 0
    gan_steps: int | None = None  # utility: steps of the GAN trained on the subset (None: augment train's default budget)
    gan_width: int | None = None  # utility: its width (None: augment train's default; smaller for smoke runs)
    holdout: str = "test"  # utility: score on the test split, or on a validation split carved from the training split
    validation_size: int = 10_000  # utility: images in that validation split
    sweep: bool = False  # utility: also run the earlier sweep (ratios, weights, confidence filters, pre-training)
    classifier_steps: int = 1000  # steps of every classifier trained for a setting or for CAS
    reference_steps: int = 1500  # steps of the reference classifier (the feature space), trained once per dataset
    samples_per_class: int = 1000  # quality: generated images per class to score; utility: the pool of GAN samples
    test_limit: int | None = None  # score against the first TEST_LIMIT real test images (smoke runs)
    ratios: str = "0.25,0.5,1,2,4"  # utility: synthetic images per real image
    synthetic_weights: str = "0.5,0.25"  # utility: loss weights of synthetic samples to try (ratio 1)
    min_confidences: str = "0.5,0.9"  # utility: keep synthetic samples whose label a real-trained classifier gives at least this
    inception_weights: str | None = None  # a local InceptionV3 weights file: its features instead of the classifier's
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        check_job_id(self.job_id, kind=self.kind)
        self._check_types_and_ranges()
        self._check_choice("mode", EVALUATION_MODES)
        self._check_choice("holdout", HOLDOUTS)
        if self.mode == "quality" and self.model is None:
            raise self._fail("model", "a quality evaluation needs the training job id of the model to score")
        if self.model is not None:
            check_job_id(self.model, field_name="model", kind=self.kind)
        if self.mode == "utility" and self.dataset is None:
            raise self._fail("dataset", "a utility evaluation needs a dataset")
        if self.dataset is not None:
            check_dataset_name(self.dataset)
        for name, low, high in (("ratios", 0.0, 64.0), ("synthetic_weights", 0.0, 1.0), ("min_confidences", 0.0, 1.0)):
            try:
                values = _float_list(getattr(self, name))
            except ValueError:
                raise self._fail(name, f"{getattr(self, name)!r} is not a comma list of numbers, e.g. 0.5,1,2") from None
            if not values or not all(low < value <= high for value in values):
                raise self._fail(name, f"{getattr(self, name)!r}: use numbers above {low:g} and at most {high:g}")

    @property
    def ratio_list(self) -> list[float]:
        return _float_list(self.ratios)

    @property
    def weight_list(self) -> list[float]:
        return _float_list(self.synthetic_weights)

    @property
    def confidence_list(self) -> list[float]:
        return _float_list(self.min_confidences)


SPEC_TYPES: dict[str, type[_Spec]] = {"train": TrainSpec, "generate": GenerateSpec, "evaluate": EvaluateSpec}


def parse_spec(kind: str, data: Mapping[str, Any]) -> Any:
    if kind not in SPEC_TYPES:
        raise SpecError("job", "kind", f"{kind!r} is not a job kind; use one of {', '.join(SPEC_TYPES)}")
    return SPEC_TYPES[kind].from_dict(data)


__all__ = [
    "SPEC_VERSION",
    "IMAGE_SIZES",
    "SpecError",
    "TrainSpec",
    "GenerateSpec",
    "EvaluateSpec",
    "parse_spec",
    "check_job_id",
]
