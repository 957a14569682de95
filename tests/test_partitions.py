"""Partitions, not crashes: a worker cut off from the network lives on, and nothing it sends late may undo a job.
(The fleet, the runs and their checks live in tests/support/partitions.py; benchmarks/partition_soak.py repeats them.)

One fleet for the module; each scenario is one run of a training and a generation job, cut mid-way:

- a worker host cut from everything (its switch port down), healed after both jobs finished on the other host, and
  healed as the other host's takeover begins (before it finished);
- a worker host cut from Redis only (nftables drops between it and Redis; S3 still reachable), healed after and before;
- Redis cut from every worker for longer than the lease TTL and the visibility timeout, then healed;
- the CLI on a cut host: ``augment status`` gives one line and exit 1, ``augment watch`` keeps watching; no traceback.

Every run makes the checks that tests/support/partitions.py describes. Last, every worker still answers and takes new
work. The shipped lease and visibility timeouts throughout.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.broker import make_celery
from shared.settings import Settings
from tests.support.netns import netns_unavailable
from tests.support.partitions import FINISH_WITHIN_S, Fleet, Run, fleet_in_network, redis_cut, submit, worker_cut
from tests.support.processes import run_cli
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with fleet_in_network(tmp_path_factory.mktemp("partitions")) as made:
        yield made


@pytest.fixture
def healed(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, its network whole again after the test whatever happened in it."""
    try:
        yield fleet
    finally:
        fleet.net.heal_all()


@pytest.fixture
def run(healed: Fleet) -> Iterator[Run]:
    made = Run(healed)
    try:
        yield made
    finally:
        made.close()


HEALS = [pytest.param("after", id="heal-after-the-jobs-finished"), pytest.param("before", id="heal-as-the-takeover-begins")]


@pytest.mark.parametrize("heal", HEALS)
def test_a_worker_cut_from_everything_mid_training_and_mid_generation(run: Run, heal: str) -> None:
    worker_cut(run, "everything", heal)


@pytest.mark.parametrize("heal", HEALS)
def test_a_worker_cut_from_redis_only_mid_training_and_mid_generation(run: Run, heal: str) -> None:
    worker_cut(run, "redis", heal)


def test_redis_cut_from_every_worker_mid_training_and_mid_generation(run: Run) -> None:
    redis_cut(run)


def test_every_worker_answers_and_takes_new_work_after_the_partitions(healed: Fleet) -> None:
    fleet = healed
    dead = [worker.log_path.name for node in fleet.nodes for worker in node.workers
            if worker.process is None or worker.process.poll() is not None]
    assert not dead, f"workers exited: {dead}"
    app = make_celery(Settings.from_env(fleet.env))
    names = {f"augment-{worker.pid}@" for node in fleet.nodes for worker in node.workers}

    def answered() -> set[str]:
        replies = app.control.ping(timeout=3)
        return {prefix for prefix in names for reply in replies for name in reply if name.startswith(prefix)}

    wait_for(lambda: answered() == names, 60, "every worker to answer a ping")
    train_job = submit(fleet.env, "train", "--dataset", "fake", "--steps", "20", "--width", "8", "--batch-size", "32",
                       "--teacher", "0")
    generate_job = submit(fleet.env, "generate", "--model", fleet.model, "--count", "512", "--shard-size", "64")
    for job in (train_job, generate_job):
        watched = run_cli(fleet.env, "watch", job, "--interval", "0.3", timeout=FINISH_WITHIN_S)
        assert watched.returncode == 0, watched.stderr
