"""`augment worker`'s choice of pool, concurrency and torch threads (the worker itself runs in test_fleet)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from producer.cli import main, torch_threads_per_task, worker_pool


@pytest.mark.parametrize(
    ("queues", "pool", "concurrency", "expected"),
    [
        ("generate", "auto", None, ("threads", 2)),  # uploads overlap sampling
        (" generate ", "auto", None, ("threads", 2)),
        ("train,generate,evaluate", "auto", None, ("solo", 1)),  # training runs alone
        ("generate,train", "auto", None, ("solo", 1)),
        ("evaluate", "auto", None, ("solo", 1)),
        ("generate", "auto", 4, ("threads", 4)),
        ("generate", "solo", None, ("solo", 1)),
        ("train", "threads", None, ("threads", 2)),
        ("train", "threads", 1, ("threads", 1)),
    ],
)
def test_worker_pool(queues: str, pool: str, concurrency: int | None, expected: tuple[str, int]) -> None:
    assert worker_pool(queues, pool, concurrency) == expected


@pytest.mark.parametrize(("pool", "concurrency"), [("threads", 0), ("auto", -1), ("solo", 2)])
def test_worker_pool_refuses_impossible_concurrency(pool: str, concurrency: int) -> None:
    with pytest.raises(click.BadParameter, match="task"):
        worker_pool("generate", pool, concurrency)


def test_the_cores_are_split_between_task_threads() -> None:
    assert [torch_threads_per_task(concurrency, 2) for concurrency in (1, 2, 3)] == [2, 1, 1]
    assert torch_threads_per_task(2, 16) == 8


def test_a_bad_concurrency_is_one_line_before_anything_starts() -> None:
    result = CliRunner().invoke(main, ["worker", "--pool", "solo", "--concurrency", "3"], env={"AUGMENT_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2
    assert "the solo pool runs one task at a time; use --pool threads for more" in result.output
