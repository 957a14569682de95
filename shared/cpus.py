"""How many CPUs a worker may use, and so how many threads its torch runs.

A container's CPU limit (Kubernetes ``resources.limits.cpu``, ``docker run --cpus``) is a cgroup quota: the process
still sees every core of the host, and torch would start a thread per core. Threads beyond the quota are throttled
in the middle of an operation while the others wait for them at its end. A core that another process keeps busy
stalls them the same way, so a training job also leaves out the cores it finds busy when it starts
(:func:`free_cpus`). docs/operations.md has the measurements.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
PROC_CPUINFO = Path("/proc/cpuinfo")
BUSY_SHARE = 0.5  # a core busier than this over the probe counts as taken


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path ("" for the unified v2 hierarchy), from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPUs this process's cgroup quota allows (1.5 for a 150 ms per 100 ms quota), None without a quota.

    cgroup v2 (``cpu.max``: "QUOTA PERIOD" or "max PERIOD") and v1 (``cpu.cfs_quota_us``, -1 for none, and
    ``cpu.cfs_period_us``). A container sees its own cgroup as the root, so the root is tried after the
    process's own path."""
    paths = _cgroup_paths(proc_cgroup)
    v2 = [root / paths[""].lstrip("/")] if "" in paths else []
    for directory in [*v2, root]:
        text = _read(directory / "cpu.max")
        if text is not None:
            quota, _, period = text.partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100_000)
    v1_path = paths.get("cpu", "/").lstrip("/")
    for directory in (root / "cpu" / v1_path, root / "cpu"):
        quota_text, period_text = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        if quota_text is not None and period_text is not None:
            return None if int(quota_text) < 0 else int(quota_text) / int(period_text)
    return None


def cpus_within(cores: int, limit: float | None) -> int:
    """Of CORES (the process's affinity), the ones a cgroup LIMIT in CPUs lets it keep busy: rounded up, since a
    quota of 1.5 CPUs keeps 2 threads busy three quarters of the time."""
    return max(1, min(cores, math.ceil(limit))) if limit is not None else cores


def usable_cpus() -> int:
    """The CPUs this process may use: the cores it may run on, fewer when its cgroup quota allows fewer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # not on macOS
    return cpus_within(cores, cgroup_cpu_limit())


def _cpu_times(stat: Path) -> dict[int, tuple[int, int]]:
    """Core -> (busy, total) clock ticks since boot, from /proc/stat's per-core lines."""
    times = {}
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return times


def busy_cpus(cores: set[int], looks: int = 3, window_s: float = 0.1, stat: Path = PROC_STAT) -> int:
    """How many of CORES something kept busy for more than BUSY_SHARE of each of LOOKS windows of WINDOW_S: a
    neighbour that lasts, not a moment's work; 0 where the system does not say (no /proc/stat: not Linux)."""
    busy_throughout = set(cores)
    try:
        before = _cpu_times(stat)
        for _ in range(looks):
            time.sleep(window_s)
            after = _cpu_times(stat)
            busy_throughout &= {core for core in before.keys() & after.keys()
                                if after[core][0] - before[core][0] > BUSY_SHARE * max(1, after[core][1] - before[core][1])}
            before = after
    except OSError:
        return 0
    return len(busy_throughout)


def free_cpus(limit: int) -> int:
    """Threads for a job starting now: at most LIMIT, one per core of this process's affinity that nothing else
    keeps busy, and at least one. Beside a busy core, torch's threads wait at every operation's end for the one
    that shares it: one thread fewer runs several times faster (docs/operations.md)."""
    if limit <= 1 or not hasattr(os, "sched_getaffinity"):
        return max(1, limit)
    cores = os.sched_getaffinity(0)
    return max(1, min(limit, len(cores) - busy_cpus(cores)))


def torch_threads_per_task(concurrency: int, cpus: int) -> int:
    """Intra-op threads for each of CONCURRENCY task threads: the CPUS split between them. Tasks that each spread
    over every core stall at every op's barrier when another task holds one (docs/operations.md)."""
    return max(1, cpus // concurrency)


def thread_environment(concurrency: int, cpus: int) -> dict[str, str]:
    """The OpenMP settings a worker's torch loads with: a thread per usable CPU and task. A fixed count, not one
    that follows the load: a job's weights depend on its thread count (oneDNN splits reductions by thread), and a
    resumed job must end with the weights of an uninterrupted one."""
    return {"OMP_NUM_THREADS": str(torch_threads_per_task(concurrency, cpus))}


def cpu_name(cpuinfo: Path = PROC_CPUINFO) -> str:
    """The host CPU's model name, which every CPU figure is reported with (hosts differ 2-3x in speed)."""
    for line in (_read(cpuinfo) or "").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown CPU"
