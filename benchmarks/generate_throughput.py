"""Generation throughput: the generator's raw forward pass against images landed in storage by a real job.

One process starts a real Redis, a SeaweedFS S3 server and one ``augment worker`` process (tests/support/servers.py,
tests/processes.py), puts a freshly initialised generator of the asked size into storage (weights do not change
the speed), then measures on the same device:

- raw: images/s of ``generator(noise, labels)`` alone, in batches of the job's batch size;
- landed: images/s of a generate job from submission to its manifest (sampling, PNG encoding, tar, upload,
  the shard tasks and the finaliser), with one worker;
- shard-task overhead: median time between a shard finishing on the worker and the next one starting, and the
  first shard's wait from enqueue to start;
- the worker's peak RSS (VmHWM) for the job, with ``--rss-counts`` for several job sizes on fresh workers.

The last line is ``ratio=<landed/raw>``.

    python benchmarks/generate_throughput.py [--count 20000] [--shard-size 1000] [--repeat 3] [--rss-counts 10000,200000]
        [--worker-options '--pool solo']
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from producer.client import Client  # noqa: E402
from shared.broker import redis_client  # noqa: E402
from shared.records import RedisJobStore  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.specs import TrainSpec  # noqa: E402
from shared.storage import open_storage  # noqa: E402
from tests.support.processes import WorkerProcess, service_env  # noqa: E402
from tests.support.servers import RedisServer, S3Server  # noqa: E402
from worker.checkpoint import load_model  # noqa: E402
from worker.train import pick_device, run_training  # noqa: E402


def raw_images_per_s(generator: torch.nn.Module, count: int, batch: int, device: torch.device) -> float:
    config = generator.config  # type: ignore[attr-defined]
    noise = torch.randn(count, config.nz, device=device)
    labels = torch.arange(count, device=device) % config.num_classes if config.conditional else None
    with torch.no_grad():
        generator(noise[:batch], labels[:batch] if labels is not None else None)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for offset in range(0, count, batch):
            images = generator(noise[offset : offset + batch], labels[offset : offset + batch] if labels is not None else None)
            images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()  # to host bytes, as a job must
        if device.type == "cuda":
            torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_job(env: dict[str, str], model: str, count: int, shard_size: int, log_dir: Path, options: list[str]) -> dict[str, float]:
    """A fresh worker process runs one generate job; returns landed images/s, overheads and its peak RSS."""
    os.environ.update(env)
    settings = Settings.from_env()
    worker = WorkerProcess(env, log_dir / f"worker-{uuid.uuid4().hex[:6]}.log", "generate", *options).start()
    try:
        client = Client.connect(settings)
        started = time.perf_counter()
        job_id = client.submit_generate(model=model, count=count, shard_size=shard_size, seed=0)
        final = client.wait(job_id, poll_s=0.05)
        elapsed = time.perf_counter() - started
        if final["state"] != "SUCCESS":
            raise SystemExit(f"job {job_id} ended {final['state']}: {final.get('error')}\n{worker.log_tail()}")
        rss = peak_rss_mib(worker.pid)
    finally:
        worker.kill()
    records = sorted(RedisJobStore(redis_client(settings)).shard_records(job_id).values(), key=lambda r: r.started_at or 0.0)
    gaps = [(later.started_at or 0.0) - (earlier.finished_at or 0.0) for earlier, later in zip(records, records[1:], strict=False)]
    return {
        "landed": count / elapsed,
        "gap_ms": 1000 * statistics.median(gaps) if gaps else float("nan"),
        "first_wait_ms": 1000 * ((records[0].started_at or 0.0) - (records[0].queued_at or 0.0)),
        "rss_mib": rss,
    }


def figures(values: Iterable[float]) -> str:
    return ", ".join(f"{value:.0f}" for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=28, choices=[28, 32, 64])
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rss-counts", default="", help="comma list of job sizes to measure the worker's peak RSS at")
    parser.add_argument("--worker-options", default="--pool threads --concurrency 2",
                        help="the worker's options; the default is the recommended generation worker (docs/operations.md)")
    parser.add_argument("--repeat", type=int, default=3, help="jobs to run, each between two raw measurements")
    args = parser.parse_args()
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; image {args.image_size}x{args.image_size}x{args.channels}, "
          f"width {args.width}, {args.count} images in shards of {args.shard_size}")

    with tempfile.TemporaryDirectory(prefix="bench-gen-") as scratch, RedisServer() as redis_server, S3Server() as s3:
        worker_env = service_env(redis_server.url, s3, f"s3://bench-{uuid.uuid4().hex[:8]}")
        storage = open_storage(Settings.from_env(worker_env))
        model = "t-bench-model"
        # one step of training gives a complete, loadable model of the asked shape
        spec = TrainSpec(job_id=model, dataset="fake", steps=1, width=args.width, image_size=args.image_size,
                         channels=args.channels, batch_size=16)
        run_training(spec, Settings.from_env(worker_env), storage)
        generator, _ = load_model(storage, model, device)
        options = args.worker_options.split()
        # raw and landed take turns, and each figure is the median of its runs: this machine's speed drifts by
        # +-20 % over minutes, which a single pair of runs would turn into the ratio
        raws = [raw_images_per_s(generator, args.count, 256, device)]
        jobs = []
        for _ in range(args.repeat):
            jobs.append(run_job(worker_env, model, args.count, args.shard_size, Path(scratch), options))
            raws.append(raw_images_per_s(generator, args.count, 256, device))
        raw = statistics.median(raws)
        landed = statistics.median(job["landed"] for job in jobs)
        print(f"raw generator forward: {raw:.0f} images/s (median of {figures(raws)})")
        print(f"landed in storage by a generate job (1 worker: augment worker {' '.join(options) or '(defaults)'}): "
              f"{landed:.0f} images/s (median of {figures(job['landed'] for job in jobs)})")
        print(f"shard-task overhead: median {statistics.median(job['gap_ms'] for job in jobs):.1f} ms between one shard "
              "finishing and the next starting on the worker (negative: shard tasks overlap); the first shard waited "
              f"{statistics.median(job['first_wait_ms'] for job in jobs):.0f} ms from enqueue to start")
        print(f"worker peak RSS: {jobs[0]['rss_mib']:.0f} MiB for {args.count} images")
        for count in [int(value) for value in args.rss_counts.split(",") if value]:
            sized = run_job(worker_env, model, count, args.shard_size, Path(scratch), options)
            print(f"worker peak RSS: {sized['rss_mib']:.0f} MiB for {count} images ({sized['landed']:.0f} images/s landed)")
    print(f"ratio={landed / raw:.3f}")


if __name__ == "__main__":
    main()
