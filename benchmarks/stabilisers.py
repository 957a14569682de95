"""Which stabilisers help on little data? Trains one conditional GAN per setting and scores each the same way.

Every setting trains on the same Fashion-MNIST subset (PER_CLASS images of each class) for the same number of
steps; then 100 samples per class are scored against the real test split in the feature space of a classifier
trained on the full real training split: FID (torchmetrics) and the classifier's accuracy on the samples'
intended labels (does the image show the class it was asked for?). Prints a markdown table.

    python benchmarks/stabilisers.py [--per-class 100] [--steps 1500] [--width 32] [--only 1,11] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from shared.settings import Settings
from shared.specs import TrainSpec
from shared.storage import FileStorage
from worker import checkpoint
from worker.classifier import FEATURE_SPACE, FeatureExtractor, accuracy, train_classifier
from worker.data import load_dataset
from worker.images import to_uint8
from worker.metrics import frechet_distance
from worker.train import run_training

SEED_RECIPE = dict(loss="bce", spectral_norm=False, conditioning="concat", diffaugment="none", ema=0.0, precision="fp32")
# The settings measured before the small-data recipe existed leave its levers off, so that their rows keep meaning
# what docs/training.md's first table says; "the spec defaults" has them all.
WITHOUT_SMALL_DATA_LEVERS = dict(mode_seeking=0.0, teacher=0)
DEFAULTS = "the spec defaults"
SETTINGS: dict[str, dict] = {
    "seed recipe (bce, concat)": SEED_RECIPE,
    "+ hinge, spectral norm, projection": dict(SEED_RECIPE, loss="hinge", spectral_norm=True, conditioning="projection"),
    "+ DiffAugment translation,cutout": dict(loss="hinge", spectral_norm=True, conditioning="projection",
                                             diffaugment="translation,cutout", ema=0.0),
    "+ EMA 0.999": dict(loss="hinge", spectral_norm=True, conditioning="projection", diffaugment="translation,cutout",
                        ema=0.999),
    "previous + grad clip 1.0": dict(loss="hinge", spectral_norm=True, conditioning="projection",
                                     diffaugment="translation,cutout", ema=0.999, grad_clip=1.0),
    "previous with bce loss": dict(loss="bce", spectral_norm=True, conditioning="projection",
                                   diffaugment="translation,cutout", ema=0.999),
    "seed recipe + EMA 0.999": dict(SEED_RECIPE, ema=0.999),
    "seed recipe + DiffAugment translation,cutout": dict(SEED_RECIPE, diffaugment="translation,cutout"),
    "seed recipe + DiffAugment + EMA": dict(SEED_RECIPE, diffaugment="translation,cutout", ema=0.999),
    "seed recipe + projection D (no spectral norm)": dict(SEED_RECIPE, conditioning="projection"),
    "seed recipe in bf16 autocast": dict(SEED_RECIPE, precision="bf16"),
    "+ mode seeking 1": dict(SEED_RECIPE, diffaugment="translation,cutout", mode_seeking=1.0),
    DEFAULTS: {},
}


@torch.no_grad()
def sample(state: dict, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = checkpoint.generator_from_state(state)
    labels = torch.arange(generator.config.num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), generator.config.nz, generator=torch.Generator().manual_seed(seed))
    return to_uint8(generator(noise, labels)), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--only", help="comma list of setting numbers to run (1-based)")
    parser.add_argument("--seeds", default="1", help="comma list of training seeds; each setting runs once per seed")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    settings = Settings.from_env()
    train = load_dataset("fashion-mnist", settings, "train")
    test = load_dataset("fashion-mnist", settings, "test")
    started = time.perf_counter()
    classifier = train_classifier(train.images, train.labels, 10, steps=args.classifier_steps)
    extractor = FeatureExtractor(classifier)
    print(f"reference classifier: test accuracy {accuracy(classifier, test.images, test.labels):.3f} "
          f"({time.perf_counter() - started:.0f} s); feature space: {FEATURE_SPACE}")
    real = test.images[:2000]
    floor = frechet_distance(extractor, real, test.images[2000:4000])
    print(f"FID of real test images against other real test images (the floor): {floor:.2f}\n")
    print(f"Fashion-MNIST, {args.per_class} real images per class, {args.steps} steps, width {args.width}, batch 64\n")
    print("| setting | FID (lower is better) | label accuracy of samples | train s |")
    print("|---|---|---|---|")
    storage = FileStorage(tempfile.mkdtemp(prefix="stabilisers-"))
    chosen = {int(n) for n in args.only.split(",")} if args.only else None
    for number, (name, overrides) in enumerate(SETTINGS.items(), start=1):
        if chosen and number not in chosen:
            continue
        for seed in [int(value) for value in args.seeds.split(",")]:
            spec = TrainSpec(job_id=f"s-{number}-{seed}", dataset="fashion-mnist", per_class=args.per_class,
                             steps=args.steps, width=args.width, seed=seed, log_every=500, checkpoint_every=10**6,
                             sample_every=10**6, **(overrides if name == DEFAULTS else {**WITHOUT_SMALL_DATA_LEVERS, **overrides}))
            started = time.perf_counter()
            run_training(spec, settings, storage)
            seconds = time.perf_counter() - started
            state = checkpoint.load(storage, spec.job_id)
            assert state is not None
            fake, labels = sample(state, 200, seed=1)
            fid = frechet_distance(extractor, real, fake)
            print(f"| {name} (seed {seed}) | {fid:.2f} | {accuracy(classifier, fake, labels):.3f} | {seconds:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
