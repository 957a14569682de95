"""Does a training job's best checkpoint beat its last one, and what does measuring the curve cost?

Trains one job per seed through ``run_training`` (the worker's own function, with its validation split and curve)
on a labelled subset, then scores the best and the last checkpoint the same way on the real test split: FID in the
reference classifier's feature space (evaluations' default) and label accuracy, 500 samples per class. The test
split is touched here only, for this final table; the job chose its best on its validation split. Each seed's row
is printed as it finishes (a markdown table), then the means and standard deviations; the last line is
``ratio=<time spent measuring / time spent training the GAN>``.

    python benchmarks/validation_curve.py [--dataset fashion-mnist] [--per-class 100] [--seeds 0,1,2,3,4]
        [--steps N] [--width 64] [--image-size 28] [--channels 1] [--set FIELD=VALUE ...] [--out DIR]

``--set`` gives any other train-spec field (JSON values), e.g. ``--set diffaugment='"translation,cutout,color"'``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import torch

from shared.models import read_card
from shared.settings import Settings
from shared.specs import REFERENCE_STEPS, TrainSpec
from shared.storage import FileStorage
from worker import validation
from worker.checkpoint import load_model
from worker.classifier import FeatureExtractor, accuracy
from worker.data import load_dataset
from worker.evaluate import sample_balanced
from worker.metrics import frechet_distance
from worker.reference import reference_classifier
from worker.train import TrainHooks, run_training

SAMPLES_PER_CLASS = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=None, help="GAN steps (default: augment train's)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="another train-spec field, its value as JSON")
    parser.add_argument("--tag", default="curve", help="job ids are b-TAG-SEED")
    parser.add_argument("--out", default=None, help="storage directory, kept (default: a temporary one)")
    args = parser.parse_args()
    storage = FileStorage(args.out or tempfile.mkdtemp(prefix="validation-curve-"))
    settings = Settings.from_env()

    measuring = [0.0]
    measure = validation.Validator.measure

    def timed(self: validation.Validator, sampler: Any, step: int) -> Any:
        started = time.perf_counter()
        try:
            return measure(self, sampler, step)
        finally:
            measuring[0] += time.perf_counter() - started

    validation.Validator.measure = timed  # type: ignore[method-assign]
    rows: list[dict[str, Any]] = []
    stages_end = [0.0]  # when the stages before the GAN (reference, teacher) last reported
    hooks = TrainHooks(stage=lambda info: stages_end.__setitem__(0, time.perf_counter()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| seed | steps | best step | val FID best / last | test FID best | test FID last | label acc best | "
          "label acc last | GAN+curve s | measuring s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in [int(seed) for seed in args.seeds.split(",")]:
        fields = {name: value for name, value in (("steps", args.steps), ("width", args.width),
                                                   ("image_size", args.image_size), ("channels", args.channels))
                  if value is not None}
        fields |= {name: json.loads(value) for name, _, value in (pair.partition("=") for pair in args.set)}
        spec = TrainSpec(job_id=f"b-{args.tag}-{seed}", dataset=args.dataset, per_class=args.per_class, seed=seed, **fields)
        measuring[0] = 0.0
        stages_end[0] = time.perf_counter()
        run_training(spec, settings, storage, hooks)
        gan_s = time.perf_counter() - stages_end[0]
        card = read_card(storage, spec.job_id)
        test = load_dataset(args.dataset, settings, "test", image_size=card.image_size, channels=card.channels)
        reference, _ = reference_classifier(storage, settings, args.dataset, card.image_size, card.channels,
                                            REFERENCE_STEPS)
        scores = {}
        for which in ("best", "last"):
            generator, _ = load_model(storage, spec.job_id, torch.device("cpu"), which)
            fake, labels = sample_balanced(generator, SAMPLES_PER_CLASS, seed=1000 + seed)
            scores[which] = (frechet_distance(FeatureExtractor(reference), test.images, fake),
                             accuracy(reference, fake, labels))
        curve = card.curve
        row = {"seed": seed, "steps": card.steps, "best_step": card.best["step"] if card.best else card.steps,
               "val_best": card.best["fid"] if card.best else float("nan"), "val_last": curve[-1]["fid"],
               "fid_best": scores["best"][0], "fid_last": scores["last"][0],
               "acc_best": scores["best"][1], "acc_last": scores["last"][1], "gan_s": gan_s, "measuring_s": measuring[0]}
        rows.append(row)
        print(f"| {seed} | {row['steps']} | {row['best_step']} | {row['val_best']:.1f} / {row['val_last']:.1f} | "
              f"{row['fid_best']:.2f} | {row['fid_last']:.2f} | {row['acc_best']:.3f} | {row['acc_last']:.3f} | "
              f"{gan_s:.0f} | {measuring[0]:.0f} |", flush=True)
        print("curve:", " ".join(f"{point['step']}:{point['fid']:.1f}" for point in curve), flush=True)

    def spread(name: str) -> str:
        values = [row[name] for row in rows]
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}"

    not_last = sum(row["best_step"] != row["steps"] for row in rows)
    print(f"\nbest is not the last in {not_last} of {len(rows)} seeds")
    print(f"test FID best {spread('fid_best')}, last {spread('fid_last')}; "
          f"label accuracy best {spread('acc_best')}, last {spread('acc_last')}")
    share = sum(row["measuring_s"] for row in rows) / sum(row["gan_s"] - row["measuring_s"] for row in rows)
    print(f"ratio={share:.4f}")


if __name__ == "__main__":
    main()
