"""The sweep's winner against today's defaults, on a real fleet, scored on the test split.

Starts a Redis, a SeaweedFS S3 gateway and ``--workers`` `augment worker` processes, submits `augment sweep` over
the space (the default space unless ``--param`` is given) with ``--budget`` GAN steps in all, and waits for it.
"Today's defaults" is the point of the space that `augment train` would choose by itself for this data; where that
trial stopped at an earlier rung it is continued (``--continues``) to the winner's steps, so both are trained to the
same final budget on the same seed. Both models then get `augment evaluate quality` and `augment evaluate utility
--model` (the augmentation study of each one's samples on its own training images, ``--study-seeds`` seeds) on the
test split: the only place the test split is touched. The last line is ``ratio=<defaults' test FID / winner's test
FID>`` (above 1: the winner is better).

    python benchmarks/sweep_vs_defaults.py [--dataset fashion-mnist] [--per-class 100] [--budget 18000]
        [--workers 2] [--image-size N] [--channels N] [--param FIELD=V1,V2 ...] [--select fid|...|utility]
        [--samples-per-class 1000] [--study-seeds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from producer.client import Client  # noqa: E402
from shared.datasets import locate_dataset, scan_image_folder  # noqa: E402
from shared.layout import report_markdown_key  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.specs import TrainSpec  # noqa: E402
from shared.storage import open_storage  # noqa: E402
from shared.sweeps import SweepSpec, describe, parse_space, steps_within  # noqa: E402
from tests.support.processes import WorkerProcess, service_env  # noqa: E402
from tests.support.servers import RedisServer, S3Server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--budget", type=int, default=18_000, help="GAN steps of the whole sweep")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--channels", type=int, default=None)
    parser.add_argument("--param", action="append", default=[], metavar="FIELD=V1,V2")
    parser.add_argument("--select", default=None, help="what the sweep ranks trials by (the sweep's default: fid)")
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--study-seeds", type=int, default=5, help="classifier seeds of each model's utility study")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds, so workers and servers are stopped

    base: dict[str, Any] = {"dataset": args.dataset, "per_class": args.per_class}
    base |= {name: value for name, value in (("image_size", args.image_size), ("channels", args.channels)) if value}
    fields: dict[str, Any] = {"base": base, "space": parse_space(args.param), "poll_s": 5.0}
    fields |= {"select": args.select} if args.select else {}
    fields["steps"] = steps_within(args.budget, {"job_id": "s-plan", **fields})

    with tempfile.TemporaryDirectory(prefix="sweep-vs-defaults-") as scratch, RedisServer() as redis_server, S3Server() as s3:
        env = service_env(redis_server.url, s3, f"s3://sweep-{uuid.uuid4().hex[:8]}")
        os.environ.update(env)
        client = Client.connect(Settings.from_env())
        # several workers on one host share its cores: a thread each per core, not a thread per core each (OpenMP
        # threads that wait for a busy core collapse a worker's speed, docs/operations.md "CPU threads")
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.workers))}
        workers = [WorkerProcess({**env, **threads}, Path(scratch) / f"worker-{index}.log").start()
                   for index in range(args.workers)]
        try:
            run(client, fields, args, [Path(scratch) / f"worker-{index}.log" for index in range(args.workers)])
        finally:
            for worker in workers:
                worker.kill()


def run(client: Client, fields: dict[str, Any], args: argparse.Namespace, logs: list[Path]) -> None:
    started = time.monotonic()
    spec = client.submit_sweep(**fields)
    print(f"sweep {spec.job_id}: {len(spec.settings)} trials, rungs {spec.rungs}, {spec.planned_steps():,} GAN steps "
          f"planned, {args.workers} workers", flush=True)
    final = client.wait(spec.job_id, poll_s=5.0, on_update=progress_printer())
    if final["state"] != "SUCCESS":
        raise SystemExit(f"the sweep ended {final['state']}: {final.get('error')}")
    sweep_s = time.monotonic() - started
    result = final["result"]
    busy = busy_seconds(logs, spec.job_id)
    print(f"workers busy with the sweep's jobs {busy:.0f} s of {args.workers} x {sweep_s:.0f} s: "
          f"{100 * (1 - busy / (args.workers * sweep_s)):.0f} % idle (the teacher's wait, the rungs' ends)", flush=True)
    print(f"\nsweep: {sweep_s / 60:.1f} min; winner trial {result['trial']} ({describe(result['settings'])}), "
          f"validation {result['select']} {result['value']:.2f} at step {result['step']}", flush=True)

    defaults = default_point(spec, client)
    trial = spec.settings.index(defaults)
    jobs = [job_id for rung in range(len(spec.rungs)) if client.store.get(job_id := spec.trial_job_id(trial, rung))]
    default_model = jobs[-1]
    if len(jobs) < len(spec.rungs):  # stopped at an earlier rung: on to the same budget
        continued = {**spec.trial_spec(trial, len(spec.rungs) - 1).to_dict(), "continues": jobs[-1]}
        for name in ("job_id", "version"):
            continued.pop(name)
        default_model = client.submit_train(**continued)
        print(f"defaults (trial {trial}: {describe(defaults)}) stopped at {spec.rungs[len(jobs) - 1]} "
              f"steps; continued to {spec.rungs[-1]} as {default_model}", flush=True)
        if client.wait(default_model, poll_s=5.0)["state"] != "SUCCESS":
            raise SystemExit(f"{default_model} did not finish")

    # all four at once: the fleet's workers take one each, as they would any user's evaluations
    models = {"winner": result["winner"], "defaults": default_model}
    quality = {name: client.submit_evaluate(mode="quality", model=model, samples_per_class=args.samples_per_class)
               for name, model in models.items()}
    utility = {name: client.submit_evaluate(mode="utility", model=model, holdout="test", seeds=args.study_seeds)
               for name, model in models.items()}
    scores = {name: evaluated(client, job, models[name]) for name, job in quality.items()}
    studies = {name: evaluated(client, job, models[name]) for name, job in utility.items()}

    print("\n| | settings | steps | test FID | precision | recall | label accuracy | CAS | GAN share (study, test) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, settings in (("sweep winner", result["settings"]), ("today's defaults", defaults)):
        key = "winner" if name == "sweep winner" else "defaults"
        score, study = scores[key], studies[key]
        print(f"| {name} | {describe(settings)} | {spec.steps:,} | {score['fid']:.1f} | {score['precision']:.3f} | "
              f"{score['recall']:.3f} | {score['label_accuracy']:.3f} | {score['cas']:.4f} | "
              f"{100 * study['gan_share']:+.2f} points ({study['best']}) |")
    # the studies' arms (mean +- std over the classifier seeds) say whether the two shares differ beyond the noise;
    # the run's store is gone when the script ends
    storage = open_storage(client.settings)
    for name, job in utility.items():
        print(f"\n## Utility study: {name} ({job})\n\n{storage.get_text(report_markdown_key(job))}")
    print(f"ratio={scores['defaults']['fid'] / scores['winner']['fid']:.3f}")


TASK_DONE = re.compile(r"Task augment\.(?:train|evaluate)\[(?P<job>[a-z0-9-]+)\] succeeded in (?P<seconds>[0-9.]+)s")


def busy_seconds(logs: list[Path], sweep_id: str) -> float:
    """Seconds the workers whose LOGS these are spent running the sweep's trial jobs (Celery logs each task's)."""
    return sum(float(match["seconds"]) for log in logs for match in TASK_DONE.finditer(log.read_text(errors="replace"))
               if match["job"].startswith(f"{sweep_id}-"))


def evaluated(client: Client, job: str, model: str) -> dict[str, Any]:
    """The result of evaluation JOB of MODEL, once it has ended."""
    scored = client.wait(job, poll_s=5.0)
    if scored["state"] != "SUCCESS":
        raise SystemExit(f"the evaluation {job} of {model} ended {scored['state']}: {scored.get('error')}")
    print(f"evaluation {job} of {model}: {scored['result']}", flush=True)
    return dict(scored["result"])


def default_point(spec: SweepSpec, client: Client) -> dict[str, Any]:
    """The point of SPEC's space that `augment train` chooses by itself for the sweep's data (its recipe's automatic
    choices: the small-data recipe below 10,000 images)."""
    train = TrainSpec.from_dict({"job_id": "t-defaults", **spec.base, "steps": spec.steps})
    info = locate_dataset(spec.dataset, client.settings)
    if train.per_class is not None:
        images = train.per_class * info.num_classes
    elif spec.dataset.startswith("imagefolder:"):
        images = len(scan_image_folder(spec.dataset, client.settings).split("train"))
    else:
        raise SystemExit("give --per-class: the default point is chosen for a known number of images")
    recipe = train.recipe(int(images * (1 - train.validation)), info.num_classes, 1)
    chosen = {**train.to_dict(), "diffaugment": ",".join(recipe.augmentations) or "none",
              "mode_seeking": recipe.mode_seeking, "guidance": recipe.guidance, "teacher": recipe.teacher}
    point = {name: chosen[name] for name in spec.search_space}
    if point not in spec.settings:
        raise SystemExit(f"the defaults ({describe(point)}) are not a point of the space; add them with --param")
    return point


def progress_printer() -> Any:
    last = [""]

    def show(status: dict[str, Any]) -> None:
        detail = (status.get("progress") or {}).get("done"), (status.get("progress") or {}).get("total")
        line = f"{status['state']} {detail[0]}/{detail[1]} trial jobs ended"
        if line != last[0]:
            print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)
            last[0] = line

    return show


if __name__ == "__main__":
    main()
