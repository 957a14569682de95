"""A training job's validation curve: how good its samples are as it trains, and which checkpoint is its best.

The job holds out a stratified share of its training images (:func:`worker.data.split_validation`) that neither the
GAN nor its teacher trains on. Every ``validate_every`` steps, and at the last step, the sampling generator draws a
fixed set of noise and labels (the validation split's class shares), and :class:`Validator` measures those images
against the split in the dataset's reference classifier's feature space, the one evaluations use: FID, KID,
precision, recall and label accuracy. The figures are a function of the weights alone, so a resumed job measures
the same curve as one that was never stopped.

The reference classifier is trained on the dataset's whole training split, which holds the validation images too;
the model card says so. A classifier trained without them would cost a classifier per job, and the curve ranks
the checkpoints of one job against each other, which a feature space that has seen the images still does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shared.progress import QualityPoint
from shared.settings import Settings
from shared.specs import TrainSpec
from worker.classifier import Classifier, FeatureExtractor
from worker.data import ImageData, load_dataset, split_validation
from worker.images import sample_fixed
from worker.metrics import Precomputed, frechet_distance, kernel_distance, precision_recall
from worker.model import GANConfig
from worker.networks import Generator

# generated images per measurement: enough that FID's and KID's spread between measurements of one model stays
# well below the change the curve shows, few enough that a measurement costs a few seconds on a CPU
VALIDATION_SAMPLES = 1000
# precision and recall use 3 nearest neighbours, and a point is its own nearest
LEAST_VALIDATION_IMAGES = 4


def job_images(spec: TrainSpec, settings: Settings) -> ImageData:
    """The images training job SPEC loads, before its validation split: what it trained on, and what a study of its
    model reloads."""
    return load_dataset(spec.dataset, settings, "train", image_size=spec.image_size, channels=spec.channels,
                        limit=spec.limit, per_class=spec.per_class, seed=spec.seed, imbalance=spec.imbalance,
                        background=spec.background)


def validation_split(spec: TrainSpec, data: ImageData) -> tuple[ImageData, ImageData | None, str | None]:
    """(training part, validation part, why there is none): the split SPEC asks for, or all of DATA for training
    with the reason when the data allows no curve."""
    if spec.validation == 0:
        return data, None, "no validation split was asked for (validation=0)"
    if data.info.num_classes < 2:
        return data, None, "the dataset has no class labels, which the reference classifier's feature space needs"
    train, validation = split_validation(data, spec.validation, spec.seed)
    if len(validation) < LEAST_VALIDATION_IMAGES:
        return data, None, (f"a validation share of {spec.validation:g} of {len(data)} images holds out "
                            f"{len(validation)}; a curve needs at least {LEAST_VALIDATION_IMAGES}")
    return train, validation, None


@dataclass
class Validator:
    """Measures a generator's samples from fixed noise and labels against the validation split."""

    reference: Classifier
    real: torch.Tensor  # (N, D) the validation split's features in the reference's feature space
    noise: torch.Tensor  # (M, nz), on the training device
    labels: torch.Tensor | None  # (M,) the labels asked for, in the split's class shares; None: unconditional

    @classmethod
    def build(cls, config: GANConfig, validation: ImageData, reference: Classifier, seed: int,
              device: torch.device) -> Validator:
        rng = torch.Generator().manual_seed(seed + 11)
        noise = torch.randn(VALIDATION_SAMPLES, config.nz, generator=rng)
        labels = None
        if config.conditional:
            shuffled = validation.labels[torch.randperm(len(validation), generator=rng)]
            labels = shuffled.repeat(-(-VALIDATION_SAMPLES // len(shuffled)))[:VALIDATION_SAMPLES].to(device)
        reference = reference.cpu().eval()
        return cls(reference, FeatureExtractor(reference)(validation.images.cpu()), noise.to(device), labels)

    @torch.no_grad()
    def measure(self, sampler: Generator, step: int) -> QualityPoint:
        fake = torch.cat([
            FeatureExtractor(self.reference)(sample_fixed(sampler, self.noise[start : start + 500],
                                                          self.labels[start : start + 500] if self.labels is not None else None))
            for start in range(0, len(self.noise), 500)
        ])  # (M, D): each sample's features, computed once for every metric
        features = Precomputed(self.reference.num_features)
        precision, recall = precision_recall(features, self.real, fake)
        labels = self.labels.cpu() if self.labels is not None else None
        return QualityPoint(
            step=step,
            fid=frechet_distance(features, self.real, fake),
            kid=kernel_distance(features, self.real, fake)[0],
            precision=precision,
            recall=recall,
            label_accuracy=float((self.reference.head(fake.float()).argmax(1) == labels).float().mean())
            if labels is not None else None,
        )


def validation_record(spec: TrainSpec, data: ImageData, validation: ImageData | None, missing: str | None,
                      every: int, reference: dict[str, Any] | None) -> dict[str, Any]:
    """What the model card says about the split and how the curve was measured."""
    if validation is None:
        return {"images": 0, "why_none": missing}
    counts = torch.bincount(validation.labels, minlength=data.info.num_classes).tolist()
    return {
        "share": spec.validation,
        "images": len(validation),
        "class_counts": {str(label): int(count) for label, count in enumerate(counts)},
        "seed": spec.seed,
        "every": every,
        "samples": VALIDATION_SAMPLES,
        "select": spec.select,
        "patience": spec.patience,
        "feature_space": reference["description"] if reference else None,
        "reference_saw_validation": True,  # trained on the dataset's whole training split (this module's docstring)
    }
