"""Offline GAN quality in a domain feature space, with nothing downloaded.

InceptionV3 weights cannot be fetched here, so, as TF-GAN's MNIST metrics and the "Frechet LeNet distance" do,
a small classifier trained on the real training split provides the feature space (its penultimate layer).
The Frechet distance itself comes from torchmetrics, which accepts a custom feature extractor.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_SPACE = "penultimate layer (128-d) of a CNN classifier trained on the real training split"


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 28
    channels: int = 1
    num_classes: int = 10
    width: int = 32


class Classifier(nn.Module):
    """A LeNet-sized CNN: two conv blocks, a 128-d feature layer, a linear head."""

    num_features = 128  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.body = nn.Sequential(
            nn.Conv2d(config.channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(True),
            nn.MaxPool2d(2),  # (w, S/2, S/2)
            nn.Conv2d(width, width * 2, 3, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(True),
            nn.MaxPool2d(2),  # (2w, S/4, S/4)
            nn.Flatten(),
            nn.Linear(width * 2 * (config.image_size // 4) ** 2, self.num_features), nn.ReLU(True),
        )
        self.head = nn.Linear(self.num_features, config.num_classes)
        # NHWC: oneDNN's convolutions and their backward, what a CPU's teacher, reference and study arms spend most
        # time on, run faster in it (docs/benchmarks.md, "The classifiers")
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) of any size and 1 or 3 channels -> float input this network expects."""
        return self.conform(images.float() / 127.5 - 1.0)

    def conform(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [-1, 1] (a generator's output) -> this network's channels and size, differentiably."""
        if x.shape[1] != self.config.channels:
            x = x.mean(dim=1, keepdim=True) if self.config.channels == 1 else x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.config.image_size:  # in float32: antialiased resizing has no bf16 kernel on CPUs
            x = F.interpolate(x.float(), size=self.config.image_size, mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images))  # (N, 128)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (N, K) logits

    def logits_of_float(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) logits of float images in [-1, 1] (a generator's output), differentiable in X."""
        return self.head(self.body(self.conform(x)))


class FeatureExtractor(nn.Module):
    """The classifier's feature layer in the shape torchmetrics wants (``num_features``, uint8 input)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier.features(images).double()


def classic_augment(images: torch.Tensor, rng: torch.Generator, pad: int = 2) -> torch.Tensor:
    """The textbook augmentation for small images, drawn per sample: a random crop after PAD-pixel padding (black)
    and a random horizontal flip. Every dataset this project reads has mirror-symmetric classes (clothes, CIFAR's
    objects, photos), so the flip is always on.

    One offset per batch, as this function drew before, measured 81.6 % against 83.2 % per sample (Fashion-MNIST,
    1,000 real images, 3 seeds): a baseline that weak flatters anything compared with it.
    """
    batch, channels, height, width = images.shape
    flip = (torch.rand(batch, generator=rng) < 0.5).to(images.device)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, [pad, pad, pad, pad], value=-1.0)  # (B, C, H+2p, W+2p), padded with black
    padded_width = width + 2 * pad
    dy, dx = torch.randint(0, 2 * pad + 1, (2, batch, 1), generator=rng).to(images.device)  # (B, 1) each
    rows = dy + torch.arange(height, device=images.device).repeat_interleave(width)  # (B, H*W)
    cols = dx + torch.arange(width, device=images.device).repeat(height)
    # one gather over the flattened padded images: per-sample slicing in a Python loop cost 10x more
    index = (rows * padded_width + cols)[:, None, :].expand(-1, channels, -1)  # (B, C, H*W)
    return padded.flatten(2).gather(2, index).view(batch, channels, height, width)


# Extra inputs for one step: uint8 images (S, C, H, W) with target class probabilities (S, K)
ExtraBatch = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class probabilities, per sample: KL(targets || softmax(logits)) plus the targets'
    entropy, which has no gradient; with one-hot targets it is the usual cross-entropy."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)  # (B,)


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 1500, batch_size: int = 128,
    seed: int = 0, lr: float = 1e-3, weights: torch.Tensor | None = None, augment: bool = False,
    init: Classifier | None = None, width: int = 32, extra: ExtraBatch | None = None, extra_weight: float = 1.0,
    after_step: Callable[[int], None] = lambda step: None, image_size: int | None = None,
) -> Classifier:
    """Train a classifier on uint8 IMAGES (N, C, H, W) with labels (N,).

    WEIGHTS (N,) scale each sample's loss (e.g. less for synthetic samples); AUGMENT applies
    :func:`classic_augment` to every input; INIT starts from another classifier's weights (fine-tuning).
    EXTRA adds a batch per step with target probabilities (soft labels from a teacher, or one-hot ones), whose mean
    soft cross-entropy is added to the real batch's loss with weight EXTRA_WEIGHT. AFTER_STEP is called with each
    finished step's number (a job's cancellation check). IMAGE_SIZE is the size the classifier works at (every input
    is resized to it, as the classifier resizes whatever it is given later); by default the images' own.
    """
    torch.manual_seed(seed)
    config = ClassifierConfig(image_size=image_size or images.shape[-1], channels=images.shape[1], num_classes=num_classes,
                              width=width)
    model = Classifier(config).to(images.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)

    def logits_of(batch: torch.Tensor) -> torch.Tensor:
        inputs = model.prepare(batch)
        if augment:
            inputs = classic_augment(inputs, rng).contiguous(memory_format=torch.channels_last)
        return model.head(model.body(inputs))

    model.train()
    for step in range(steps):
        index = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=rng).to(images.device)
        losses = F.cross_entropy(logits_of(images[index]), labels[index], reduction="none")  # (B,)
        if weights is not None:
            batch_weights = weights[index]
            loss = (losses * batch_weights).sum() / batch_weights.sum().clamp_min(1e-12)
        else:
            loss = losses.mean()
        if extra is not None:
            extra_images, targets = extra(rng)
            loss = loss + extra_weight * soft_cross_entropy(logits_of(extra_images), targets).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after_step(step + 1)
    return model.eval()


@torch.no_grad()
def logits_of_images(model: Classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """MODEL's logits (N, K) of uint8 IMAGES (N, C, H, W), in float32."""
    return torch.cat([model(images[start : start + batch_size]).float() for start in range(0, len(images), batch_size)])


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    if not len(images):
        return 0.0
    return float((logits_of_images(model, images, batch_size).argmax(1) == labels).float().mean())


@torch.no_grad()
def label_confidence(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's probability of each image's given label, (N,)."""
    return torch.cat([
        F.softmax(model(images[start : start + batch_size]), dim=1).gather(1, labels[start : start + batch_size, None])[:, 0]
        for start in range(0, len(images), batch_size)
    ])


# Format 2 stores a list of members (an ensemble); a reference classifier is an ensemble of one.
CLASSIFIER_FORMAT = 2
REFERENCE_KIND = "gan-augment/reference-classifier"
TEACHER_KIND = "gan-augment/teacher-ensemble"


class ClassifierFileError(ValueError):
    """A stored classifier is of another kind or format (a stale cache, or the wrong file)."""


def classifiers_to_bytes(kind: str, members: list[Classifier], meta: dict[str, Any]) -> bytes:
    """Self-describing classifiers: kind, config, every member's weights, and what they were trained on."""
    buffer = io.BytesIO()
    torch.save({"format": CLASSIFIER_FORMAT, "kind": kind, "config": asdict(members[0].config),
                "members": [member.state_dict() for member in members], "meta": meta}, buffer)
    return buffer.getvalue()


def classifiers_from_bytes(kind: str, data: bytes) -> tuple[list[Classifier], dict[str, Any]]:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise ClassifierFileError(f"not a {kind} file")
    if state.get("format") != CLASSIFIER_FORMAT:
        raise ClassifierFileError(f"{kind} format {state.get('format')!r}; this worker reads {CLASSIFIER_FORMAT}")
    members = []
    for weights in state["members"]:
        member = Classifier(ClassifierConfig(**state["config"]))
        member.load_state_dict(weights)
        members.append(member.eval())
    return members, state["meta"]
