"""`augment worker`'s choice of pool, concurrency and torch threads, and the CPUs it may use: affinity and the
cgroup quota (the worker itself runs in test_fleet)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from producer.cli import main, worker_pool
from shared.cpus import (
    busy_cpus,
    cgroup_cpu_limit,
    cpu_name,
    cpus_within,
    free_cpus,
    thread_environment,
    torch_threads_per_task,
    usable_cpus,
)


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


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("proc_cgroup", "files", "limit"),
    [
        # cgroup v2, the process in its own cgroup (systemd slice, or a container without a cgroup namespace)
        ("0::/kubepods/pod1/c1\n", {"sys/kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 1.5),
        ("0::/kubepods/pod1/c1\n", {"sys/kubepods/pod1/c1/cpu.max": "max 100000\n"}, None),
        # a container with a cgroup namespace: its cgroup is the root it sees
        ("0::/\n", {"sys/cpu.max": "50000 100000\n"}, 0.5),
        # cgroup v1 with the cpu controller mounted alone, and under another path than the process's
        ("4:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n",
         {"sys/cpu/docker/abc/cpu.cfs_quota_us": "200000\n", "sys/cpu/docker/abc/cpu.cfs_period_us": "100000\n"}, 2.0),
        ("4:cpu,cpuacct:/\n", {"sys/cpu/cpu.cfs_quota_us": "-1\n", "sys/cpu/cpu.cfs_period_us": "100000\n"}, None),
        ("4:cpu,cpuacct:/elsewhere\n", {"sys/cpu/cpu.cfs_quota_us": "300000\n", "sys/cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ("", {}, None),  # no cgroup file system at all (macOS, a bare chroot)
    ],
)
def test_the_cgroup_cpu_quota_is_read_where_the_kernel_puts_it(
        tmp_path: Path, proc_cgroup: str, files: dict[str, str], limit: float | None) -> None:
    root = _tree(tmp_path, {"proc-cgroup": proc_cgroup, **files})
    assert cgroup_cpu_limit(root / "sys", root / "proc-cgroup") == limit


def test_the_worker_uses_the_cores_it_may_run_on_and_no_more_than_its_quota_allows() -> None:
    assert cpus_within(8, None) == 8
    assert cpus_within(8, 0.5) == 1  # half a CPU still needs a thread
    assert cpus_within(8, 1.5) == 2
    assert cpus_within(2, 1000.0) == 2  # a quota above the cores the process may use changes nothing
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_figures_name_the_cpu_from_its_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n")
    assert cpu_name(cpuinfo) == "AMD EPYC 9R14 96-Core Processor"
    assert cpu_name(tmp_path / "absent")  # a host without /proc/cpuinfo still names something


def test_a_core_another_process_keeps_busy_is_seen_busy_and_left_out(busy_core: int) -> None:
    assert busy_cpus({busy_core}) == 1
    cores = len(os.sched_getaffinity(0))
    assert free_cpus(cores) <= max(1, cores - 1)  # other processes may keep more busy, never fewer
    assert free_cpus(1) == 1  # a worker bound to one thread keeps it without looking


def test_a_worker_starts_torch_with_a_thread_per_usable_cpu_and_task() -> None:
    assert thread_environment(1, 4) == {"OMP_NUM_THREADS": "4"}
    assert thread_environment(2, 4) == {"OMP_NUM_THREADS": "2"}
