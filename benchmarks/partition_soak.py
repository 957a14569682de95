"""Partition soak: the partition scenarios of tests/test_partitions.py, run again and again on one fleet, with figures.

One fleet in network namespaces (tests/support/partitions.py: Redis with AOF and the SeaweedFS S3 gateway each on a
host of its own, two worker hosts each running a training and a generation worker, the shipped settings). Each run
submits a training job and a generation job, waits until one host runs the training job and a shard at once, and
partitions it, cycling through the scenarios:

- everything-after / everything-before: that host cut from everything, healed after both jobs finished, or as
  another worker takes over one of its parts;
- redis-after / redis-before: that host cut from Redis only (packets dropped both ways);
- redis-cut: Redis cut from every worker for 35 s, then healed.

Every run makes the tests' checks (both jobs succeed; every shard listed once, with its size and sha256; what a
finished job leaves unchanged 30 s after the heal; state and progress never go backwards). A run whose check fails
counts as corrupted (a finished job's bytes changed, a manifest that does not match storage, state or progress that
went back), lost (a job that ended other than SUCCESS) or stuck (a job not done within the bound); its message is
printed. Per run it prints the seconds from the cut to both jobs done (a worker cut off: the takeover's time) and
from the heal to both jobs done (Redis cut). The last line is ``ratio=<runs without a failure / runs>``.

Needs root (network namespaces) and nftables.

    python benchmarks/partition_soak.py [--runs 20] [--scenarios everything-after,everything-before,redis-after,...]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.cpus import cpu_name  # noqa: E402
from tests.support.netns import netns_unavailable  # noqa: E402
from tests.support.partitions import Run, fleet_in_network, redis_cut, worker_cut  # noqa: E402

SCENARIOS = {
    "everything-after": lambda run: worker_cut(run, "everything", "after"),
    "everything-before": lambda run: worker_cut(run, "everything", "before"),
    "redis-after": lambda run: worker_cut(run, "redis", "after"),
    "redis-before": lambda run: worker_cut(run, "redis", "before"),
    "redis-cut": redis_cut,
}


def verdict(message: str) -> str:
    """What a failed check means for the soak's counts."""
    if "timed out" in message:
        return "stuck"
    if " ended " in message:
        return "lost"
    return "corrupted"



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    names = [name.strip() for name in args.scenarios.split(",")]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    reason = netns_unavailable()
    if reason:
        raise SystemExit(f"partition soak: {reason}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so namespaces and servers are torn down
    print(f"{args.runs} runs of {', '.join(names)} on {cpu_name()}", flush=True)

    failures: dict[str, int] = {"corrupted": 0, "lost": 0, "stuck": 0}
    after_cut: dict[str, list[float]] = {}
    after_heal: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="partition-soak-") as scratch, fleet_in_network(Path(scratch)) as fleet:
        for number in range(args.runs):
            name = names[number % len(names)]
            run = Run(fleet)
            started = time.monotonic()
            try:
                SCENARIOS[name](run)
            except AssertionError as exc:
                kind = verdict(str(exc))
                failures[kind] += 1
                print(f"run {number + 1:2d} {name:18s} {kind.upper()}: {str(exc).splitlines()[0]}", flush=True)
                continue
            finally:
                run.close()
                fleet.net.heal_all()
            done = max(snapshot.at for snapshot in run.snapshots.values())
            after_cut.setdefault(name, []).append(done - run.cut_at)
            if done > run.healed_at:  # the jobs waited for the heal (Redis cut off, or a heal before the takeover ended)
                after_heal.setdefault(name, []).append(done - run.healed_at)
            print(f"run {number + 1:2d} {name:18s} ok: both jobs done {done - run.cut_at:5.1f} s after the cut, "
                  f"{done - run.healed_at:6.1f} s after the heal (run {time.monotonic() - started:.0f} s)", flush=True)

    print("\nscenario            runs  done after the cut (median / max)  done after the heal (median / max)")
    for name in names:
        cut, heal = after_cut.get(name, []), after_heal.get(name, [])
        if cut:
            healed = f"{statistics.median(heal):8.1f} / {max(heal):5.1f} s ({len(heal)} runs)" if heal else "   before the heal"
            print(f"{name:18s} {len(cut):5d}  {statistics.median(cut):8.1f} / {max(cut):5.1f} s{'':17s}{healed}")
    print(f"corrupted {failures['corrupted']}, lost {failures['lost']}, stuck {failures['stuck']}")
    print(f"ratio={sum(len(times) for times in after_cut.values()) / max(args.runs, 1):.3f}")


if __name__ == "__main__":
    main()
