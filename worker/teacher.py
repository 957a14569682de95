"""The teacher: classifiers trained on a training job's own real images, whose averaged class probabilities label
every synthetic sample with soft targets.

A GAN's conditioning label says what a sample was meant to be; the teacher says what it looks like. Training on
the teacher's probabilities (a KL term beside the real images' cross-entropy) is how synthetic data has been
made to help in the literature (Gowal et al. 2021, He et al. 2023): measured on Fashion-MNIST with 1,000 real
images, GAN samples with hard labels scored 81.96 %, with the teacher's soft labels 83.68 % (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from shared.layout import teacher_key, teachers_prefix
from shared.progress import shifted
from shared.specs import Recipe, TargetRule, TrainSpec
from shared.storage import Storage
from worker.classifier import TEACHER_KIND, Classifier, classifiers_from_bytes, classifiers_to_bytes, train_classifier
from worker.data import ImageData


@dataclass(frozen=True)
class Teacher:
    members: list[Classifier]
    meta: dict[str, Any]  # how it was trained: members, width, steps, images, augmentation

    @torch.no_grad()
    def probs(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Class probabilities of uint8 IMAGES (N, C, H, W): the members' softmax outputs averaged, (N, K)."""
        chunks = []
        for start in range(0, max(len(images), 1), batch_size):  # no images: one empty batch, (0, K)
            batch = images[start : start + batch_size].cpu()
            chunks.append(torch.stack([F.softmax(member(batch), dim=1) for member in self.members]).mean(0))
        return torch.cat(chunks)

    def guidance_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """How far generated IMAGES (B, C, H, W) in [-1, 1] are from looking like their LABELS (B,) to the teacher:
        the members' mean cross-entropy, differentiable in IMAGES (the generator learns from it)."""
        losses = [F.cross_entropy(member.logits_of_float(images).float(), labels) for member in self.members]
        return torch.stack(losses).mean()

    def frozen(self, device: torch.device) -> Teacher:
        """The teacher on DEVICE, in eval mode, without gradients of its own: a fixed guide for a generator."""
        members = [member.to(device).eval().requires_grad_(False) for member in self.members]
        return Teacher(members, self.meta)


def sample_targets(rule: TargetRule, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The training targets (N, K) of synthetic samples generated for LABELS (N,), whose teacher probabilities are
    PROBS (N, K), by RULE (shared/specs.py TargetRule): the conditioning label, the teacher, or the label where the
    teacher's top class agrees with it and the teacher where it does not."""
    hard = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    if rule == "hard":
        return hard
    if rule == "teacher":
        return probs
    agrees = probs.argmax(1) == labels
    return torch.where(agrees[:, None], hard, probs)


def train_teacher(spec: TrainSpec, recipe: Recipe, data: ImageData, after_step: Callable[[int], None] = lambda step: None) -> Teacher:
    """The teacher of SPEC's RECIPE, trained on DATA (the job's real images), each member with its own seed and
    classic augmentation; AFTER_STEP is called after every classifier step with the steps done over all members, of
    ``recipe.teacher * recipe.teacher_steps`` (it may raise to cancel)."""
    size = spec.teacher_image_size(data.images.shape[-1])
    members = [
        train_classifier(data.images, data.labels, data.info.num_classes, steps=recipe.teacher_steps,
                         seed=spec.seed * 100 + member, augment=True, width=spec.teacher_width,
                         after_step=shifted(after_step, member * recipe.teacher_steps), image_size=size)
        for member in range(recipe.teacher)
    ]
    meta = {"members": len(members), "width": spec.teacher_width, "image_size": size, "steps": recipe.teacher_steps,
            "train_images": len(data),
            "augmentation": "random crop after 2-pixel padding and horizontal flip, per sample",
            "threads": torch.get_num_threads()}
    return Teacher(members, meta)


def ensure_teacher(
    spec: TrainSpec, recipe: Recipe, data: ImageData, storage: Storage, earlier: tuple[Teacher, str] | None,
    attempt: int = 0, after_step: Callable[[int], None] = lambda step: None, inherited: str | None = None,
) -> tuple[Teacher, str] | None:
    """The job's teacher and its key: None when its RECIPE has none; the job's it continues (INHERITED, its key);
    EARLIER, the one an earlier attempt at the job stored (:func:`find_teacher`), or the one stored by the job SPEC
    takes its teacher from, when it is the one this recipe trains on these images (training is seeded, so it would
    come out the same); else trained and stored as ATTEMPT's."""
    if recipe.teacher == 0:
        return None
    if inherited is not None:
        return load_teacher(storage, inherited), inherited
    wanted = {"members": recipe.teacher, "width": spec.teacher_width, "steps": recipe.teacher_steps, "train_images": len(data)}
    size = spec.teacher_image_size(data.images.shape[-1])

    def fits(stored: tuple[Teacher, str] | None) -> bool:
        # the size from the members' own config: teachers stored before it was recorded in their meta still fit
        return (stored is not None and all(stored[0].meta.get(name) == value for name, value in wanted.items())
                and stored[0].members[0].config.image_size == size)

    if fits(earlier):
        return earlier
    shared = find_teacher(storage, spec.teacher_from) if spec.teacher_from is not None else None
    if fits(shared):
        return shared
    teacher = train_teacher(spec, recipe, data, after_step)
    key = teacher_key(spec.job_id, attempt)
    storage.put_bytes(key, classifiers_to_bytes(TEACHER_KIND, teacher.members, teacher.meta))
    return teacher, key


def find_teacher(storage: Storage, job_id: str) -> tuple[Teacher, str] | None:
    """The teacher an attempt at training job JOB_ID stored, and its key; None when none did. A finished job's
    model card names its own (:func:`load_teacher`)."""
    keys = storage.list(teachers_prefix(job_id))
    return (load_teacher(storage, keys[0]), keys[0]) if keys else None


def load_teacher(storage: Storage, key: str) -> Teacher:
    members, meta = classifiers_from_bytes(TEACHER_KIND, storage.get_bytes(key))
    return Teacher(members, meta)
