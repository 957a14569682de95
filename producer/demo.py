"""``augment demo``: the whole pipeline in one process, with no servers.

The broker is Celery's in-process ``memory://`` transport and storage is ``file://``; a real Celery worker runs
in a thread of this process, so the demo exercises the same tasks, specs and storage code as a fleet does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from producer.client import Client
from producer.follow import follow
from shared.jobs import SUCCESS
from shared.settings import Settings

# Enough samples for stable precision and recall, few enough that scoring takes well under a minute on a CPU.
QUALITY_SAMPLES_PER_CLASS = 200


def _follow(client: Client, job_id: str) -> dict[str, Any]:
    final = follow(client, job_id, poll_s=1.0)
    if final["state"] != SUCCESS:
        raise click.ClickException(f"job {job_id} ended {final['state']}: {final.get('error', '')}")
    return final


def run_demo(out_dir: Path, steps: int, count: int, dataset: str, quality_steps: int | None = None) -> None:
    out = out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The worker's app reads its settings at import, so the environment is set before that import.
    os.environ["AUGMENT_BROKER_URL"] = "memory://"
    os.environ["AUGMENT_STORAGE_URL"] = out.as_uri()
    settings = Settings.from_env()

    from celery.contrib.testing.worker import start_worker

    from worker.app import app

    client = Client.connect(settings, app=app)
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=60):
        click.echo(f"demo: training a conditional DCGAN on {dataset} for {steps} steps (CPU: a few minutes)", err=True)
        # width 64 (the default): width 32 measured FID 190 / recall 0.02 in the same time class as 64's 90 / 0.23
        train_id = client.submit_train(dataset=dataset, steps=steps, log_every=25)
        trained = _follow(client, train_id)
        click.echo(f"demo: generating {count} labelled images from model {train_id}", err=True)
        generate_id = client.submit_generate(model=train_id, count=count, shard_size=1000)
        generated = _follow(client, generate_id)
        click.echo(f"demo: measuring the model's quality against the real {dataset} test split", err=True)
        budget = {} if quality_steps is None else {"reference_steps": quality_steps, "classifier_steps": quality_steps}
        evaluate_id = client.submit_evaluate(mode="quality", model=train_id, samples_per_class=QUALITY_SAMPLES_PER_CLASS, **budget)
        quality = _follow(client, evaluate_id)["result"]

    click.echo("demo: done. Everything is under " + str(out), err=True)
    click.echo(f"  model checkpoint : {trained['result']['checkpoint']}", err=True)
    click.echo(f"  model card       : {trained['result']['model_card']}", err=True)
    click.echo(f"  real | generated : {trained['result']['grid']}", err=True)
    click.echo(f"  shards manifest  : {generated['result']['manifest']} ({generated['result']['images']} images)", err=True)
    click.echo(f"  quality report   : {quality['report']}", err=True)
    click.echo(f"demo: quality: FID {quality['fid']:.1f}, precision {quality['precision']:.3f}, recall {quality['recall']:.3f}, "
               f"label accuracy {quality['label_accuracy']:.3f}, CAS {quality['cas']:.3f} "
               "(in the feature space of a classifier trained on the real training split; lower FID, higher others are better)",
               err=True)
