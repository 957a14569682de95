"""Recipes against each other beyond one seed: each trained from scratch on every seed and scored on the test split.

A sweep ranks its trials on one seed; whether its winner beats another recipe (today's defaults) by more than the
seeds' spread takes more. Each ``--recipe NAME=JSON`` (train spec fields over the base ``--dataset``,
``--per-class``, ``--steps``) is trained on each of ``--seeds`` (a seed also draws the job's subset, validation
split and teacher) through ``run_training`` in this one process, then scored by the quality evaluation
(``run_quality``: FID, precision, recall, label accuracy and CAS on the test split, the only place it is touched). The
recipes of one seed share that seed's teacher when their teacher settings agree, as a sweep's trials do. Storage is
``--out`` (a directory that already holds the dataset's reference classifier skips training it). The last line is
``ratio=<the second recipe's mean test FID / the first's>`` (above 1: the first is better).

    python benchmarks/recipe_seeds.py --recipe 'winner={"diffaugment": "translation", "mode_seeking": 0.3}' \\
        --recipe 'defaults={}' [--dataset fashion-mnist] [--per-class 100] [--steps 2771] [--seeds 1,2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import uuid
from typing import Any

from shared.settings import Settings
from shared.spec_base import SpecError
from shared.specs import EvaluateSpec, TrainSpec
from shared.storage import FileStorage
from worker.evaluate import run_quality
from worker.train import run_training

METRICS = ("fid", "precision", "recall", "label_accuracy", "cas")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME=JSON", help="at least two")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2771)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--out", default=None, help="storage directory, kept (default: a temporary one)")
    args = parser.parse_args()
    recipes = dict(parse_recipe(text) for text in args.recipe)
    if len(recipes) < 2:
        parser.error("give at least two --recipe, with different names")
    seeds = [int(part) for part in args.seeds.split(",") if part]
    if not seeds:
        parser.error("give --seeds, e.g. 1,2")
    storage, settings = FileStorage(args.out or tempfile.mkdtemp(prefix="recipe-seeds-")), Settings.from_env()
    tag = uuid.uuid4().hex[:6]

    def train_spec(name: str, seed: int, teacher_from: str | None) -> TrainSpec:
        return TrainSpec.from_dict({"dataset": args.dataset, "per_class": args.per_class, "steps": args.steps,
                                    **recipes[name], "job_id": f"r-{tag}-{name}-{seed}", "seed": seed,
                                    "teacher_from": teacher_from})

    for name in recipes:  # a bad field fails now, not after the recipes before it have trained
        try:
            train_spec(name, seeds[0], None)
        except SpecError as error:
            raise SystemExit(f"--recipe {name}: {error}") from None

    scores: dict[str, list[dict[str, float]]] = {name: [] for name in recipes}
    for seed in seeds:
        first_job: str | None = None
        for name in recipes:
            spec = train_spec(name, seed, first_job)
            job_id = spec.job_id
            run_training(spec, settings, storage)
            first_job = first_job or job_id
            quality = run_quality(EvaluateSpec.from_dict({"job_id": f"q-{job_id}", "mode": "quality", "model": job_id,
                                                          "samples_per_class": args.samples_per_class}),
                                  settings, storage)
            scores[name].append({metric: float(getattr(quality, metric)) for metric in METRICS})
            print(f"{name} seed {seed}: " + ", ".join(f"{metric} {scores[name][-1][metric]:.3f}" for metric in METRICS),
                  flush=True)

    print(f"\n| test split, mean +- std over seeds {args.seeds} | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, runs in scores.items():
        print(f"| {name} | " + " | ".join(spread([run[metric] for run in runs]) for metric in METRICS) + " |")
    first, second = (statistics.mean(run["fid"] for run in scores[name]) for name in list(recipes)[:2])
    print(f"ratio={second / first:.3f}")


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    name, _, fields = text.partition("=")
    try:
        parsed = json.loads(fields)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--recipe {text!r}: not NAME=JSON ({error}); e.g. 'winner={{\"mode_seeking\": 0.3}}'") from None
    if not name or not isinstance(parsed, dict):
        raise SystemExit(f"--recipe {text!r}: not NAME=JSON object; e.g. 'winner={{\"mode_seeking\": 0.3}}'")
    return name, parsed


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {deviation:.3f}"


if __name__ == "__main__":
    main()
