"""`augment dashboard`: its pages in a real headless Chromium (Debian's chromium + chromium-driver, through Selenium)
over a real redis-server, the real S3 server and a real worker that trains, generates and evaluates.

One worker, one dashboard and one small training job serve the whole module; the training job is submitted by the
first test that needs it, which watches it run.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from producer.client import Client
from producer.dashboard.app import CSP, dashboard_token, session_value
from producer.dashboard.data import DashboardData, latest_per_step, thin
from shared.lifecycle import FAILURE, SUCCESS
from shared.records import make_record
from shared.settings import Settings, SettingsError
from shared.storage import open_storage
from tests.support.processes import REPO, WorkerProcess, service_env
from tests.support.servers import RedisServer, S3Server, free_port
from tests.support.waiting import wait_for

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_S = 120.0
# a page's condition, polled until WAIT_S: an element replaced between its lookup and its read counts as not yet
page_wait = functools.partial(wait_for, timeout_s=WAIT_S, every_s=0.2, ignoring=(Exception,))

# ---- without servers ----


def test_a_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    assert dashboard_token("127.0.0.1", {}) == "" and dashboard_token("localhost", {}) == ""
    for host in ("0.0.0.0", "192.0.2.7", "127.0.0.2"):
        with pytest.raises(SettingsError, match="AUGMENT_DASHBOARD_TOKEN"):
            dashboard_token(host, {})
    assert dashboard_token("0.0.0.0", {"AUGMENT_DASHBOARD_TOKEN": "s3cret-token"}) == "s3cret-token"
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert dashboard_token("0.0.0.0", {"AUGMENT_DASHBOARD_TOKEN_FILE": str(secret)}) == "from-a-file"


def test_curves_keep_the_latest_record_of_each_step_and_stay_small() -> None:
    resumed = [{"step": 10, "loss_d": 1.0}, {"step": 20, "loss_d": 2.0}, {"step": 20, "loss_d": 2.5}, {"step": 15, "loss_d": 3.0}]
    assert [(r["step"], r["loss_d"]) for r in latest_per_step(resumed)] == [(10, 1.0), (15, 3.0), (20, 2.5)]
    records = [{"step": step} for step in range(1, 2001)]
    thinned = thin(records, 500)
    assert len(thinned) == 500 and thinned[0]["step"] == 1 and thinned[-1]["step"] == 2000
    assert thin(records[:10], 500) == records[:10]


# ---- real servers, real worker, real browser ----


class DashboardProcess:
    """`augment dashboard` as a user starts it, in its own process."""

    def __init__(self, env: dict[str, str], log_path: Path, *options: str, host: str = "127.0.0.1"):
        self.env, self.log_path, self.options, self.host = env, log_path, options, host
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60) -> DashboardProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "producer.cli", "dashboard", "--host", self.host, "--port", str(self.port), *self.options],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        process = self.process

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"dashboard exited with {process.returncode}: {self.log_path.read_text()}")
            urllib.request.urlopen(f"{self.url}/static/dashboard.css", timeout=2).close()
            return True

        try:
            wait_for(serving, timeout, lambda: f"the dashboard to serve; it logged: {self.log_path.read_text()}", every_s=0.2,
                     ignoring=(OSError,))
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class Stack:
    env: dict[str, str]
    client: Client
    dashboard: DashboardProcess
    worker: WorkerProcess
    tmp: Path

    def submit_train(self, **fields: Any) -> str:
        # a reference classifier of 30 steps for the validation curve: the GAN starts within seconds
        return self.client.submit_train(**{"dataset": "fake", "width": 8, "batch_size": 16, "reference_steps": 30, **fields})

    def wait(self, job_id: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        return self.client.wait(job_id, poll_s=0.3, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dashboard")
    broker = redis_server.fresh_db_url()
    env = service_env(broker, s3_server, f"s3://dash-{uuid.uuid4().hex[:12]}/augment", AUGMENT_DATA_DIR=str(tmp / "data"))
    worker = WorkerProcess(env, tmp / "worker.log").start()
    dashboard = DashboardProcess(env, tmp / "dashboard.log", "--allow-cancel")
    try:
        dashboard.start()
        yield Stack(env, Client.connect(Settings.from_env(env)), dashboard, worker, tmp)
    finally:
        dashboard.stop()
        worker.kill()


@pytest.fixture(scope="module")
def training_job(stack: Stack) -> str:
    """A small training job: 28 px fake data, a sample grid every 20 steps, a progress record every 5. Its batches
    are large enough that it runs for several seconds on an idle machine (width 8 and batch 16 took 2 s, over before
    the page's first poll), so that the page sees it running, and small enough that it ends well within the page's
    wait on one contended core with its validation curve (a point every 25 steps; batch 512 did not). Without a
    teacher: the small-data recipe's teacher guidance costs most of a step, and the page is what is tested here."""
    return stack.submit_train(steps=100, log_every=5, sample_every=20, width=32, batch_size=256, teacher=0,
                              validate_every=25)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh installs them with apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, path: Path) -> Path:
    """Save a screenshot and check it shows a page: many colours, not one flat fill."""
    driver.save_screenshot(str(path))
    image = Image.open(path).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 20, f"{path} looks blank ({len(colours)} colours)"
    return path


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes
    url: str


def fetch(url: str, method: str = "GET", **headers: str) -> Reply:
    """One request, its connection closed whatever the answer (HTTP errors are replies here, not exceptions)."""
    request = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.headers, response.read(), response.url)
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read(), url)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id))


def job_row_state(driver: Any, job_id: str) -> str:
    return str(driver.execute_script(
        "const row = document.querySelector(`tr[data-job-id='${arguments[0]}']`);"
        "return row ? row.querySelector('.state').textContent : '';", job_id))


@pytest.mark.integration
def test_jobs_page_updates_a_jobs_state_without_a_reload(stack: Stack, browser: Any) -> None:
    job_id = stack.submit_train(steps=100_000)  # never finishes by itself: the cancel button ends it
    browser.get(stack.dashboard.url + "/")
    page_wait(lambda: job_row_state(browser, job_id) in {"PENDING", "STARTED", "PROGRESS"}, what="the job's row")
    browser.execute_script("window.notReloaded = true")
    browser.find_element("css selector", f"tr[data-job-id='{job_id}'] button.cancel").click()
    page_wait(lambda: job_row_state(browser, job_id) == "CANCELLED", what="CANCELLED in the job's row")
    assert browser.execute_script("return window.notReloaded") is True, "the page was reloaded"
    assert stack.client.state(job_id) == "CANCELLED"
    screenshot(browser, stack.tmp / "jobs.png")
    # the kind filter hides the other kinds; newest first
    assert json.loads(fetch(stack.dashboard.url + "/api/jobs?kind=generate").body)["jobs"] == []
    assert [row["job_id"] for row in json.loads(fetch(stack.dashboard.url + "/api/jobs?state=CANCELLED").body)["jobs"]] == [job_id]


@pytest.mark.integration
def test_training_page_shows_progress_live_then_grids_and_curves(stack: Stack, browser: Any, training_job: str) -> None:
    browser.get(f"{stack.dashboard.url}/jobs/{training_job}")

    def step() -> int:
        detail = text_of(browser, "detail")
        return int(detail.split()[1].split("/")[0]) if detail.startswith("step ") else 0

    first = page_wait(lambda: text_of(browser, "state") == "PROGRESS" and step(), what="a first progress step")
    browser.execute_script("window.notReloaded = true")
    page_wait(lambda: step() > first, what="the step to advance")
    assert browser.execute_script("return window.notReloaded") is True
    assert browser.execute_script("return document.getElementById('progress').value") > 0
    page_wait(lambda: text_of(browser, "state") == "SUCCESS", what="the job to finish on the page")
    page_wait(lambda: browser.execute_script("return document.body.dataset.card") == "1", what="the model card")
    # the page reloaded to show its card; its script knows the grids once its first update is in (on one slow core
    # that comes after the server-rendered page, and a slider moved before it would be put back to the newest)
    page_wait(lambda: text_of(browser, "live").startswith("updated"), what="the reloaded page's first update")

    count = page_wait(lambda: int(text_of(browser, "sample-count")) >= 5 and int(text_of(browser, "sample-count")))
    assert count == 5  # steps 20, 40, ..., 100
    loaded = "const g = document.getElementById('grid'); return g.complete && g.naturalWidth > 0 ? [g.naturalWidth, g.src] : null"
    width, last_src = page_wait(lambda: browser.execute_script(loaded), what="the newest grid to load")
    assert width > 28 and last_src.endswith("step-0000100.png")
    browser.execute_script(
        "const s = document.getElementById('sample-slider'); s.value = 0; s.dispatchEvent(new Event('input'))")
    _, first_src = page_wait(lambda: (lambda r: r if r and r[1] != last_src else None)(browser.execute_script(loaded)),
                            what="the first grid to load")
    assert first_src.endswith("step-0000020.png") and text_of(browser, "sample-step").startswith("step 20 ")
    for chart in ("loss-chart", "d-chart"):
        lines = browser.execute_script(
            "return [...document.querySelectorAll(`#${arguments[0]} polyline`)].map(p => p.points.numberOfItems)", chart)
        assert lines == [20, 20], f"{chart}: {lines}"  # 100 steps, a record every 5
    for chart, series in (("fid-chart", 1), ("pr-chart", 3)):  # precision, recall and label accuracy
        lines = browser.execute_script(
            "return [...document.querySelectorAll(`#${arguments[0]} polyline`)].map(p => p.points.numberOfItems)", chart)
        assert lines == [4] * series, f"{chart}: {lines}"  # measured at steps 25, 50, 75 and 100
    best = text_of(browser, "best-step").split()
    assert best[:3] == ["best", "at", "step"] and best[3] in {"25", "50", "75", "100"} and best[4] == "(fid)"
    assert training_job in text_of(browser, "generate-command")
    assert browser.execute_script("return document.querySelectorAll('pre').length") == 3  # command, spec, model card
    screenshot(browser, stack.tmp / "train.png")


@pytest.mark.integration
def test_generation_page_shows_shards_manifest_and_samples(stack: Stack, browser: Any, training_job: str) -> None:
    stack.wait(training_job)
    job_id = stack.client.submit_generate(model=training_job, count=60, shard_size=25, seed=1)
    assert stack.wait(job_id)["state"] == "SUCCESS"
    browser.get(f"{stack.dashboard.url}/jobs/{job_id}")
    assert text_of(browser, "shards-done") == "3" and text_of(browser, "shards-total") == "3"
    loaded = browser.execute_script("return [...document.querySelectorAll('.strip img')].map(i => i.naturalWidth)")
    assert len(loaded) == 16 and all(width == 28 for width in loaded)
    page = browser.find_element("tag name", "main").text
    assert "60 images of 28×28×1" in page and "s3://" in page and "shard-000002-a1.tar" in page
    assert f'SyntheticJob.open("{job_id}")' in page and 'load_dataset("webdataset"' in page
    manifest_counts = browser.execute_script("return document.querySelectorAll('section table')[0].rows.length")
    assert manifest_counts == 1 + 10  # a header and one row per class of the fake set
    screenshot(browser, stack.tmp / "generate.png")


@pytest.mark.integration
def test_workers_page_lists_the_worker_and_its_queues(stack: Stack, browser: Any) -> None:
    browser.get(f"{stack.dashboard.url}/workers")
    page_wait(lambda: "generate" in browser.find_element("id", "workers-body").text, what="the worker's queues")
    assert f"augment-{stack.worker.pid}@" in browser.find_element("id", "workers-body").text
    screenshot(browser, stack.tmp / "workers.png")


@pytest.mark.integration
def test_values_from_a_job_stay_text(stack: Stack, browser: Any) -> None:
    job_id = f"t-xss{uuid.uuid4().hex[:8]}"
    hostile = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
    stack.client.store.add(make_record(job_id, "train", {"dataset": f"imagefolder:/data/{hostile}", "class_names": [hostile]}))
    stack.client.app.backend.store_result(job_id, {"exc_type": "ValueError", "exc_message": hostile}, FAILURE)
    browser.get(stack.dashboard.url + "/")
    page_wait(lambda: job_row_state(browser, job_id) == "FAILURE", what="the hostile job's row")
    row = browser.find_element("css selector", f"tr[data-job-id='{job_id}']").text
    assert "<script>window.pwned = 1</script>" in row
    browser.get(f"{stack.dashboard.url}/jobs/{job_id}")
    assert hostile in text_of(browser, "error")
    assert f"imagefolder:/data/{hostile}" in text_of(browser, "spec")
    assert browser.execute_script("return window.pwned") is None
    assert browser.execute_script("return document.querySelectorAll('img[src=x], script:not([src])').length") == 0
    screenshot(browser, stack.tmp / "xss.png")


@pytest.mark.integration
def test_a_missing_job_is_a_clean_404(stack: Stack, browser: Any) -> None:
    for path in ("/jobs/t-000000000000", "/jobs/not%20a%20job", "/api/jobs/t-000000000000",
                 "/jobs/t-000000000000/files/grid.png"):
        assert fetch(stack.dashboard.url + path).status == 404, path
    browser.get(f"{stack.dashboard.url}/jobs/t-000000000000")
    assert "no job t-000000000000" in browser.find_element("tag name", "main").text
    screenshot(browser, stack.tmp / "missing.png")


@pytest.mark.integration
def test_files_stay_inside_the_jobs_prefix(stack: Stack, training_job: str) -> None:
    stack.wait(training_job)
    ok = fetch(f"{stack.dashboard.url}/jobs/{training_job}/files/grid.png")
    assert ok.headers["Content-Type"] == "image/png" and ok.body.startswith(b"\x89PNG")
    for name in ("../../models/x/grid.png", "..%2F..%2Fgrid.png", "model.json", "checkpoint.pt", "samples/../grid.png"):
        assert fetch(f"{stack.dashboard.url}/jobs/{training_job}/files/{name}").status == 404, name


@pytest.mark.integration
def test_headers_and_a_cancel_that_did_not_come_from_the_page(stack: Stack) -> None:
    page = fetch(stack.dashboard.url + "/")
    assert page.headers["Content-Security-Policy"] == CSP and "script-src 'self'" in CSP
    assert "<script>" not in page.body.decode()  # no inline script: every <script> has a src
    job_id = stack.submit_train(steps=100_000)
    # a cross-site form can post, but cannot add the dashboard's header
    assert fetch(f"{stack.dashboard.url}/api/jobs/{job_id}/cancel", "POST").status == 403
    assert stack.client.state(job_id) != "CANCELLED"
    cancelled = fetch(f"{stack.dashboard.url}/api/jobs/{job_id}/cancel", "POST", **{"X-Augment-Dashboard": "cancel"})
    assert cancelled.status == 200
    assert stack.wait(job_id)["state"] == "CANCELLED"


@pytest.mark.integration
def test_a_non_loopback_bind_refuses_requests_without_the_token(stack: Stack) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "producer.cli", "dashboard", "--host", "127.0.0.2", "--port", str(free_port())],
        env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2 and "AUGMENT_DASHBOARD_TOKEN" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    token = uuid.uuid4().hex
    guarded = DashboardProcess({**stack.env, "AUGMENT_DASHBOARD_TOKEN": token}, stack.tmp / "guarded.log", host="127.0.0.2")
    guarded.start()
    try:
        for path in ("/api/jobs", "/api/workers", "/api/jobs/t-000000000000"):
            assert fetch(guarded.url + path).status == 401, path
        for wrong in ("", token[:-1], token + "x", token.upper()):
            assert fetch(guarded.url + "/api/jobs", Authorization=f"Bearer {wrong}").status == 401
        page = fetch(guarded.url + "/jobs/t-000000000000")  # redirected to the login form, which never shows the token
        assert page.status == 200 and page.url.endswith("/login") and token not in page.body.decode()
        assert "jobs" in json.loads(fetch(guarded.url + "/api/jobs", Authorization=f"Bearer {token}").body)
        # the login form sets a session cookie derived from the token (not the token), after which pages load
        jar = CookieJar()
        browser_like = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with browser_like.open(guarded.url + "/login", data=f"token={token}".encode()) as logged_in:
            body = logged_in.read().decode()
        assert 'id="jobs-body"' in body and token not in body and 'data-allow-cancel="0"' in body
        # started without --allow-cancel: no cancel, however authorised
        cancel = fetch(f"{guarded.url}/api/jobs/t-000000000000/cancel", "POST", Authorization=f"Bearer {token}",
                       **{"X-Augment-Dashboard": "cancel"})
        assert cancel.status == 403 and b"--allow-cancel" in cancel.body
        assert [cookie.value for cookie in jar] == [session_value(token)] and token not in session_value(token)
        refused_login = fetch(guarded.url + "/login", "POST")
        assert refused_login.status == 401 and "set-cookie" not in refused_login.headers
    finally:
        guarded.stop()


@pytest.mark.integration
def test_a_utility_evaluations_page_and_row_show_its_verdict(stack: Stack, browser: Any) -> None:
    # through the worker, as a user makes one: the report is the one run_utility writes, not a shape built here
    job_id = stack.client.submit_evaluate(mode="utility", dataset="fake", per_class=8, seeds=2, gan_steps=2, gan_width=8,
                                          samples_per_class=4, classifier_steps=10, reference_steps=10, test_limit=100)
    assert stack.wait(job_id, timeout_s=240)["state"] == "SUCCESS"
    assert fetch(f"{stack.dashboard.url}/jobs/{job_id}").status == 200
    browser.get(f"{stack.dashboard.url}/jobs/{job_id}")
    verdict = browser.find_element("id", "verdict").text
    assert "The synthetic data" in verdict and "the GAN's own share: " in verdict and "minus best without" in verdict
    assert "the true-label ceiling adds" in verdict  # real held-out images in the GAN's place
    assert browser.execute_script("return document.querySelectorAll('section.report table tr').length") > 5
    browser.get(stack.dashboard.url + "/?kind=evaluate")
    page_wait(lambda: job_row_state(browser, job_id) == "SUCCESS", what="the utility job's row")
    assert "the GAN's own share" in browser.find_element("css selector", f"tr[data-job-id='{job_id}']").text


@pytest.mark.integration
def test_a_page_that_fails_says_so_in_one_line_and_logs_its_traceback(stack: Stack) -> None:
    # a report this version cannot read is not a server error: the page says why where its verdict goes
    unreadable = f"e-unread{uuid.uuid4().hex[:8]}"
    stack.client.store.add(make_record(unreadable, "evaluate", {"mode": "utility", "dataset": "fake"}))
    stack.client.app.backend.store_result(unreadable, {}, SUCCESS)
    open_storage(Settings.from_env(stack.env)).put_text(f"reports/{unreadable}/report.json", '{"helps": true}')
    page = fetch(f"{stack.dashboard.url}/jobs/{unreadable}")
    assert page.status == 200 and "The report cannot be read" in page.body.decode()
    assert "report.json of evaluate-utility job" in page.body.decode() and "(unversioned) cannot be read" in page.body.decode()
    # a job record no version wrote (a generation spec without its count) fails the page: said in one line, logged whole
    job_id = f"g-broken{uuid.uuid4().hex[:8]}"
    stack.client.store.add(make_record(job_id, "generate", {"model": "t-000000000000"}))
    stack.client.app.backend.store_result(job_id, {}, SUCCESS)
    page = fetch(f"{stack.dashboard.url}/jobs/{job_id}")
    assert page.status == 500 and "the dashboard failed to build this page (SpecError" in page.body.decode()
    api = fetch(f"{stack.dashboard.url}/api/jobs/{job_id}")
    assert api.status == 500 and json.loads(api.body)["error"].startswith("the dashboard failed to build this page")
    logged = stack.dashboard.log_path.read_text()
    assert f"GET /jobs/{job_id} failed" in logged and "Traceback (most recent call last)" in logged and "SpecError" in logged


@pytest.mark.integration
def test_evaluation_page_shows_the_verdict_first_then_the_report(stack: Stack, browser: Any, training_job: str) -> None:
    stack.wait(training_job)
    job_id = stack.client.submit_evaluate(mode="quality", model=training_job, reference_steps=20, classifier_steps=20,
                                          samples_per_class=10, test_limit=100)
    assert stack.wait(job_id, timeout_s=240)["state"] == "SUCCESS"
    browser.get(f"{stack.dashboard.url}/jobs/{job_id}")
    sections = browser.execute_script("return [...document.querySelectorAll('main > section')].map(s => s.className)")
    assert sections[:2] == ["verdict", "report"], sections
    verdict = browser.find_element("id", "verdict").text
    assert f"Quality of model {training_job}" in verdict and "FID " in verdict and "CAS" in verdict
    assert browser.execute_script("return document.querySelectorAll('section.report table tr').length") > 3
    images = browser.execute_script(
        "return [...document.querySelectorAll('.report-images img')].map(i => [i.alt, i.complete && i.naturalWidth])")
    assert dict(images).keys() == {"grid.png", "losses.png"} and all(width > 0 for _, width in images), images
    screenshot(browser, stack.tmp / "evaluate.png")


@pytest.mark.integration
def test_a_job_page_still_shows_live_state_while_storage_cannot_be_read(stack: Stack, training_job: str) -> None:
    # a bucket that no job has made yet (a fresh deployment) reads like an S3 outage: Redis still has the job
    settings = Settings.from_env({**stack.env, "AUGMENT_STORAGE_URL": f"s3://missing-{uuid.uuid4().hex[:8]}"})
    job = DashboardData.connect(settings).job(training_job)
    assert job["state"] in {"PROGRESS", "SUCCESS"} and job["samples"] == [] and job["model_card"] is None
    assert "does not exist" in job["storage_error"]
    assert len(job["history"]) > 0  # the curves come from Redis


@pytest.mark.integration
def test_a_sweeps_page_shows_its_leaderboard_live_then_every_trials_curve_and_the_report(stack: Stack, browser: Any) -> None:
    # through the worker, as `augment sweep` makes one: 4 trials, rungs of 20, 40 and 80 steps
    spec = stack.client.submit_sweep(
        base={"dataset": "fake", "width": 8, "batch_size": 16, "teacher": 0, "reference_steps": 20, "validate_every": 5},
        space={"lr": [1e-4, 3e-4], "mode_seeking": [0.0, 1.0]}, steps=80, min_steps=20, eta=2, poll_s=0.5)
    browser.get(f"{stack.dashboard.url}/jobs/{spec.job_id}")
    rows = "return [...document.querySelectorAll('#leaderboard tr')].map(r => r.cells[3].textContent)"
    page_wait(lambda: len(browser.execute_script(rows)) == 4, what="a leaderboard row per trial")
    page_wait(lambda: text_of(browser, "state") == "SUCCESS", what="the sweep to finish on the page")
    page_wait(lambda: browser.execute_script("return document.querySelector('section.report') !== null"),
              what="the report, once the page rebuilt itself")
    page_wait(lambda: browser.execute_script("return document.querySelectorAll('#sweep-chart polyline').length") == 4,
              what="a curve per trial")
    points = browser.execute_script("return [...document.querySelectorAll('#sweep-chart polyline')].map(p => p.points.numberOfItems)")
    assert sorted(points) == [4, 4, 8, 16], points  # a point every 5 steps, to the steps each trial reached
    leaderboard = browser.find_element("id", "leaderboard").text
    winner = browser.find_element("css selector", "#leaderboard tr.winner").text
    assert leaderboard.splitlines()[0] == winner and "(winner)" in winner and f"{spec.job_id}-t" in winner
    assert browser.execute_script(rows) == ["SUCCESS"] * 4
    assert "Winner: trial" in browser.find_element("css selector", "section.report").text
    screenshot(browser, stack.tmp / "sweep.png")
