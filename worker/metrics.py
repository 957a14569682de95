"""GAN quality in a feature space: FID, KID, precision and recall, per-class FID, an Inception-style score.

The feature space is the penultimate layer of a reference classifier trained on the real training split (no
download needed), or InceptionV3 from a weights file the user already has. FID and KID come from torchmetrics,
which takes a custom feature extractor; precision and recall follow Kynkaanniemi et al. (2019): a generated
sample counts as precise when it falls inside the k-NN ball of some real sample, and a real sample counts as
recalled when it falls inside the k-NN ball of some generated sample.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.contracts import Quality
from worker.classifier import Classifier, FeatureExtractor, accuracy

BATCH = 1000


class InceptionFeatures(nn.Module):
    """InceptionV3's 2048-d pool features from a local weights file (torch-fidelity's FID-compatible network)."""

    num_features = 2048

    def __init__(self, weights_path: str):
        super().__init__()
        if not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"Inception weights {weights_path} do not exist; pass the path of pt_inception-2015-12-05 weights "
                "or leave the option out to use the reference classifier's features"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError:  # torchmetrics defines it only when torch-fidelity is installed
            raise ImportError("Inception features need torch-fidelity: pip install 'gan-augment[inception]'") from None
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=weights_path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grey -> RGB, as the network expects
        with torch.no_grad():
            return self.net(images).double()  # (N, 2048)


class Precomputed(nn.Module):
    """The extractor for inputs that are features already: a job that measures again and again computes the real
    images' features once, and each sample's once for every metric instead of once per metric."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.double()


def _features(extractor: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([extractor(images[start : start + BATCH]) for start in range(0, len(images), BATCH)])  # (N, D)


def frechet_distance(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between uint8 image sets REAL and FAKE in EXTRACTOR's feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=extractor)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), BATCH):
            metric.update(images[start : start + BATCH], real=is_real)
    return float(metric.compute())


def kernel_distance(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) between REAL and FAKE; unbiased, so near 0 (possibly below) for equal sets."""
    from torchmetrics.image.kid import KernelInceptionDistance

    subset_size = min(1000, len(real), len(fake))
    with warnings.catch_warnings():  # it warns that it keeps every feature: bounded here by the sample counts
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")
        metric = KernelInceptionDistance(feature=extractor, subsets=50, subset_size=subset_size)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), BATCH):
            metric.update(images[start : start + BATCH], real=is_real)
    torch.manual_seed(seed)  # torchmetrics draws its subsets from the global generator
    mean, std = metric.compute()
    return float(mean), float(std)


def _knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    distances = torch.cdist(features, features)  # (N, N)
    return distances.kthvalue(k + 1, dim=1).values  # k+1: each point is its own nearest neighbour


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    inside = torch.zeros(len(points), dtype=torch.bool)
    for start in range(0, len(points), BATCH):
        distances = torch.cdist(points[start : start + BATCH], centres)  # (b, M)
        inside[start : start + BATCH] = (distances <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with K nearest neighbours."""
    real_features, fake_features = _features(extractor, real).float(), _features(extractor, fake).float()
    precision = _inside_manifold(fake_features, real_features, _knn_radii(real_features, k)).float().mean()
    recall = _inside_manifold(real_features, fake_features, _knn_radii(fake_features, k)).float().mean()
    return float(precision), float(recall)


@torch.no_grad()
def classifier_score(classifier: Classifier, images: torch.Tensor) -> float:
    """The Inception Score's formula with the reference classifier: exp(E_x KL(p(y|x) || p(y)))."""
    probabilities = torch.cat([F.softmax(classifier(images[start : start + BATCH]), dim=1)
                               for start in range(0, len(images), BATCH)]).double()  # (N, K)
    marginal = probabilities.mean(dim=0, keepdim=True)
    kl = (probabilities * (probabilities.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(dim=1)
    return float(kl.mean().exp())


def measure_quality(
    classifier: Classifier, real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor,
    class_names: list[str], feature_space: str, inception: nn.Module | None = None,
) -> Quality:
    """Every quality metric of FAKE (with its intended FAKE_LABELS) against REAL test images."""
    extractor = inception if inception is not None else FeatureExtractor(classifier)
    kid, kid_std = kernel_distance(extractor, real, fake)
    precision, recall = precision_recall(extractor, real, fake)
    def present(label: int, least: int) -> bool:
        return int((real_labels == label).sum()) >= least and int((fake_labels == label).sum()) >= least

    scored = [(label, name) for label, name in enumerate(class_names) if present(label, 2)]
    per_class = {name: frechet_distance(extractor, real[real_labels == label], fake[fake_labels == label])
                 for label, name in scored}
    per_class_recall = {name: precision_recall(extractor, real[real_labels == label], fake[fake_labels == label])[1]
                        for label, name in scored if present(label, 4)}  # k=3 neighbours and the point itself
    per_class_label_accuracy = {name: accuracy(classifier, fake[fake_labels == label], fake_labels[fake_labels == label])
                                for label, name in scored}
    return Quality(
        feature_space=feature_space,
        fid=frechet_distance(extractor, real, fake),
        kid=kid,
        kid_std=kid_std,
        precision=precision,
        recall=recall,
        classifier_score=classifier_score(classifier, fake),
        real_classifier_score=classifier_score(classifier, real),
        label_accuracy=accuracy(classifier, fake, fake_labels),
        per_class_fid=per_class,
        per_class_recall=per_class_recall,
        per_class_label_accuracy=per_class_label_accuracy,
    )
