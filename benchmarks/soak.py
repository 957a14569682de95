"""Soak: K jobs through a fleet whose workers are SIGKILLed and replaced at random, then an audit.

One process starts a real Redis, a SeaweedFS S3 server and W ``augment worker`` processes (visibility timeout
3 s, so a dead worker's task comes back quickly). It trains a small model, submits K generation jobs and a few
training jobs, and every few seconds kills a random worker (SIGKILL, as preemption does) and starts a new one.
When every job has ended, or the deadline passed, it audits storage against the manifests:

- completed: jobs that ended SUCCESS; lost: jobs that did not;
- missing: shards a job should have that its manifest or storage lacks;
- duplicated: shards listed twice, or shard objects in storage that no manifest lists;
- corrupt: shards whose bytes differ from the manifest's sha256;
- re-rendered: shards a worker made again after a kill (identical bytes; the cost of a kill, not an error).

The last line is ``ratio=<completed/K>``.

    python benchmarks/soak.py [--jobs 20] [--workers 3] [--kill-every 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from producer.client import Client  # noqa: E402
from shared.jobs import TERMINAL_STATES  # noqa: E402
from shared.manifest import Manifest  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import ObjectNotFound, open_storage  # noqa: E402
from tests.processes import WorkerProcess, service_env  # noqa: E402
from tests.servers import RedisServer, S3Server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="generation jobs (K)")
    parser.add_argument("--train-jobs", type=int, default=2)
    parser.add_argument("--images", type=int, default=600, help="images per generation job")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds to wait for every job to end")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chaos = random.Random(args.seed)
    # SIGTERM (e.g. from timeout) unwinds like Ctrl-C, so workers and servers are stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch, RedisServer() as redis_server, S3Server() as s3:
        env = service_env(redis_server.url, s3, f"s3://soak-{uuid.uuid4().hex[:8]}", AUGMENT_VISIBILITY_TIMEOUT="3")
        os.environ.update(env)
        settings = Settings.from_env()
        client = Client.connect(settings)
        logs = Path(scratch)
        started: list[WorkerProcess] = []

        def start_worker() -> WorkerProcess:
            worker = WorkerProcess(env, logs / f"worker-{len(started):03d}.log").start()
            started.append(worker)
            return worker

        try:
            fleet = [start_worker() for _ in range(args.workers)]
            model = client.submit_train(dataset="fake", steps=20, width=8, batch_size=32)
            if client.wait(model, timeout_s=300)["state"] != "SUCCESS":
                raise SystemExit("the model for the soak did not train")

            generate_ids = [
                client.submit_generate(model=model, count=args.images, shard_size=args.shard_size, seed=index)
                for index in range(args.jobs)
            ]
            train_ids = [
                client.submit_train(dataset="fake", steps=300, width=8, batch_size=32, checkpoint_every=25, seed=index)
                for index in range(args.train_jobs)
            ]
            jobs = generate_ids + train_ids
            kills, began = 0, time.monotonic()
            next_kill = began + chaos.expovariate(1 / args.kill_every)
            while time.monotonic() - began < args.deadline:
                states = {job: client.state(job) for job in jobs}
                if all(state in TERMINAL_STATES for state in states.values()):
                    break
                if time.monotonic() >= next_kill:
                    victim = fleet.pop(chaos.randrange(len(fleet)))
                    victim.kill()
                    kills += 1
                    fleet.append(start_worker())
                    next_kill = time.monotonic() + chaos.expovariate(1 / args.kill_every)
                time.sleep(0.5)
            elapsed = time.monotonic() - began
        finally:
            for worker in started:
                worker.kill()

        storage = open_storage(settings)
        expected_shards = -(-args.images // args.shard_size)
        completed = sum(client.state(job) == "SUCCESS" for job in jobs)
        unfinished = [(job, status["state"], status.get("error", "")) for job in jobs
                      if (status := client.status(job) or {"state": "PENDING"})["state"] != "SUCCESS"]
        missing = duplicated = corrupt = 0
        for job in generate_ids:
            try:
                manifest = Manifest.load(storage, job)
            except ObjectNotFound:
                missing += expected_shards
                continue
            names = Counter(shard.name for shard in manifest.shards)
            duplicated += sum(count - 1 for count in names.values())
            missing += expected_shards - len(names)
            listed = {manifest.shard_key(shard) for shard in manifest.shards} | {f"synthetic/{job}/manifest.json"}
            duplicated += len(set(storage.list(f"synthetic/{job}")) - listed)
            corrupt += sum(storage.checksum(manifest.shard_key(shard)) != shard.sha256 for shard in manifest.shards)
        writes = Counter(
            match for worker in started
            for match in re.findall(r"job (g-[0-9a-f]+): wrote shard (\d+) ", worker.log_path.read_text())
        )
        rerendered = sum(count - 1 for count in writes.values())

    print(f"soak: {len(jobs)} jobs ({args.jobs} generate x {args.images} images, {args.train_jobs} train), "
          f"{args.workers} workers, {kills} kills in {elapsed:.0f} s")
    print(f"completed {completed}, lost {len(jobs) - completed}, shards missing {missing}, duplicated {duplicated}, "
          f"corrupt {corrupt}, re-rendered after a kill {rerendered}")
    for job, state, error in unfinished:
        print(f"  not completed: {job} {state} {error}")
    print(f"ratio={completed / len(jobs):.3f}")


if __name__ == "__main__":
    main()
