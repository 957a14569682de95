"""The partition test bed's fleet and its scenarios, shared by tests/test_partitions.py and benchmarks/partition_soak.py.

A fleet in network namespaces (tests/support/netns.py): Redis (AOF) and the SeaweedFS S3 gateway each on a host of its
own, and two worker hosts, each running a training worker (``--queues train``) and a generation worker (``--queues
generate``), the way an operator adds generation capacity beside a trainer. So one cut catches a worker mid-training
and mid-generation at once, and each scenario is one :class:`Run` of both kinds of job.

Every run checks: both jobs succeed within a bound; the generation job lists every shard exactly once and each listed
object's size and sha256 are the manifest's; the training job's card names a checkpoint that holds the card's step
(and a best checkpoint that holds its best point's);
the bytes of what each finished job leaves (the model card and what it names; the manifest and the shards it lists)
are the same 30 s after the heal (twice the lease TTL: long enough for a late writer) as at the job's final state;
state and progress, polled all along through the producer's own reader, never go backwards (a final state never
changes, a training step or a generation's image count never drops, no PROGRESS -> RETRY from a stale attempt).
The shipped lease and visibility timeouts throughout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from producer.client import Client
from shared.keys import Keys, epoch_field
from shared.layout import checkpoints_prefix, manifest_key, model_card_key, synthetic_prefix
from shared.lifecycle import PROGRESS, RETRY, SUCCESS, TERMINAL_STATES
from shared.manifest import Manifest
from shared.models import read_model_card
from shared.records import RedisJobStore
from shared.settings import Settings
from shared.storage import Storage, open_storage
from tests.support.netns import Host, Network
from tests.support.processes import REPO, WorkerProcess, run_cli, service_env
from tests.support.servers import RedisServer, S3Server
from tests.support.waiting import wait_for

# The jobs: small, but long enough that a cut lands mid-job and a takeover has work left to do.
# A checkpoint at every progress report: a trainer that comes back from a cut blocked in a report meets a checkpoint
# at its very next step, which is where a late writer would overwrite what the job's card names.
TRAIN_STEPS, CHECKPOINT_EVERY = 300, 10
# A validation curve every 50 steps, whose best checkpoint is one more object a late writer must not change; its
# reference classifier trains 30 steps, so that the GAN starts within seconds.
TRAIN_ARGS = ("--dataset", "fake", "--steps", str(TRAIN_STEPS), "--width", "8", "--batch-size", "32", "--teacher", "0",
              "--log-every", "10", "--checkpoint-every", str(CHECKPOINT_EVERY), "--sample-every", "100",
              "--validate-every", "50", "--reference-steps", "30")
CUT_AT_STEP = 60  # past the first checkpoints: the takeover resumes from a stored state
# 12 shards of ~2 s each on two contended cores: a shard is surely in the making when the cut comes, and a takeover's
# shard is still being made when a heal that must come "before the takeover finished" comes.
SHARDS, SHARD_SIZE = 12, 3000
SETTLE_S = 30.0  # after the heal and the final state: twice the 15 s lease TTL, for any late writer to land
REDIS_CUT_S = 35.0  # Redis away from every worker: past the lease TTL (15 s) and the visibility timeout (20 s + sweep)
TAKEOVER_WITHIN_S = 120.0  # bounds, not timings: the shipped defaults take over in ~25 s
FINISH_WITHIN_S = 180.0
POLL_S = 0.1
SHARD_NAME = re.compile(r"^shard-(\d{6})(?:-a(\d+))?\.tar$")
OWNER_PID = re.compile(r"^augment-(\d+)@")


# ---- the fleet ----


@dataclass
class Node:
    """A worker host: a training worker and a generation worker on one network namespace."""

    host: Host
    trainer: WorkerProcess
    generator: WorkerProcess

    @property
    def workers(self) -> tuple[WorkerProcess, WorkerProcess]:
        return self.trainer, self.generator

    def runs(self, token: str | None) -> WorkerProcess | None:
        """The worker of this node whose lease TOKEN ("augment-<pid>@host/..#epoch") it is, if any."""
        match = OWNER_PID.match(token or "")
        return next((worker for worker in self.workers if match and worker.pid == int(match.group(1))), None)

    def log_lines(self, *needles: str, last: int = 40) -> str:
        """The last lines of its workers' logs that mention any of NEEDLES (the report of a failure)."""
        shown = []
        for worker in self.workers:
            lines = [line for line in worker.log_path.read_text(errors="replace").splitlines()
                     if any(needle in line for needle in needles)]
            shown.append(f"--- {worker.log_path.name} (pid {worker.pid}) ---\n" + "\n".join(lines[-last:]))
        return "\n".join(shown)


@dataclass
class Fleet:
    net: Network
    redis_host: Host
    nodes: list[Node]
    env: dict[str, str]
    model: str  # a finished training job that generation jobs sample from
    tmp: Path
    client: Client
    redis: redis.Redis
    storage: Storage

    def node_running(self, token: str | None) -> Node | None:
        return next((node for node in self.nodes if node.runs(token)), None)

    def lease(self, job_id: str, part: str) -> str | None:
        """The token holding PART of JOB_ID now (None: nobody)."""
        return self.redis.get(Keys.lease(f"{job_id}:{part}"))  # type: ignore[return-value]

    def status(self, job_id: str) -> dict[str, Any]:
        status = self.client.status(job_id)
        assert status is not None, f"no job {job_id}"
        return status


@contextlib.contextmanager
def fleet_in_network(tmp: Path) -> Iterator[Fleet]:
    """Redis (AOF) and the S3 gateway each on a host of its own, and two worker hosts, each running a training worker
    and a generation worker; a small finished model to generate from. Everything is torn down on exit."""
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(Network())
        redis_host, s3_host = net.add_host("redis"), net.add_host("s3")
        worker_hosts = [net.add_host("w1"), net.add_host("w2")]
        redis_server = stack.enter_context(RedisServer(netns_host=redis_host, base_dir=tmp / "redis"))
        s3 = stack.enter_context(S3Server(netns_host=s3_host, base_dir=tmp / "s3"))
        env = service_env(redis_server.url, s3, f"s3://partitions-{uuid.uuid4().hex[:8]}/augment",
                          AUGMENT_DATA_DIR=str(tmp / "data"))
        nodes = []
        for host in worker_hosts:
            trainer = WorkerProcess(env, tmp / f"{host.name}-train.log", "train", netns_host=host)
            generator = WorkerProcess(env, tmp / f"{host.name}-generate.log", "generate", netns_host=host)
            stack.callback(trainer.kill)
            stack.callback(generator.kill)
            nodes.append(Node(host, trainer.launch(), generator.launch()))
        deadline = time.monotonic() + 120
        for node in nodes:
            for worker in node.workers:
                worker.wait_ready(deadline - time.monotonic())
        settings = Settings.from_env(env)
        client = Client.connect(settings)
        model = submit(env, "train", "--dataset", "fake", "--steps", "10", "--width", "8", "--batch-size", "32",
                       "--teacher", "0")
        watched = run_cli(env, "watch", model, "--interval", "0.2", timeout=180)
        assert watched.returncode == 0, watched.stderr
        probe = redis.Redis.from_url(env["AUGMENT_BROKER_URL"], decode_responses=True, socket_timeout=10, socket_connect_timeout=3)
        stack.callback(probe.close)
        yield Fleet(net, redis_host, nodes, env, model, tmp, client, probe, open_storage(settings))




def submit(env: dict[str, str], *args: str) -> str:
    submitted = run_cli(env, *args, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


# ---- watching a job from outside ----


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic()
    state: str
    progress: int | None  # a training job's step, a generation job's images done (None: no record)
    result: Any


class Observer:
    """Polls the status of JOBS (what `augment status` reads) every POLL_S in a thread, from the test host, which no
    partition cuts off: the record of what anyone watching the job saw."""

    def __init__(self, env: dict[str, str], *jobs: str):
        self.client = Client.connect(Settings.from_env(env))
        self.seen: dict[str, list[Seen]] = {job: [] for job in jobs}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def add(self, job: str) -> None:
        self.seen = {**self.seen, job: []}  # a new dict: the thread iterates the one it read

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            for job, seen in self.seen.items():
                try:
                    status = self.client.status(job) or {"state": "PENDING"}
                except Exception as exc:  # recorded: the test host reaches Redis, so this would be news
                    self.errors.append(f"{job}: {type(exc).__name__}: {exc}")
                    continue
                progress: dict[str, Any] = status["progress"] if isinstance(status.get("progress"), dict) else {}
                value = progress.get("step", progress.get("images_done"))
                seen.append(Seen(time.monotonic(), status["state"], value if isinstance(value, int) else None, status.get("result")))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def history(self, job: str, since: float) -> str:
        """JOB's states and progress as seen, consecutive repeats collapsed, times from SINCE."""
        shown: list[str] = []
        last: tuple[str, int | None] | None = None
        for seen in self.seen[job]:
            if (seen.state, seen.progress) != last:
                shown.append(f"{seen.at - since:+.1f}s {seen.state} {'' if seen.progress is None else seen.progress}".strip())
                last = (seen.state, seen.progress)
        return ", ".join(shown[-60:])

    def assert_never_backwards(self, job: str, since: float) -> None:
        seen = self.seen[job]
        assert seen, f"{job} was never observed"
        history = self.history(job, since)
        final = next((index for index, entry in enumerate(seen) if entry.state in TERMINAL_STATES), None)
        if final is not None:
            moved = [entry for entry in seen[final:] if (entry.state, entry.result) != (seen[final].state, seen[final].result)]
            assert not moved, f"{job}: its final state changed after it was set ({moved[0].state}): {history}"
        states = [entry.state for entry in seen]
        flaps = [index for index in range(1, len(states)) if states[index - 1] == PROGRESS and states[index] == RETRY]
        assert not flaps, f"{job}: went PROGRESS -> RETRY {len(flaps)} time(s): {history}"
        progress = [entry.progress for entry in seen[:final] if entry.progress is not None]
        drops = [(a, b) for a, b in zip(progress, progress[1:], strict=False) if b < a]
        assert not drops, f"{job}: progress went backwards {drops[:5]}: {history}"


# ---- what a finished job leaves ----


@dataclass
class Snapshot:
    """The bytes of a finished job's stable objects, read at its final state."""

    job_id: str
    result: dict[str, Any]
    objects: dict[str, bytes]
    at: float


def snapshot_training(fleet: Fleet, job_id: str, status: dict[str, Any]) -> Snapshot:
    """The model card and what it names; checked: the card's checkpoint is there and holds the card's step."""
    from worker.checkpoint import from_bytes  # torch: only where a checkpoint is read

    card_text = fleet.storage.get_bytes(model_card_key(job_id))
    card = read_model_card(card_text.decode(), job_id)
    assert card.steps == TRAIN_STEPS, f"{job_id}: the card says {card.steps} steps"
    named = [card.checkpoint, card.grid, card.loss_curve, *([card.teacher["key"]] if card.teacher else []),
             *([card.best_checkpoint] if card.best_checkpoint else [])]
    objects = {model_card_key(job_id): card_text, **{key: fleet.storage.get_bytes(key) for key in named}}
    state = from_bytes(objects[card.checkpoint], card.checkpoint)
    assert state["step"] == card.steps, f"{job_id}: the card names {card.checkpoint}, which holds step {state['step']}"
    assert card.best_checkpoint and card.best is not None, f"{job_id}: no best checkpoint"
    best = from_bytes(objects[card.best_checkpoint], card.best_checkpoint)
    assert best["step"] == card.best["step"], f"{job_id}: the best checkpoint holds step {best['step']}, not {card.best}"
    assert status["result"]["steps"] == TRAIN_STEPS, status
    return Snapshot(job_id, status["result"], objects, time.monotonic())


def snapshot_generation(fleet: Fleet, job_id: str, status: dict[str, Any]) -> Snapshot:
    """The manifest and the shards it lists; checked: every shard listed once, each object its size and sha256."""
    manifest_text = fleet.storage.get_bytes(manifest_key(job_id))
    manifest = Manifest.from_json(manifest_text.decode())
    indices = []
    for entry in manifest.shards:
        match = SHARD_NAME.match(entry.name)
        assert match, f"{job_id}: the manifest lists {entry.name!r}, not a shard name"
        indices.append(int(match.group(1)))
    assert sorted(indices) == list(range(SHARDS)), f"{job_id}: the manifest lists shards {sorted(indices)}"
    assert manifest.total == SHARDS * SHARD_SIZE
    objects = {manifest_key(job_id): manifest_text}
    for entry in manifest.shards:
        key = manifest.shard_key(entry)
        assert fleet.storage.exists(key), f"{job_id}: {key} is listed but not in storage"
        data = fleet.storage.get_bytes(key)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256), f"{job_id}: {key} is not what is listed"
        objects[key] = data
    assert (status["result"]["images"], status["result"]["shards"]) == (SHARDS * SHARD_SIZE, SHARDS), status
    return Snapshot(job_id, status["result"], objects, time.monotonic())


def assert_unchanged(fleet: Fleet, snapshot: Snapshot) -> None:
    changed = [key for key, data in snapshot.objects.items()
               if not fleet.storage.exists(key) or fleet.storage.get_bytes(key) != data]
    assert not changed, f"{snapshot.job_id}: changed after its final state: {changed}"
    status = fleet.status(snapshot.job_id)
    assert (status["state"], status.get("result")) == (SUCCESS, snapshot.result), status


# ---- a run: two jobs, one partition, one heal ----


@dataclass
class Run:
    fleet: Fleet
    train_job: str = ""
    generate_job: str = ""
    victim: Node | None = None  # the host holding the training job (and shards) when the partition came
    held: list[tuple[str, str]] = field(default_factory=list)  # (job, part) the victim held at the cut
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    observer: Observer | None = None
    began: float = 0.0
    cut_at: float = 0.0
    healed_at: float = 0.0
    taken_over_at: float = 0.0  # when another worker was first seen holding a part the victim held

    @property
    def jobs(self) -> tuple[str, str]:
        return self.train_job, self.generate_job

    def context(self) -> str:
        """What a failure message carries: both jobs' histories and the workers' log lines about them."""
        lines = [f"cut at {self._at(self.cut_at)}, healed at {self._at(self.healed_at)} (from the first submission)"]
        if self.observer is not None:
            lines += [f"{job}: {self.observer.history(job, self.began)}" for job in self.jobs if job]
            lines += [f"observer errors: {self.observer.errors[-5:]}"] * bool(self.observer.errors)
        needles = (*[job for job in self.jobs if job], "Traceback", "ERROR", "lease")
        for node in sorted(self.fleet.nodes, key=lambda node: node is not self.victim):  # the victim first
            lines.append(f"=== {node.host.name}{' (cut off)' if node is self.victim else ''} ===")
            lines.append(node.log_lines(*needles, last=40 if node is self.victim else 20))
        return "\n".join(lines)

    def start(self) -> None:
        """Submit a training job; once it has trained past its first checkpoint, a generation job; return as soon as
        the host training the first also makes a shard of the second (its parts then are in `held`)."""
        fleet = self.fleet
        self.began = time.monotonic()
        self.train_job = submit(fleet.env, "train", *TRAIN_ARGS)
        self.observer = Observer(fleet.env, self.train_job)

        def step() -> int:
            return max([seen.progress or 0 for seen in self.observer.seen[self.train_job]] or [0]) if self.observer else 0

        wait_for(lambda: fleet.node_running(fleet.lease(self.train_job, "train")) is not None and step() >= CUT_AT_STEP,
                 TAKEOVER_WITHIN_S, lambda: f"the training job to run: {self.context()}")
        self.victim = victim = fleet.node_running(fleet.lease(self.train_job, "train"))
        assert victim is not None
        self.generate_job = submit(fleet.env, "generate", "--model", fleet.model, "--count", str(SHARDS * SHARD_SIZE),
                                   "--shard-size", str(SHARD_SIZE))
        self.observer.add(self.generate_job)

        def victim_mid_both() -> bool:
            assert self.victim is not None
            shards = [f"shard:{index}" for index in range(SHARDS)
                      if self.victim.runs(fleet.lease(self.generate_job, f"shard:{index}")) is self.victim.generator]
            trains = self.victim.runs(fleet.lease(self.train_job, "train")) is self.victim.trainer
            self.held = [(self.train_job, "train")] * trains + [(self.generate_job, part) for part in shards]
            return trains and bool(shards)

        wait_for(victim_mid_both, 60, lambda: f"{victim.host.name} to train and make a shard at once: {self.context()}")

    def takeover_begun(self) -> bool:
        """Whether another worker holds a part the victim held at the cut."""
        assert self.victim is not None
        for job, part in self.held:
            token = self.fleet.lease(job, part)
            if token is not None and self.victim.runs(token) is None:
                return True
        return False

    def finish(self, deadline_s: float) -> None:
        """Poll both jobs until both are final, snapshotting each at its final state (which must be SUCCESS)."""
        self._poll(deadline_s, lambda: len(self.snapshots) == 2, "both jobs to succeed")

    def _poll(self, deadline_s: float, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            if self.held and not self.taken_over_at and self.takeover_begun():
                self.taken_over_at = time.monotonic()
            if done():
                return
            for job, snap in ((self.train_job, snapshot_training), (self.generate_job, snapshot_generation)):
                if job in self.snapshots:
                    continue
                status = self.fleet.status(job)
                if status["state"] in TERMINAL_STATES:
                    assert status["state"] == SUCCESS, f"{job} ended {status['state']}: {status}\n{self.context()}"
                    try:
                        self.snapshots[job] = snap(self.fleet, job, status)
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}\n{self.context()}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}\n{self.context()}")
            time.sleep(POLL_S)

    def wait_takeover(self) -> None:
        """Until the takeover begins; neither job may have finished by then (that would be a heal after)."""
        self._poll(TAKEOVER_WITHIN_S, lambda: self.takeover_begun() or len(self.snapshots) == 2, "a takeover to begin")
        assert not self.snapshots, f"a job finished before the takeover was seen: {sorted(self.snapshots)}\n{self.context()}"

    def settle_and_check(self) -> None:
        """Wait out a late writer, then check everything a run promises."""
        assert self.observer is not None
        quiet_from = max(self.healed_at, *(snap.at for snap in self.snapshots.values()))
        time.sleep(max(0.0, quiet_from + SETTLE_S - time.monotonic()))
        for snapshot in self.snapshots.values():
            try:
                assert_unchanged(self.fleet, snapshot)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.context()}") from None
        self.observer.stop()
        for job in self.jobs:
            try:
                self.observer.assert_never_backwards(job, self.began)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.context()}") from None
        # the premise: the partition outlasted the training lease, so a second attempt took it (the other host, or the
        # cut-off one after the heal)
        epoch: str | None = self.fleet.redis.hget(Keys.job(self.train_job), epoch_field("train"))  # type: ignore[assignment]
        assert epoch is not None and int(epoch) >= 2, f"the training lease never changed hands (epoch {epoch})\n{self.context()}"
        print(self.timeline())

    def _at(self, moment: float) -> str:
        return f"{moment - self.began:+.1f}s" if moment else "-"

    def timeline(self) -> str:
        """What happened when, for the record (pytest -rP shows it): from the training job's submission."""
        at = self._at
        assert self.victim is not None
        finals = ", ".join(f"{job} final at {at(snap.at)}" for job, snap in self.snapshots.items())
        unlisted = {job: sorted(set(self.fleet.storage.list(prefix)) - set(self.snapshots[job].objects))
                    for job, prefix in ((self.train_job, checkpoints_prefix(self.train_job)),
                                        (self.generate_job, synthetic_prefix(self.generate_job)))}
        assert self.observer is not None
        return (f"victim {self.victim.host.name} held {[part for _, part in self.held]}; cut {at(self.cut_at)}, "
                f"takeover seen {at(self.taken_over_at)}, healed {at(self.healed_at)}; {finals}; "
                f"objects beside the stable ones after settling: {unlisted}; observer errors: {len(self.observer.errors)}")

    def shards_made_elsewhere(self) -> None:
        """Every shard the victim held at the cut was made by another worker (the job finished without it)."""
        assert self.victim is not None
        store = RedisJobStore(self.fleet.redis)
        records = store.shard_records(self.generate_job)
        mine = f"augment-{self.victim.generator.pid}@"
        for job, part in self.held:
            if job == self.generate_job:
                index = int(part.split(":")[1])
                assert not records[index].worker.startswith(mine), f"shard {index} was made by the cut-off worker\n{self.context()}"

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()


def cli_status_on(fleet: Fleet, host: Host, job_id: str) -> subprocess.CompletedProcess[str]:
    return run_cli(fleet.env, "status", job_id, netns_host=host, timeout=90)


def assert_one_line_error(result: subprocess.CompletedProcess[str], where: str) -> None:
    assert "Traceback" not in result.stderr, f"{where}: a traceback:\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("augment: error: "), (
        f"{where}: exit {result.returncode}, stderr:\n{result.stderr}")


class Watch:
    """`augment watch JOB` on HOST, in a process of its own, stderr to a file."""

    def __init__(self, fleet: Fleet, host: Host, job_id: str):
        self.log = fleet.tmp / f"watch-{job_id}.err"
        with open(self.log, "wb") as stderr:
            self.process = subprocess.Popen(
                host.command([sys.executable, "-m", "producer.cli", "watch", job_id, "--interval", "0.5"]),
                env=fleet.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def watch_began(watch: Watch) -> bool:
    return watch.stderr.strip() != "" or watch.process.poll() is not None


def watch_ended(watch: Watch) -> bool:
    return watch.process.poll() is not None


# ---- the scenarios: each one partition of a run, returning nothing; a broken promise raises AssertionError ----


def worker_cut(run: Run, cut: str, heal: str) -> None:
    """The host running the training job (and a shard) cut from everything (CUT "everything": its switch port down)
    or from Redis only (CUT "redis": packets dropped both ways); healed after both jobs finished (HEAL "after") or as
    another worker takes over one of its parts (HEAL "before"); then everything is checked."""
    fleet = run.fleet
    run.start()
    assert run.victim is not None
    victim = run.victim.host
    with ThreadPoolExecutor(1) as pool:
        if cut == "everything":
            fleet.net.cut(victim)
        else:
            fleet.net.drop(victim, fleet.redis_host)
        run.cut_at = time.monotonic()
        status_on_cut_host = pool.submit(cli_status_on, fleet, victim, run.generate_job)
        if heal == "after":
            run.finish(FINISH_WITHIN_S)
        else:
            run.wait_takeover()
        if cut == "everything":
            fleet.net.heal(victim)
        else:
            fleet.net.undrop(victim, fleet.redis_host)
        run.healed_at = time.monotonic()
        assert_one_line_error(status_on_cut_host.result(120), f"`augment status` on {victim.name}, cut from {cut}")
    run.finish(FINISH_WITHIN_S)
    if heal == "after":
        run.shards_made_elsewhere()
    run.settle_and_check()


def redis_cut(run: Run) -> None:
    """Redis cut from every worker for REDIS_CUT_S mid-training and mid-generation, with `augment watch` of both
    jobs running on a cut host (it must say it reconnects, and end with the job); then everything is checked."""
    fleet = run.fleet
    run.start()
    assert run.victim is not None
    watches = [Watch(fleet, run.victim.host, job) for job in run.jobs]
    try:
        for watch in watches:  # a watch that starts with Redis away is an error at once: let it see the job first
            wait_for(functools.partial(watch_began, watch), 60, "watch to start")
            assert watch.process.poll() is None, watch.stderr
        with ThreadPoolExecutor(2) as pool:
            for node in fleet.nodes:
                fleet.net.drop(fleet.redis_host, node.host)
            run.cut_at = time.monotonic()
            statuses = [pool.submit(cli_status_on, fleet, node.host, run.generate_job) for node in fleet.nodes]
            time.sleep(REDIS_CUT_S)
            for node in fleet.nodes:
                fleet.net.undrop(fleet.redis_host, node.host)
            run.healed_at = time.monotonic()
            for node, status in zip(fleet.nodes, statuses, strict=True):
                assert_one_line_error(status.result(120), f"`augment status` on {node.host.name}, Redis cut off")
        run.finish(FINISH_WITHIN_S)
        for watch in watches:
            wait_for(functools.partial(watch_ended, watch), 60, lambda: f"watch to end:\n{watches[0].stderr}")
            assert "Traceback" not in watch.stderr, watch.stderr
            assert watch.process.returncode == 0, f"watch exited {watch.process.returncode}:\n{watch.stderr}"
            assert "reconnecting" in watch.stderr and "reconnected" in watch.stderr, watch.stderr
    finally:
        for watch in watches:
            watch.close()
    run.settle_and_check()
