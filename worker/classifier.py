"""Offline GAN quality in a domain feature space, with nothing downloaded.

InceptionV3 weights cannot be fetched here, so, as TF-GAN's MNIST metrics and the "Frechet LeNet distance" do,
a small classifier trained on the real training split provides the feature space (its penultimate layer).
The Frechet distance itself comes from torchmetrics, which accepts a custom feature extractor.
"""

from __future__ import annotations

import io
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

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) of any size and 1 or 3 channels -> float input this network expects."""
        x = images.float() / 127.5 - 1.0
        if x.shape[1] != self.config.channels:
            x = x.mean(dim=1, keepdim=True) if self.config.channels == 1 else x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.config.image_size:
            x = F.interpolate(x, size=self.config.image_size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images))  # (N, 128)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (N, K) logits


class FeatureExtractor(nn.Module):
    """The classifier's feature layer in the shape torchmetrics wants (``num_features``, uint8 input)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier.features(images).double()


def classic_augment(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """The textbook augmentation for small images: random horizontal flip and a random crop after 2-pixel padding."""
    batch, _, height, width = images.shape
    flip = torch.rand(batch, generator=rng) < 0.5
    images = torch.where(flip[:, None, None, None].to(images.device), images.flip(-1), images)
    padded = F.pad(images, [2, 2, 2, 2], value=-1.0)  # (B, C, H+4, W+4), padded with black
    dy, dx = torch.randint(0, 5, (2,), generator=rng).tolist()  # one offset per batch: cheap, and enough here
    return padded[:, :, dy : dy + height, dx : dx + width]


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 1500, batch_size: int = 128,
    seed: int = 0, lr: float = 1e-3, weights: torch.Tensor | None = None, augment: bool = False,
    init: Classifier | None = None, width: int = 32,
) -> Classifier:
    """Train a classifier on uint8 IMAGES (N, C, H, W) with labels (N,).

    WEIGHTS (N,) scale each sample's loss (e.g. less for synthetic samples); AUGMENT applies
    :func:`classic_augment`; INIT starts from another classifier's weights (fine-tuning).
    """
    torch.manual_seed(seed)
    config = ClassifierConfig(image_size=images.shape[-1], channels=images.shape[1], num_classes=num_classes, width=width)
    model = Classifier(config).to(images.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=rng).to(images.device)
        inputs = model.prepare(images[index])
        if augment:
            inputs = classic_augment(inputs, rng)
        losses = F.cross_entropy(model.head(model.body(inputs)), labels[index], reduction="none")  # (B,)
        if weights is not None:
            batch_weights = weights[index]
            loss = (losses * batch_weights).sum() / batch_weights.sum().clamp_min(1e-12)
        else:
            loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    correct = 0
    for start in range(0, len(images), batch_size):
        correct += int((model(images[start : start + batch_size]).argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(len(images), 1)


@torch.no_grad()
def label_confidence(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's probability of each image's given label, (N,)."""
    return torch.cat([
        F.softmax(model(images[start : start + batch_size]), dim=1).gather(1, labels[start : start + batch_size, None])[:, 0]
        for start in range(0, len(images), batch_size)
    ])


REFERENCE_FORMAT = 1


def reference_to_bytes(model: Classifier, meta: dict[str, Any]) -> bytes:
    """A self-describing reference classifier: config, weights, what it was trained on and how well it does."""
    buffer = io.BytesIO()
    torch.save({"format": REFERENCE_FORMAT, "kind": "gan-augment/reference-classifier",
                "config": asdict(model.config), "weights": model.state_dict(), "meta": meta}, buffer)
    return buffer.getvalue()


def reference_from_bytes(data: bytes) -> tuple[Classifier, dict[str, Any]]:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("kind") != "gan-augment/reference-classifier":
        raise ValueError("not a gan-augment reference classifier")
    if state.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"reference classifier format {state.get('format')!r}; this worker reads {REFERENCE_FORMAT}")
    model = Classifier(ClassifierConfig(**state["config"]))
    model.load_state_dict(state["weights"])
    return model.eval(), state["meta"]
