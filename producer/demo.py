"""``augment demo``: the whole pipeline in one process, with no servers, on a time budget.

The broker is Celery's in-process ``memory://`` transport and storage is ``file://``; a real Celery worker runs
in a thread of this process, so the demo exercises the same tasks, specs and storage code as a fleet does.

It shows what the product is for: a small labelled set in (PER_CLASS images of each class), the small-data recipe
(a teacher, then a GAN it guides), labelled shards with the teacher's soft labels out, and their quality. The GAN's
step budget is sized from a throughput probe on this machine (:mod:`worker.budget`) so that the whole run fits.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import click

from producer.client import Client
from producer.follow import follow
from shared.contracts import GenerateResult, QualityResult, Result, TrainResult
from shared.lifecycle import SUCCESS
from shared.progress import format_duration
from shared.settings import Settings

# Enough samples for stable precision and recall, few enough that scoring takes well under a minute on a CPU.
QUALITY_SAMPLES_PER_CLASS = 200
PER_CLASS = 100  # the small labelled set: 1,000 Fashion-MNIST images, the size the evaluation docs measure
# Loading the splits, the metrics' features and k-NN, and the in-process worker's overheads (docs/benchmarks.md)
FIXED_S = 30.0
# Below this a GAN draws noise; the small-data recipe's own budget is the most the demo trains
MIN_GAN_STEPS = 300
# A 5-minute budget on a 2-core CPU cannot hold the full recipe's teacher nor augment evaluate's scoring classifiers
# beside a GAN worth looking at (docs/benchmarks.md has their times)
TEACHER_STEPS = 300
QUALITY_STEPS = 500
WIDTH = 64
MINUTES = 5.0  # the demo's whole time budget
COUNT = 10_000  # synthetic images it generates
R = TypeVar("R", bound=Result)


def _follow(client: Client, job_id: str, kind: type[R]) -> R:
    final = follow(client, job_id, poll_s=1.0)
    if final["state"] != SUCCESS:
        raise click.ClickException(f"job {job_id} ended {final['state']}: {final.get('error', '')}")
    result = client.finished(job_id, final.get("result"))
    assert isinstance(result, kind), result
    return result


def run_demo(out_dir: Path, minutes: float, count: int, dataset: str, per_class: int = PER_CLASS, width: int = WIDTH,
             steps: int | None = None, quality_steps: int = QUALITY_STEPS) -> None:
    started = time.perf_counter()
    out = out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The worker's app reads its settings at import, so the environment is set before that import.
    os.environ["AUGMENT_BROKER_URL"] = "memory://"
    os.environ["AUGMENT_STORAGE_URL"] = out.as_uri()
    settings = Settings.from_env()

    from celery.contrib.testing.worker import start_worker

    from shared.layout import reference_key
    from shared.specs import SMALL_DATA_STEPS, VALIDATION_POINTS, TrainSpec
    from shared.storage import open_storage
    from worker.app import app
    from worker.budget import measure_rates, plan_budget
    from worker.data import load_dataset
    from worker.gan_step import resolve_precision
    from worker.train import job_recipe, pick_device

    # the training job trains the reference classifier its validation curve measures in; the evaluation reuses it
    train_fields: dict[str, Any] = {"dataset": dataset, "per_class": per_class, "width": width, "log_every": 25,
                                    "teacher_steps": TEACHER_STEPS, "reference_steps": quality_steps}
    probe = TrainSpec(job_id="t-demo-probe", **train_fields)
    data = load_dataset(dataset, settings, "train", per_class=per_class, seed=probe.seed)
    recipe = job_recipe(probe, data)
    reference_stored = open_storage(settings).exists(reference_key(dataset, data.images.shape[-1], data.images.shape[1],
                                                                    quality_steps))
    click.echo(f"demo: measuring this machine's training speed ({os.cpu_count()} CPU cores, "
               f"{resolve_precision(probe, pick_device())})", err=True)
    # in a thread, as the in-process worker below runs its tasks: torch's steps there measured slower than the same
    # steps in the main thread (docs/benchmarks.md, the demo)
    with ThreadPoolExecutor(1, thread_name_prefix="probe") as prober:
        rates = prober.submit(measure_rates, probe, settings).result()
    # a curve of the default spacing has at most VALIDATION_POINTS measurements and the last step's
    plan = plan_budget(60 * minutes, rates, recipe.teacher * recipe.teacher_steps, 0 if reference_stored else quality_steps,
                       quality_steps, count, FIXED_S, MIN_GAN_STEPS, SMALL_DATA_STEPS,
                       VALIDATION_POINTS + 1 if recipe.validate_every else 0, time.perf_counter() - started)
    gan_steps = steps or plan.gan_steps
    # what the job will run: below TEACHER_STEPS GAN steps (a smoke run), the teacher trains as long as the GAN
    train_fields |= {"steps": gan_steps, "teacher_steps": min(TEACHER_STEPS, gan_steps)}
    recipe = job_recipe(TrainSpec(job_id="t-demo-probe", **train_fields), data)
    click.echo(
        f"demo: {len(data)} labelled {dataset} images ({per_class} per class) in. A teacher of {recipe.teacher} classifiers "
        f"({recipe.teacher_steps} steps each) learns them, then a conditional DCGAN trains for {gan_steps} steps "
        f"({rates.gan:.1f} steps/s here) with mode seeking {recipe.mode_seeking:g} and the teacher's guidance "
        f"{recipe.guidance:g}; {count} generated images go into shards with the teacher's soft labels, and are scored "
        f"against the real test split.", err=True)
    expected = plan.total_s if steps is None else plan.total_s + (gan_steps - plan.gan_steps) / rates.gan
    stages = ", ".join(f"{name} {format_duration(seconds)}" for name, seconds in plan.seconds.items() if seconds >= 1)
    click.echo(f"demo: expected to take about {format_duration(expected)} (budget {format_duration(60 * minutes)}: {stages})",
               err=True)

    client = Client.connect(settings, app=app)
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=60):
        train_id = client.submit_train(**train_fields)
        trained = _follow(client, train_id, TrainResult)
        click.echo(f"demo: generating {count} labelled images from model {train_id}", err=True)
        generate_id = client.submit_generate(model=train_id, count=count, shard_size=1000)
        generated = _follow(client, generate_id, GenerateResult)
        click.echo(f"demo: measuring the model's quality against the real {dataset} test split", err=True)
        evaluate_id = client.submit_evaluate(mode="quality", model=train_id, samples_per_class=QUALITY_SAMPLES_PER_CLASS,
                                             reference_steps=quality_steps, classifier_steps=quality_steps)
        quality = _follow(client, evaluate_id, QualityResult)

    took = time.perf_counter() - started
    click.echo(f"demo: done in {format_duration(took)} (budget {format_duration(60 * minutes)}). Everything is under {out}", err=True)
    # generation sampled from the best checkpoint on the validation curve (the last one when there is no curve)
    click.echo(f"  model checkpoint : {trained.best_checkpoint or trained.checkpoint}", err=True)
    click.echo(f"  model card       : {trained.model_card}", err=True)
    click.echo(f"  real | generated : {trained.grid}", err=True)
    click.echo(f"  shards manifest  : {generated.manifest} ({generated.images} images)", err=True)
    click.echo(f"  quality report   : {quality.report}", err=True)
    # the interpreter that has this project installed: a bare "python" may be another one
    click.echo(f"  read the shards  : AUGMENT_STORAGE_URL={out.as_uri()} {sys.executable} -c \"from shared.reader import "
               f"SyntheticJob; s = next(iter(SyntheticJob.open('{generate_id}'))); print(s.label, s.probs, s.image.shape)\"",
               err=True)
    click.echo("  on a fleet       : start redis-server and `augment worker`, submit with `augment train`, and "
               "`augment dashboard` shows every job live at http://127.0.0.1:8765", err=True)
    click.echo(f"demo: quality: FID {quality.fid:.1f}, precision {quality.precision:.3f}, recall {quality.recall:.3f}, "
               f"label accuracy {quality.label_accuracy:.3f}, CAS {quality.cas:.3f} "
               "(in the feature space of a classifier trained on the real training split; lower FID, higher others are better)",
               err=True)
