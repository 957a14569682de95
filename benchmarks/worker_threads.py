"""Training images/s of a worker's torch under each thread setting, alone and beside a busy process.

Each setting runs our training step (``train_throughput.ours_images_per_s``: the spec defaults, Fashion-MNIST) in
a fresh process, since OpenMP reads its settings when torch loads. The settings: one thread, a thread per usable
CPU with OpenMP's own wait policy (what a worker had before), the same with passive waiting, and what
``augment worker`` now gives (``shared.cpus.thread_environment``). "Beside a busy process" adds a Python loop
pinned to the last usable core for the whole measurement, as another job or a noisy neighbour would be.

    python benchmarks/worker_threads.py [--image-size 32] [--steps 20] [--warmup 3] [--repeats 2]

Prints images/s per setting and condition (the best of --repeats runs); the last line is ``ratio=<the lowest, over
both conditions, of the default's images/s over the best setting's>`` (the target is >= 0.8).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.cpus import thread_environment, usable_cpus

HERE = Path(__file__).resolve().parent
MEASURE = (
    "import sys; sys.path.insert(0, {here!r}); import torch; torch.set_flush_denormal(True); "
    "from train_throughput import ours_images_per_s; "
    "print(ours_images_per_s({size}, 64, 64, {steps}, {warmup}, {{}})[0])"
)


@contextmanager
def busy_core(core: int) -> Iterator[None]:
    spinner = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.machine()


def images_per_s(env: dict[str, str], args: argparse.Namespace) -> float:
    code = MEASURE.format(here=str(HERE), size=args.image_size, steps=args.steps, warmup=args.warmup)
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("OMP_", "GOMP_", "KMP_"))}
    runs = [float(subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True, capture_output=True,
                                 text=True).stdout.strip().splitlines()[-1]) for _ in range(args.repeats)]
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
    settings = {
        "1 thread": {"OMP_NUM_THREADS": "1"},
        f"{cpus} threads, OpenMP's wait policy (before)": {"OMP_NUM_THREADS": str(cpus)},
        f"{cpus} threads, passive wait": {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "PASSIVE"},
    }
    default = thread_environment(1, cpus)
    print(f"host: {cpu_name()}, {cpus} usable CPUs; image {args.image_size}, "
          f"batch 64, width 64, {args.steps} timed steps; default: {default}")
    worst = float("inf")
    last_core = sorted(os.sched_getaffinity(0))[-1]
    for condition in ("alone", f"beside a busy process on core {last_core}"):
        results: dict[str, float] = {}
        for name, env in [*settings.items(), ("default (augment worker)", default)]:
            if condition == "alone":
                results[name] = images_per_s(env, args)
            else:
                with busy_core(last_core):
                    results[name] = images_per_s(env, args)
            print(f"{condition:<32} {name:<44} {results[name]:8.1f} images/s", flush=True)
        share = results["default (augment worker)"] / max(results.values())
        print(f"{condition}: the default reaches {100 * share:.0f} % of the best setting")
        worst = min(worst, share)
    print(f"ratio={worst:.3f}")


if __name__ == "__main__":
    main()
