"""The dashboard under a long watch: page load time with 200 jobs in Redis, and its memory after 30 minutes of polling.

One process starts a real Redis and a SeaweedFS S3 server, writes 200 job records with their Celery states (a mix
of finished, failed, running training jobs with progress, and running generation jobs with shard ledgers), and
starts ``augment dashboard`` as a user would. It then measures:

- page load: the jobs page's HTML plus the ``/api/jobs`` call that fills it (median of 20), and, where Debian's
  chromium and chromium-driver are installed, a real headless browser from navigation to 200 rendered rows;
- memory: the dashboard process's RSS while ``/api/jobs`` is polled once a second (as an open jobs page does) for
  ``--minutes``, with the running jobs' progress changing between polls, sampled at 0, 1/6, 1/3, 2/3 and the end.

The last line is ``ratio=<RSS at the end / RSS at the start>``.

    python benchmarks/dashboard_load.py [--jobs 200] [--minutes 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from producer.client import Client  # noqa: E402
from shared.contracts import GenerateResult, QualityResult, TrainResult  # noqa: E402
from shared.liveness import Fence  # noqa: E402
from shared.progress import TrainProgress  # noqa: E402
from shared.records import ShardRecord, make_record, new_job_id  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.support.processes import service_env  # noqa: E402
from tests.support.servers import RedisServer, S3Server, free_port  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def populate(client: Client, jobs: int) -> list[str]:
    """JOBS records in a realistic mix; returns the ids of the running training jobs (their progress moves)."""
    running = []
    for index in range(jobs):
        kind = ("train", "generate", "evaluate")[index % 3]
        job_id = new_job_id(kind)
        spec = {"job_id": job_id, "dataset": "fake", "steps": 1000} if kind != "generate" else {
            "job_id": job_id, "model": "t-000000000000", "count": 10_000, "shard_size": 1000, "seed": index}
        client.store.add(make_record(job_id, kind, spec))
        fate = index % 5
        if fate == 0 and kind == "train":
            running.append(job_id)
            progress(client, job_id, 10)
        elif fate == 0 and kind == "generate":
            client.store.set_field(job_id, "started_at", repr(time.time()))
            for shard in range(4):
                record = ShardRecord(name=f"shard-{shard:06d}-a1.tar", count=1000, size=1, sha256="0" * 64, class_counts={})
                token = client.store.liveness.take(job_id, f"shard:{shard}", "load/1", 60)
                assert token is not None
                client.store.put_shard(job_id, shard, record, Fence(f"{job_id}:shard:{shard}", token))
            client.states.progress(job_id)
        elif fate == 1:
            client.states.failed(job_id, ValueError("bad input"))
        elif fate != 4:  # fate 4 stays queued (PENDING)
            client.states.succeeded(job_id, finished(kind, job_id))
    return running


def finished(kind: str, job_id: str) -> TrainResult | GenerateResult | QualityResult:
    """A finished job's result of KIND, with made-up figures and URLs: the dashboard renders it as any other."""
    url = f"s3://bench/{job_id}"
    if kind == "train":
        return TrainResult(model=job_id, steps=1000, model_card=url, checkpoint=url, grid=url, loss_curve=url, final={})
    if kind == "generate":
        return GenerateResult(manifest=url, images=10_000, shards=10)
    return QualityResult(report=url, files=[], fid=12.5, precision=0.7, recall=0.3, label_accuracy=0.9, cas=0.8)


def progress(client: Client, job_id: str, step: int) -> None:
    client.states.progress(job_id, TrainProgress(step=step, total_steps=100_000, epoch=step // 100, loss_d=1.2, loss_g=0.8,
                                                 d_x=0.6, d_g_z=0.4, images_per_s=900.0, eta_s=300.0))


def timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    return time.perf_counter() - started


def browser_load_s(url: str, jobs: int, repeats: int = 5) -> float | None:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            driver.get(url)
            while driver.execute_script("return document.querySelectorAll('#jobs-body tr[data-job-id]').length") < jobs:
                time.sleep(0.01)
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dashboard-load-") as tmp, RedisServer() as redis_server, S3Server() as s3:
        env = service_env(redis_server.url, s3, f"s3://load-{uuid.uuid4().hex[:8]}", AUGMENT_DATA_DIR=tmp)
        client = Client.connect(Settings.from_env(env))
        running = populate(client, args.jobs)
        port = free_port()
        log = open(Path(tmp) / "dashboard.log", "wb")
        dashboard = subprocess.Popen([sys.executable, "-m", "producer.cli", "dashboard", "--port", str(port)],
                                     env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    timed_get(base + "/static/dashboard.css")
                    break
                except OSError:
                    if time.monotonic() > deadline or dashboard.poll() is not None:
                        raise RuntimeError((Path(tmp) / "dashboard.log").read_text()) from None
                    time.sleep(0.2)
            for _ in range(3):  # warm: imports, templates, connections
                timed_get(base + "/api/jobs")
            page = [timed_get(base + "/") + timed_get(base + "/api/jobs") for _ in range(20)]
            print(f"jobs in Redis: {args.jobs}")
            print(f"jobs page HTML + /api/jobs: median {1000 * statistics.median(page):.0f} ms, max {1000 * max(page):.0f} ms")
            browser = browser_load_s(base + "/", args.jobs)
            if browser is not None:
                print(f"headless chromium, navigation to {args.jobs} rendered rows: median {1000 * browser:.0f} ms")

            duration_s = args.minutes * 60
            marks = [0.0, duration_s / 6, duration_s / 3, 2 * duration_s / 3, duration_s]
            samples: list[tuple[float, int]] = []
            started = time.monotonic()
            polls, step, slowest = 0, 10, 0.0
            while marks:
                elapsed = time.monotonic() - started
                if elapsed >= marks[0]:
                    marks.pop(0)
                    samples.append((elapsed, rss_kib(dashboard.pid)))
                    print(f"t={elapsed / 60:5.1f} min  polls={polls:5d}  RSS={samples[-1][1] / 1024:6.1f} MiB", flush=True)
                    continue
                step += 5
                for job_id in running:
                    progress(client, job_id, step)
                slowest = max(slowest, timed_get(base + "/api/jobs"))
                polls += 1
                time.sleep(max(0.0, args.interval - (time.monotonic() - started - elapsed)))
            print(f"polls: {polls}, slowest /api/jobs: {1000 * slowest:.0f} ms")
            print(f"RSS start {samples[0][1] / 1024:.1f} MiB, end {samples[-1][1] / 1024:.1f} MiB")
            print(f"ratio={samples[-1][1] / samples[0][1]:.3f}")
        finally:
            dashboard.terminate()
            dashboard.wait(10)
            log.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
