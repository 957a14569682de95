"""Training images/s of a worker's torch under each thread count: alone, beside a busy process, and in a container
whose CPU quota is below the cores it sees.

Each setting runs our training step (``train_throughput.ours_images_per_s``: the spec defaults, Fashion-MNIST) in
a fresh process, since OpenMP reads its thread count when torch loads. The settings: one thread, a thread per core
(what a worker had before), and what a training job on ``augment worker`` now runs with (``shared.cpus``: a thread
per usable CPU, from the affinity and the cgroup quota, less the cores something else keeps busy when the job
starts; worked out inside the measured process as the worker and the job do). The conditions:
alone; beside a Python loop pinned to the last core, as another job or a noisy neighbour would be; and inside a
cgroup with a quota of one CPU (needs root and a writable cgroup file system, v1 or v2; skipped otherwise).

    python benchmarks/worker_threads.py [--image-size 32] [--steps 20] [--warmup 3] [--repeats 2]

Prints images/s per setting and condition (the best of --repeats runs); the last line is ``ratio=<the lowest, over
the conditions, of the default's images/s over the best setting's>``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from shared.cpus import CGROUP_ROOT, cpu_name, usable_cpus  # noqa: E402
from tests.support.processes import spinning_on  # noqa: E402

DEFAULT = "default (augment worker)"
# the measured process: the default's thread count is worked out in it, inside its cgroup, before torch loads
MEASURE = (
    "import os, sys; sys.path.insert(0, {here!r}); from shared.cpus import thread_environment, usable_cpus; "
    "os.environ.update(thread_environment(1, usable_cpus()) if {default} else {{}}); "
    "import torch; torch.set_flush_denormal(True); from train_throughput import ours_images_per_s; "
    "from shared.settings import Settings; from worker.threads import job_threads; "
    "torch.set_num_threads(job_threads(Settings(), None)) if {default} else None; "
    "print(ours_images_per_s({size}, 64, 64, {steps}, {warmup}, {{}})[0])"
)


@contextmanager
def busy_core(core: int) -> Iterator[list[str]]:
    """Another process keeps CORE busy; the measured process starts as usual (no command prefix)."""
    with spinning_on(core):
        yield []


@contextmanager
def one_cpu_quota() -> Iterator[list[str]]:
    """A cgroup whose quota is one CPU; yields the command prefix that starts a process in it."""
    name = f"augment-bench-{uuid.uuid4().hex[:8]}"
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    group = CGROUP_ROOT / name if v2 else CGROUP_ROOT / "cpu" / name
    group.mkdir()
    try:
        if v2:
            (group / "cpu.max").write_text("100000 100000")
        else:
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text("100000")
        yield ["sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$0" "$@"']
    finally:
        group.rmdir()


def images_per_s(env: dict[str, str], default: bool, prefix: list[str], args: argparse.Namespace) -> float:
    code = MEASURE.format(here=str(HERE), default=default, size=args.image_size, steps=args.steps, warmup=args.warmup)
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("OMP_", "GOMP_", "KMP_"))}
    runs = [float(subprocess.run([*prefix, sys.executable, "-c", code], env={**clean, **env}, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for _ in range(args.repeats)]
    return max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cpus = usable_cpus()
    if cpus < 2:
        sys.exit(f"this process may use {cpus} CPU; the comparison needs 2 or more")
    settings = {"1 thread": {"OMP_NUM_THREADS": "1"}, f"{cpus} threads (a thread per core)": {"OMP_NUM_THREADS": str(cpus)},
                DEFAULT: {}}
    print(f"host: {cpu_name()}, {cpus} usable CPUs; image {args.image_size}, batch 64, width 64, {args.steps} timed steps")
    last_core = sorted(os.sched_getaffinity(0))[-1]
    conditions = {"alone": contextmanager(lambda: iter([[]])), f"beside a busy process on core {last_core}":
                  lambda: busy_core(last_core)}
    if os.geteuid() == 0 and os.access(CGROUP_ROOT, os.W_OK):
        conditions["in a cgroup with a 1-CPU quota"] = one_cpu_quota
    worst = float("inf")
    for condition, enter in conditions.items():
        results: dict[str, float] = {}
        for name, env in settings.items():
            with enter() as prefix:
                results[name] = images_per_s(env, name == DEFAULT, prefix, args)
            print(f"{condition:<32} {name:<28} {results[name]:8.1f} images/s", flush=True)
        share = results[DEFAULT] / max(results.values())
        print(f"{condition}: the default reaches {100 * share:.0f} % of the best setting")
        worst = min(worst, share)
    print(f"ratio={worst:.3f}")


if __name__ == "__main__":
    main()
