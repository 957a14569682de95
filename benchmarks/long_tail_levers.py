"""Which GAN lever helps a classifier on a long tail? A screen on the validation split, never the test split.

The long-tail study's subset (Fashion-MNIST, 500 images of the commonest class down to 10 of the rarest, subset
seed 0) and its validation split (10,000 training images outside it). For each variant: the study's GAN
(``augment train``'s defaults plus the variant's overrides) and its teacher are trained on the subset, a pool of
10,000 samples is drawn with the variant's noise scale and class shares, and the study's GAN arms train the same
CNN, steps and seeds as ``augment evaluate utility``; every arm is scored plainly and with logit adjustment, by
balanced accuracy and the rarest third's. ``baselines`` runs the arms without the GAN once. Variants that share a
GAN reuse its checkpoint. Appends one JSON line per variant to OUT/results.jsonl (figures in points: mean, std,
rarest third's mean, std). docs/evaluation.md has the table this printed.

    python benchmarks/long_tail_levers.py OUT baselines,default,default-prior [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from shared.settings import Settings
from shared.specs import EvaluateSpec, TrainSpec
from shared.storage import FileStorage
from worker.augmentation_study import SMALL_CNN, ExperimentData, Outcome, Setting, run_sweep
from worker.checkpoint import load_model
from worker.data import load_dataset
from worker.evaluate import _gan_spec, _held_out
from worker.images import to_uint8
from worker.metrics import measure_quality
from worker.networks import Generator
from worker.reference import reference_classifier
from worker.teacher import load_teacher
from worker.train import run_training

# name: (the GAN's train-spec overrides, sampling noise scale, class shares of the pool); the GAN's name is the
# part before the first "-", so that "default-prior" samples the "default" GAN again
VARIANTS: dict[str, tuple[dict[str, Any], float, str]] = {
    "default": ({}, 1.0, "balanced"),
    "default-prior": ({}, 1.0, "prior"),
    "default-sqrt": ({}, 1.0, "sqrt"),
    "default-noise125": ({}, 1.25, "balanced"),
    "default-prior-mix": ({}, 1.0, "prior"),
    "translation": ({"diffaugment": "translation"}, 1.0, "balanced"),
    "translation-prior": ({"diffaugment": "translation"}, 1.0, "prior"),
    "translation-prior-mix": ({"diffaugment": "translation"}, 1.0, "prior"),
    "cb-prior": ({"class_balanced": True}, 1.0, "prior"),
    "cb-sqrt": ({"class_balanced": True}, 1.0, "sqrt"),
}
GAN_ARMS = [Setting("real + GAN, hard labels", "gan-hard", classic=True, extra=("gan_hard",)),
            Setting("real + GAN, teacher labels", "gan-soft", classic=True, extra=("gan_soft",))]
# "-mix" variants: half of the second batch mixup of real pairs, half GAN samples
MIXED_ARMS = [Setting("real + mixup + GAN, hard labels", "mix-hard", classic=True, extra=("mixup", "gan_hard")),
              Setting("real + mixup + GAN, teacher labels", "mix-soft", classic=True, extra=("mixup", "gan_soft"))]
BASELINE_ARMS = [Setting("real", "real", classic=True), Setting("mixup", "mixup", classic=True, extra=("mixup",))]
POOL = 10_000


@torch.no_grad()
def sample(generator: Generator, per_class: list[int], scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PER_CLASS[c] samples of each class c with noise scaled by SCALE, (N, C, H, W) uint8, and their labels."""
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(per_class)])
    noise = torch.randn(len(labels), generator.config.nz, generator=torch.Generator().manual_seed(seed)) * scale
    generator.eval()
    return torch.cat([to_uint8(generator(noise[i:i + 500], labels[i:i + 500])) for i in range(0, len(labels), 500)]), labels


def pool_counts(draw: str, prior: torch.Tensor) -> list[int]:
    """Samples per class in a pool of POOL: balanced, as the real subset's shares, or as their square roots."""
    share = {"balanced": torch.full_like(prior, 1 / len(prior)), "prior": prior, "sqrt": prior.sqrt() / prior.sqrt().sum()}[draw]
    return [max(1, round(float(value) * POOL)) for value in share]


def summary(outcome: Outcome, rare: list[int]) -> dict[str, list[float]]:
    def points(scored_mean: float) -> float:
        return round(100 * scored_mean, 2)

    result = {}
    for adjusted in (False, True):
        scored = outcome.scored(adjusted, rare)
        result["la" if adjusted else "plain"] = [points(scored.mean), points(scored.std), points(scored.rare_mean),
                                                 points(scored.rare_std)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("variants", help=f"comma-separated: baselines, {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    storage = FileStorage(args.out / "store")
    spec = EvaluateSpec.from_dict({"job_id": "screen", "mode": "utility", "dataset": "fashion-mnist", "per_class": 500,
                                   "imbalance": 50, "holdout": "validation", "seeds": args.seeds})
    subset = load_dataset("fashion-mnist", settings, "train", per_class=500, seed=0, imbalance=50.0)
    held_out, _ = _held_out(spec, settings, 28, 1)
    counts = torch.bincount(subset.labels, minlength=10)
    prior = counts.double() / counts.sum()
    rare = sorted(sorted(range(10), key=lambda label: int(counts[label]))[:3])
    names = list(subset.info.class_names)
    reference, _ = reference_classifier(storage, settings, "fashion-mnist", 28, 1, spec.reference_steps, 0)
    for name in args.variants.split(","):
        started = time.perf_counter()
        overrides, scale, draw = VARIANTS.get(name, ({}, 1.0, "balanced"))
        gan_id = f"gan-{name.split('-')[0] if name != 'baselines' else 'default'}"
        run_training(TrainSpec.from_dict({**_gan_spec(spec, gan_id).to_dict(), **overrides}), settings, storage)
        trained = time.perf_counter() - started
        generator, card = load_model(storage, gan_id, torch.device("cpu"))
        assert card.teacher is not None
        teacher = load_teacher(storage, card.teacher["key"])
        line: dict[str, Any] = {"variant": name}
        if name == "baselines":
            data = ExperimentData(subset.images, subset.labels, subset.images[:1], subset.labels[:1], held_out.images,
                                  held_out.labels, 10, teacher=teacher, extra_batch=SMALL_CNN["batch_size"])
            arms = BASELINE_ARMS
        else:
            images, labels = sample(generator, pool_counts(draw, prior), scale, 1)
            balanced, balanced_labels = sample(generator, [POOL // 10] * 10, scale, 1)
            quality = measure_quality(reference, held_out.images, held_out.labels, balanced, balanced_labels, names,
                                      "reference")
            line["quality"] = {
                "fid": round(quality.fid, 1), "precision": round(quality.precision, 3), "recall": round(quality.recall, 3),
                "label_acc": round(quality.label_accuracy, 3),
                "rare_fid": round(statistics.fmean(quality.per_class_fid[names[c]] for c in rare), 1),
                "rare_recall": round(statistics.fmean(quality.per_class_recall[names[c]] for c in rare), 3),
                "rare_label_acc": round(statistics.fmean(quality.per_class_label_accuracy[names[c]] for c in rare), 3),
            }
            data = ExperimentData(subset.images, subset.labels, images, labels, held_out.images, held_out.labels, 10,
                                  teacher=teacher, synthetic_probs=teacher.probs(images), extra_batch=SMALL_CNN["batch_size"])
            arms = MIXED_ARMS if name.endswith("-mix") else GAN_ARMS
        outcomes = run_sweep(data, arms, args.seeds, spec.classifier_steps)
        line |= {o.setting.arm: summary(o, rare) for o in outcomes}
        line |= {"train_s": round(trained), "seconds": round(time.perf_counter() - started)}
        with open(args.out / "results.jsonl", "a") as results:
            results.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
