"""``augment``: submit GAN training and generation jobs, follow them, fetch their outputs.

Job ids go to stdout and everything else to stderr, so ``JOB=$(augment train ...)`` works.
Exit codes: 0 success, 1 job failed or a service is unreachable, 2 bad input (nothing enqueued), 3 cancelled.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from producer import demo as demo_defaults  # torch-free at import: the demo loads the worker when it runs
from producer.client import Client
from producer.failures import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, fail, handle_errors
from producer.follow import GIVE_UP_AFTER_S, follow, status_line
from producer.options import offered_names, spec_options
from shared.broker import EVALUATE_QUEUE, GENERATE_QUEUE, QUEUES, SWEEP_QUEUE, TRAIN_QUEUE
from shared.contracts import KINDS, kind_of
from shared.cpus import thread_environment, usable_cpus
from shared.datasets import DatasetNotFound
from shared.lifecycle import CANCELLED, FAILURE, SUCCESS
from shared.settings import Settings, SettingsError
from shared.specs import EvaluateSpec, GenerateSpec, SpecError, TrainSpec, check_job_id
from shared.storage import open_storage
from shared.sweeps import SET_BY_SWEEP, SweepSpec, parse_space, steps_within

F = TypeVar("F", bound=Callable[..., Any])


def connect() -> Client:
    return Client.connect(Settings.from_env())


def job_id_argument(command: F) -> F:
    def validate(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        try:
            return check_job_id(value)
        except SpecError:
            raise click.BadParameter(f"{value!r} is not a job id (3-64 characters of a-z, 0-9, '-')") from None

    return click.argument("job_id", metavar="JOB", callback=validate)(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Turn a small labelled image set into more training data with conditional GANs.

    Settings come from the environment: AUGMENT_BROKER_URL, AUGMENT_STORAGE_URL, AUGMENT_S3_ENDPOINT,
    AUGMENT_S3_ACCESS_KEY, AUGMENT_S3_SECRET_KEY, AUGMENT_S3_SECURE, AUGMENT_DATA_DIR (see the README).
    """


@main.command()
@spec_options(TrainSpec)
@handle_errors
def train(**options: Any) -> None:
    """Enqueue a GAN training job; prints the job id."""
    fields = {name: value for name, value in options.items() if value is not None}
    client = connect()
    job_id = client.submit_train(**fields)
    click.echo(f"submitted training job {job_id} on queue {TRAIN_QUEUE}", err=True)
    click.echo(job_id)


# the sweep's own options; every other option of `augment sweep` is a training setting its trials share
SWEEP_OPTIONS = ("trials", "steps", "min_steps", "eta", "select", "utility_seeds", "utility_steps", "sweep_seed", "poll_s")


@main.command()
@spec_options(TrainSpec, *(field for field in offered_names(TrainSpec) if field not in SET_BY_SWEEP))
@spec_options(SweepSpec, *SWEEP_OPTIONS)
@click.option("--param", "params", multiple=True, metavar="FIELD=V1,V2,...",
              help='A training setting to search and its values (repeatable), e.g. --param width=32,64; a JSON list for '
                   'values with commas: --param \'diffaugment=["translation,cutout","translation"]\'.')
@click.option("--space", "space_file", type=click.Path(dir_okay=False),
              help='A JSON file of settings to search, e.g. {"width": [32, 64]}; --param adds to it.')
@click.option("--budget", metavar="STEPS|TIME",
              help="GAN steps the whole sweep may train (e.g. 16000: --steps becomes the most whose plan fits, instead of "
                   "--steps), or a wall-clock bound (e.g. 90m, 2h): once it has passed, running trials are cancelled and "
                   "the sweep ranks what has ended.")
@handle_errors
def sweep(params: tuple[str, ...], space_file: str | None, budget: str | None, **options: Any) -> None:
    """Search the training recipe for a dataset: trials drawn from a space of settings train as ordinary training jobs
    over every worker; successive halving promotes the best 1/eta of each rung to eta times the steps, ranked by their
    validation curves. Without --param or --space it searches the default space (docs/training.md). Prints the job
    id; `augment report SWEEP` prints the leaderboard when it ends."""
    given = {name: value for name, value in options.items() if value is not None}
    base = {name: value for name, value in given.items() if name not in SWEEP_OPTIONS}
    sweep_fields = {"base": base, "space": parse_space(params, space_file),
                    **{name: value for name, value in given.items() if name in SWEEP_OPTIONS}}
    if budget is not None and (seconds := time_limit(budget)) is not None:
        sweep_fields["time_limit_s"] = seconds
    elif budget is not None:
        if not budget.isdigit() or int(budget) < 1:
            fail(f"--budget {budget!r} is neither GAN steps nor a time; give e.g. 16000, 90m or 2h", EXIT_BAD_INPUT)
        if "steps" in sweep_fields:
            fail("give --budget (the whole sweep's GAN steps) or --steps (its winner's), not both", EXIT_BAD_INPUT)
        sweep_fields["steps"] = steps_within(int(budget), {"job_id": "s-budget", **sweep_fields})
    spec = connect().submit_sweep(**sweep_fields)
    click.echo(f"submitted sweep {spec.job_id} on queue {SWEEP_QUEUE}: {len(spec.settings)} trials, rungs of "
               f"{', '.join(map(str, spec.rungs))} steps, {spec.planned_steps():,} GAN steps planned (a full grid: "
               f"{len(spec.settings) * spec.steps:,}); `augment report {spec.job_id}` when done", err=True)
    click.echo(spec.job_id)


TIME_UNITS = {"s": 1, "m": 60, "h": 3600}


def time_limit(text: str) -> float | None:
    """The seconds of a wall-clock budget such as 90m, 2h or 45s; None when TEXT is not one."""
    number, unit = text[:-1], text[-1:]
    try:
        return float(number) * TIME_UNITS[unit] if unit in TIME_UNITS and float(number) > 0 else None
    except ValueError:
        return None


def parse_class_counts(value: str | None) -> dict[str, int] | None:
    if not value:
        return None
    counts: dict[str, int] = {}
    for part in value.split(","):
        label, sep, number = part.partition("=")
        if not sep or not label.strip().isdigit() or not number.strip().isdigit():
            raise SpecError("generate", "class_counts", f"{part!r} is not CLASS=COUNT; use e.g. 0=500,3=200")
        counts[label.strip()] = int(number)
    return counts


@main.command()
@click.option("--model", required=True, metavar="TRAIN_JOB_ID", help="The job id printed by `augment train`.")
@click.option("--count", type=int, help="Images to generate (balanced over classes); required unless --rebalance.")
@click.option("--class-counts", help="Per-class counts instead of a balance, e.g. 0=500,3=200 (must add up to --count).")
@click.option("--rebalance", is_flag=True,
              help="Plan per-class counts from the model card that bring every class of its training set to its largest "
              "class (or --to), real plus synthetic; the manifest records the plan.")
@click.option("--to", "rebalance_to", type=click.IntRange(min=1), help="With --rebalance: images per class to reach.")
@spec_options(GenerateSpec, "shard_size", "seed", "noise_scale", "targets", "checkpoint")
@handle_errors
def generate(model: str, count: int | None, class_counts: str | None, rebalance: bool, rebalance_to: int | None,
             **options: Any) -> None:
    """Enqueue a generation job from a trained model; prints the job id."""
    if rebalance and (count is not None or class_counts):
        fail("--rebalance plans the counts itself; leave out --count and --class-counts", EXIT_BAD_INPUT)
    if rebalance_to is not None and not rebalance:
        fail("--to goes with --rebalance: add --rebalance, or give --count", EXIT_BAD_INPUT)
    if not rebalance and count is None:
        fail("give --count N (images to generate), or --rebalance to plan them from the model card", EXIT_BAD_INPUT)
    client = connect()
    fields = {name: value for name, value in options.items() if value is not None}
    if rebalance:
        job_id = client.submit_rebalance(model, rebalance_to, **fields)
    else:
        job_id = client.submit_generate(model=model, count=count, class_counts=parse_class_counts(class_counts), **fields)
    click.echo(f"submitted generation job {job_id} on queue {GENERATE_QUEUE}", err=True)
    click.echo(job_id)


@main.group()
def evaluate() -> None:
    """Measure a model's quality, or whether its samples help a classifier (prints the job id)."""


# what both evaluations take
COMMON_EVALUATE_OPTIONS = ("seed", "classifier_steps", "reference_steps", "test_limit", "inception_weights")


@evaluate.command("utility")
@spec_options(EvaluateSpec, "dataset", "model", "checkpoint", "per_class", "imbalance", "seeds", "gan_steps", "gan_width",
              "samples_per_class", "holdout", "validation_size", "arms", "sweep", "ratios", "synthetic_weights",
              "min_confidences", *COMMON_EVALUATE_OPTIONS)
@handle_errors
def evaluate_utility(**options: Any) -> None:
    """Does the GAN add anything? The same CNN on real images, + mixup (no GAN), + GAN samples (hard, teacher or
    per-sample chosen labels), and ceiling arms with real held-out images in the GAN's place. With --dataset, a GAN
    is trained on a small subset of it; with --model, that trained model's samples are studied on its own images."""
    submit_evaluation("utility", options)


def submit_evaluation(mode: str, options: dict[str, Any]) -> None:
    fields = {name: value for name, value in options.items() if value is not None}
    job_id = connect().submit_evaluate(mode=mode, **fields)
    click.echo(f"submitted {mode} evaluation {job_id} on queue {EVALUATE_QUEUE}; `augment report {job_id}` when done", err=True)
    click.echo(job_id)


@evaluate.command("quality")
@spec_options(EvaluateSpec, "model", "checkpoint", "dataset", "samples_per_class", *COMMON_EVALUATE_OPTIONS,
              required=("model",))
@handle_errors
def evaluate_quality(**options: Any) -> None:
    """FID, KID, precision/recall, per-class FID, classifier score and CAS of a model against the real test split."""
    submit_evaluation("quality", options)


@main.command()
@job_id_argument
@handle_errors
def report(job_id: str) -> None:
    """Print an evaluation's report (tables in markdown; `augment fetch` copies it with its charts)."""
    click.echo(connect().report(job_id))


@main.command()
@job_id_argument
@click.option("--json", "as_json", is_flag=True, help="Print the full status as JSON.")
@handle_errors
def status(job_id: str, as_json: bool) -> None:
    """Show a job's state and progress (or result)."""
    job = connect().status(job_id)
    if job is None:
        fail(f"no job {job_id}; `augment list` shows the known jobs", EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(job, indent=2, sort_keys=True, default=str))
        return
    click.echo(f"{job_id} ({job.get('kind', '?')}): {status_line(job)}")
    if job["state"] == SUCCESS:
        for name, value in (job.get("result") or {}).items():
            click.echo(f"  {name}: {value}")
    elif job["state"] == FAILURE:
        click.echo(f"  error: {job.get('error')}")
    elif job["state"] == CANCELLED:
        click.echo(f"  {(job.get('progress') or {}).get('reason', 'cancelled')}")


def exit_code_for(state: str) -> int:
    return {SUCCESS: 0, CANCELLED: EXIT_CANCELLED}.get(state, EXIT_FAILED)


@main.command()
@job_id_argument
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.option("--give-up-after", "give_up_after", type=click.FloatRange(min=0), default=GIVE_UP_AFTER_S, show_default=True,
              help="Seconds to keep reconnecting to a Redis that stopped answering before exiting with 1 (0: at once).")
@handle_errors
def watch(job_id: str, interval: float, give_up_after: float) -> None:
    """Follow a job live until it ends; exit 0 on success, 1 on failure, 3 when cancelled.

    If Redis stops answering while the job is watched (a restart, a failover, a network cut), watch keeps going:
    it says once that it is reconnecting, retries with backoff, and says when Redis is back. After --give-up-after
    seconds without it, it exits with 1 and a one-line error (the job does not need a watcher: watch it again
    later). A Redis that is down when watch starts is an error at once.
    """
    client = connect()
    if client.status(job_id) is None:
        fail(f"no job {job_id}; `augment list` shows the known jobs", EXIT_BAD_INPUT)
    final = follow(client, job_id, interval, give_up_after)
    if final["state"] == FAILURE:
        click.echo(f"job {job_id} failed: {final.get('error')}", err=True)
    elif final["state"] == SUCCESS:
        for name, value in (final.get("result") or {}).items():
            click.echo(f"  {name}: {value}", err=True)
    sys.exit(exit_code_for(final["state"]))


@main.command(name="list")
@click.option("--limit", type=int, default=50, show_default=True)
@handle_errors
def list_jobs(limit: int) -> None:
    """List recent jobs, newest first."""
    for job in connect().recent(limit):
        submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["submitted_at"]))
        click.echo(f"{job['job_id']}  {job['kind']:<8}  {job['state']:<9}  {submitted}")


@main.command()
@job_id_argument
@handle_errors
def cancel(job_id: str) -> None:
    """Cancel a queued or running job (a running job stops within seconds)."""
    client = connect()
    if client.status(job_id) is None:
        fail(f"no job {job_id}; `augment list` shows the known jobs", EXIT_BAD_INPUT)
    state = client.cancel(job_id)
    click.echo(f"cancellation requested for {job_id} (state now {state})", err=True)


@main.command()
@job_id_argument
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to copy into.")
@handle_errors
def fetch(job_id: str, out_dir: str) -> None:
    """Copy a job's outputs (model files or shards and manifest) from storage to a directory."""
    client = connect()
    record = client.store.get(job_id)
    storage = open_storage(client.settings)
    # a job this broker does not know may still have outputs: a model's, or a generation job's shards
    kinds = [kind_of(record.kind, record.spec)] if record else [KINDS["train"], KINDS["generate"]]
    for kind in kinds:
        written = storage.download_prefix(kind.prefix(job_id), out_dir)
        if written:
            click.echo(f"fetched {len(written)} files into {out_dir}", err=True)
            return
    fail(f"job {job_id} has no outputs in storage yet; `augment status {job_id}` shows where it is")


def worker_pool(queues: str, pool: str, concurrency: int | None) -> tuple[str, int]:
    """The Celery pool and concurrency a worker runs with. "auto" gives a worker that only generates two threads,
    so one shard uploads while the next samples (docs/operations.md, "Generation", has the figures); any worker
    that trains or evaluates runs one task at a time."""
    if pool == "auto":
        pool = "threads" if {name.strip() for name in queues.split(",")} == {GENERATE_QUEUE} else "solo"
    if concurrency is None:
        concurrency = 2 if pool == "threads" else 1
    if concurrency < 1:
        raise click.BadParameter(f"{concurrency} is not a number of tasks; use 1 or more", param_hint="--concurrency")
    if pool == "solo" and concurrency != 1:
        raise click.BadParameter("the solo pool runs one task at a time; use --pool threads for more", param_hint="--concurrency")
    return pool, concurrency


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default=",".join(QUEUES), show_default=True)
@click.option("--pool", type=click.Choice(["auto", "solo", "threads"]), default="auto", show_default=True,
              help="auto: threads for a worker that only generates, solo otherwise. No prefork: forking after torch "
                   "(and CUDA) initialise breaks CUDA in the children.")
@click.option("--concurrency", "-c", type=int, help="Tasks at once: 1 for solo, 2 for threads unless given.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str, pool: str, concurrency: int | None, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Start a worker (needs the `worker` extra: torch). Scale out by starting more of them."""
    try:
        Settings.from_env()
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    pool, concurrency = worker_pool(queues, pool, concurrency)
    for name, value in thread_environment(concurrency, usable_cpus()).items():
        os.environ.setdefault(name, value)  # read by torch's OpenMP when it loads, in the exec'd worker
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--queues", queues, "--pool", pool, "--concurrency", str(concurrency), "--loglevel", loglevel,
        # the pid survives exec, so several workers on one host get distinct names
        "--hostname", f"augment-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle",
        *celery_args,
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any other than 127.0.0.1, ::1 or localhost needs AUGMENT_DASHBOARD_TOKEN.")
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--allow-cancel", is_flag=True, help="Show a cancel button on running and queued jobs.")
@handle_errors
def dashboard(host: str, port: int, allow_cancel: bool) -> None:
    """Serve a read-only web dashboard of the jobs, their samples, curves, shards and reports, and the workers."""
    import uvicorn

    from producer.dashboard.app import build

    # a page that fails is logged with its traceback (uvicorn's own loggers stay at warning)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(host, allow_cancel)
    click.echo(f"dashboard at http://{host}:{port}/ (Ctrl-C stops it)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@main.command()
@click.option("--out", "out_dir", default="demo-output", show_default=True, type=click.Path(file_okay=False))
@click.option("--minutes", type=click.FloatRange(min=1.0, max=600.0), default=demo_defaults.MINUTES, show_default=True,
              help="Time budget of the whole demo; the GAN's steps are sized to fit it from a speed probe on this machine.")
@click.option("--per-class", type=click.IntRange(min=2), default=demo_defaults.PER_CLASS, show_default=True,
              help="Labelled real images of each class the GAN learns from (the small-data path).")
@click.option("--steps", type=click.IntRange(min=1), help="GAN training steps, instead of what the budget allows.")
@click.option("--count", type=click.IntRange(min=1), default=demo_defaults.COUNT, show_default=True,
              help="Synthetic images to generate.")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--width", type=click.IntRange(min=8, max=256), default=demo_defaults.WIDTH, show_default=True,
              help="The GAN's width.")
@click.option("--quality-steps", type=click.IntRange(min=1), default=demo_defaults.QUALITY_STEPS, show_default=True,
              help="Steps of the classifiers that score the model (augment evaluate's are 1,500 and 1,000).")
def demo(out_dir: str, minutes: float, per_class: int, steps: int | None, count: int, dataset: str, width: int,
         quality_steps: int) -> None:
    """Run the whole pipeline on this machine with no servers, in about --minutes: a small labelled set in, a
    teacher and a GAN trained on it, soft-labelled shards out, and their quality."""
    try:
        from producer.demo import run_demo
    except ImportError as exc:
        fail(f"the demo runs a worker in-process and needs torch ({exc.name} is missing); pip install '.[worker]'")
    try:
        run_demo(Path(out_dir), minutes=minutes, count=count, dataset=dataset, per_class=per_class, width=width, steps=steps,
                 quality_steps=quality_steps)
    except (SpecError, DatasetNotFound) as exc:
        fail(str(exc), EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
