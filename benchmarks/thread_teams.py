"""Does a training step run slower in a second thread than in the main thread of the same process?

The demo's in-process worker and a ``--pool threads`` worker train outside the main thread. This runs our training
step (``train_throughput.ours_images_per_s``) in the main thread and in fresh second threads, in an order that
shows what matters: second threads before the main thread has run any torch work, then the main thread, then
second threads again. docs/benchmarks.md ("Why a second thread trains slower") has the figures and the reading.

    python benchmarks/thread_teams.py [--image-size 28] [--width 32] [--steps 60] [--warmup 5]

Prints images/s per run; the last line is ``ratio=<a second thread's images/s after the main thread has run torch
work / the main thread's>`` (medians; 1.0 is no penalty).
"""

from __future__ import annotations

import argparse
import statistics
import threading

import torch
from train_throughput import ours_images_per_s

from shared.cpus import cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as a training job sets it
    print(f"host: {cpu_name()}, {torch.get_num_threads()} torch threads; {args.image_size} px, width {args.width}, batch 64")
    rates: dict[str, list[float]] = {}

    def measure(where: str) -> None:
        torch.set_flush_denormal(True)  # per thread: a job sets it in the thread it runs in
        rate = ours_images_per_s(args.image_size, 64, args.width, args.steps, args.warmup, {})[0]
        rates.setdefault(where, []).append(rate)
        print(f"{where:40s} {rate:8.1f} images/s", flush=True)

    def in_second_thread(where: str) -> None:
        thread = threading.Thread(target=measure, args=(where,))
        thread.start()
        thread.join()

    for _ in range(2):
        in_second_thread("second thread, main has run no torch work")
    for _ in range(2):
        measure("main thread")
        in_second_thread("second thread, after the main thread's")
    penalty = statistics.median(rates["second thread, after the main thread's"]) / statistics.median(rates["main thread"])
    print(f"ratio={penalty:.3f}")


if __name__ == "__main__":
    main()
