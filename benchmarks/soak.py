"""Soak: K jobs through a fleet whose workers are SIGKILLed or SIGTERMed and replaced, then an audit.

One process starts a real Redis, a SeaweedFS S3 server and W ``augment worker`` processes with the shipped
settings (no shortened visibility timeout). It trains a small model, submits K generation jobs and a few
training jobs, and every few seconds stops a worker, with SIGKILL (preemption without notice, the OOM killer)
or SIGTERM (docker stop, Kubernetes, a spot notice), and starts a new one. For each stop it notes the parts of
jobs the worker was running (a shard, a training job, from their heartbeats) and times how long until each ran
again on another worker, or was done. When every job has ended, or the deadline passed, it audits storage:

- completed: jobs that ended SUCCESS; lost: jobs that did not;
- missing: shards a job should have that its manifest or storage lacks;
- duplicated: shards listed twice, or shard objects in storage that no manifest lists;
- corrupt: shards whose bytes differ from the manifest's sha256;
- re-rendered: shards a worker made again after a kill (identical bytes; the cost of a kill, not an error);
- redelivered: messages handed to a worker again (after a kill or a hand-back; 0 without kills).

It prints, per stop, the seconds from the signal to the moment the lost work was running again, their median
and max by kind of work and signal, and how long SIGTERMed workers took to exit. The last line is
``ratio=<completed/K>``.

    python benchmarks/soak.py [--jobs 20] [--train-jobs 2] [--workers 3] [--kill-every 8] [--signals kill,term]
    python benchmarks/soak.py --jobs 0 --train-jobs 1 --train-steps 20000 --kill-every 0   # a long calm run
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from producer.client import Client  # noqa: E402
from shared.broker import redis_client  # noqa: E402
from shared.lifecycle import TERMINAL_STATES  # noqa: E402
from shared.manifest import Manifest  # noqa: E402
from shared.records import RedisJobStore  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import ObjectNotFound, open_storage  # noqa: E402
from tests.support.processes import WorkerProcess, service_env  # noqa: E402
from tests.support.servers import RedisServer, S3Server  # noqa: E402

SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}


@dataclass
class Stop:
    """One worker stopped by the soak, and the parts of jobs it was running then."""

    number: int
    worker: WorkerProcess
    signal_name: str
    at: float  # monotonic
    lost: dict[tuple[str, str], float | None] = field(default_factory=dict)  # (job, part) -> seconds until back
    exit_s: float | None = None  # SIGTERM: seconds until the worker exited

    def owns(self, owner: str) -> bool:
        return owner.startswith(f"augment-{self.worker.pid}@")


def median_max(values: list[float]) -> str:
    return f"n={len(values)} median {statistics.median(values):.1f} s, max {max(values):.1f} s" if values else "n=0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="generation jobs (K)")
    parser.add_argument("--train-jobs", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--images", type=int, default=600, help="images per generation job")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=8.0, help="mean seconds between stops; 0: none")
    parser.add_argument("--signals", default="kill,term", help="signals to stop workers with, chosen at random")
    parser.add_argument("--victims", choices=["any", "busy"], default="any",
                        help="busy: stop only workers that are running a part of a job (more timings per run)")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds to wait for every job to end")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chaos = random.Random(args.seed)
    signal_names = [name.strip() for name in args.signals.split(",")]
    # SIGTERM (e.g. from timeout) unwinds like Ctrl-C, so workers and servers are stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch, RedisServer() as redis_server, S3Server() as s3:
        env = service_env(redis_server.url, s3, f"s3://soak-{uuid.uuid4().hex[:8]}")
        os.environ.update(env)
        settings = Settings.from_env()
        client = Client.connect(settings)
        store = RedisJobStore(redis_client(settings))
        logs = Path(scratch)
        started: list[WorkerProcess] = []
        stops: list[Stop] = []

        def new_worker(wait: bool) -> WorkerProcess:
            worker = WorkerProcess(env, logs / f"worker-{len(started):03d}.log")
            started.append(worker)
            return worker.start() if wait else worker.launch()

        try:
            fleet = [new_worker(wait=True) for _ in range(args.workers)]
            model = client.submit_train(dataset="fake", steps=20, width=8, batch_size=32)
            if client.wait(model, timeout_s=600)["state"] != "SUCCESS":
                raise SystemExit("the model for the soak did not train")

            generate_ids = [
                client.submit_generate(model=model, count=args.images, shard_size=args.shard_size, seed=index)
                for index in range(args.jobs)
            ]
            train_ids = [
                client.submit_train(dataset="fake", steps=args.train_steps, width=8, batch_size=32,
                                    checkpoint_every=25, seed=index)
                for index in range(args.train_jobs)
            ]
            jobs = generate_ids + train_ids
            began = time.monotonic()

            def next_stop_at() -> float:
                return time.monotonic() + chaos.expovariate(1 / args.kill_every) if args.kill_every > 0 else float("inf")

            stop_at = next_stop_at()
            while time.monotonic() - began < args.deadline:
                states = {job: client.state(job) for job in jobs}
                if all(state in TERMINAL_STATES for state in states.values()):
                    break
                beats = {job: store.liveness.beats(job) for job in jobs if states[job] not in TERMINAL_STATES}
                now = time.monotonic()
                track(stops, beats, states, store, now)
                if now >= stop_at:
                    busy = [worker for worker in fleet
                            if any(beat.owner.startswith(f"augment-{worker.pid}@")
                                   for parts in beats.values() for beat in parts.values())]
                    pool = busy if args.victims == "busy" else fleet
                    if pool:
                        victim = pool[chaos.randrange(len(pool))]
                        fleet.remove(victim)
                        stop = Stop(len(stops) + 1, victim, chaos.choice(signal_names), now)
                        stop.lost = {(job, part): None for job, parts in beats.items()
                                     for part, beat in parts.items() if stop.owns(beat.owner)}
                        assert victim.process is not None
                        os.killpg(victim.process.pid, SIGNALS[stop.signal_name])
                        stops.append(stop)
                        fleet.append(new_worker(wait=False))
                    stop_at = next_stop_at()
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
        worker_logs = [worker.log_path.read_text(errors="replace") for worker in started]
        writes = Counter(match for log in worker_logs for match in re.findall(r"job (g-[0-9a-f]+): wrote shard (\d+) ", log))
        rerendered = sum(count - 1 for count in writes.values())
        redelivered = sum(len(re.findall(r"job [a-z]-[0-9a-f]+: redelivered", log)) for log in worker_logs)

    kinds = Counter(stop.signal_name for stop in stops)
    print(f"soak: {len(jobs)} jobs ({args.jobs} generate x {args.images} images, {args.train_jobs} train x "
          f"{args.train_steps} steps), {args.workers} workers, visibility timeout {settings.visibility_timeout_s} s, "
          f"{len(stops)} stops (SIGKILL {kinds['kill']}, SIGTERM {kinds['term']}) in {elapsed:.0f} s")
    print(f"completed {completed}, lost {len(jobs) - completed}, shards missing {missing}, duplicated {duplicated}, "
          f"corrupt {corrupt}, re-rendered after a kill {rerendered}, redelivered messages {redelivered}")
    for stop in stops:
        parts = ", ".join(f"{job} {part} " + ("never seen again" if seconds is None else f"back in {seconds:.1f} s")
                          for (job, part), seconds in stop.lost.items()) or "nothing running"
        exited = f" (exited in {stop.exit_s:.1f} s)" if stop.exit_s is not None else ""
        print(f"  stop {stop.number} at {stop.at - began:.0f} s: SIG{stop.signal_name.upper()}{exited}: {parts}")
    for signal_name in ("kill", "term"):
        for kind, label in (("train", "training job"), ("shard", "shard")):
            seconds = [value for stop in stops if stop.signal_name == signal_name
                       for (_, part), value in stop.lost.items() if part.startswith(kind) and value is not None]
            print(f"kill-to-resume, {label}, SIG{signal_name.upper()}: {median_max(seconds)}")
    print(f"SIGTERM to exit: {median_max([stop.exit_s for stop in stops if stop.exit_s is not None])}")
    for job, state, error in unfinished:
        print(f"  not completed: {job} {state} {error}")
    print(f"ratio={completed / max(len(jobs), 1):.3f}")


def track(stops: list[Stop], beats: dict[str, dict], states: dict[str, str], store: RedisJobStore, now: float) -> None:
    """Time each lost part until another worker runs it (its heartbeat is another's) or it is done."""
    for stop in stops:
        if stop.signal_name == "term" and stop.exit_s is None and stop.worker.process is not None \
                and stop.worker.process.poll() is not None:
            stop.exit_s = now - stop.at
        for (job, part), seconds in stop.lost.items():
            if seconds is not None:
                continue
            beat = beats.get(job, {}).get(part)
            done = states[job] in TERMINAL_STATES or (
                part.startswith("shard:") and store.shard_record(job, int(part.split(":")[1])) is not None)
            if done or (beat is not None and not stop.owns(beat.owner)):
                stop.lost[job, part] = now - stop.at


if __name__ == "__main__":
    main()
