// Live parts of the dashboard's pages: each page polls the JSON API and updates the DOM in place.
// Every value from a job is set with textContent (never innerHTML), so it stays text whatever it contains.
"use strict";
(function () {
  const POLL_MS = 2000;
  const TERMINAL = new Set(["SUCCESS", "FAILURE", "CANCELLED", "REVOKED"]);
  const body = document.body;
  const allowCancel = body.dataset.allowCancel === "1";

  function $(id) { return document.getElementById(id); }

  function node(tag, text, className) {
    const element = document.createElement(tag);
    if (text !== undefined && text !== null) element.textContent = String(text);
    if (className) element.className = className;
    return element;
  }

  function eta(seconds) {
    if (seconds === null || seconds === undefined) return "";
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    const mm = String(m).padStart(2, "0"), ss = String(s).padStart(2, "0");
    return h ? h + "h" + mm + "m" + ss + "s" : m + "m" + ss + "s";
  }


  async function api(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, options || {}));
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  function poll(update) {
    async function tick() {
      let again = true;
      try {
        again = (await update()) !== false;
        $("live").textContent = "updated " + new Date().toLocaleTimeString();
      } catch (error) {
        $("live").textContent = "update failed: " + error.message;
      }
      if (again) setTimeout(tick, POLL_MS);
    }
    tick();
  }

  async function cancel(jobId, button) {
    button.disabled = true;
    try {
      await api("/api/jobs/" + encodeURIComponent(jobId) + "/cancel", { method: "POST", headers: { "X-Augment-Dashboard": "cancel" } });
    } catch (error) {
      button.disabled = false;
      $("live").textContent = "cancel failed: " + error.message;
    }
  }

  function message(text, columns) {
    const tr = document.createElement("tr");
    const td = node("td", text);
    td.colSpan = columns;
    tr.appendChild(td);
    return tr;
  }

  function progressBar(fraction) {
    const bar = document.createElement("progress");
    bar.max = 1;
    if (fraction !== null && fraction !== undefined) bar.value = fraction;
    return bar;
  }

  // ---- jobs ----
  function jobsPage() {
    const kind = $("filter-kind"), state = $("filter-state"), tbody = $("jobs-body");
    function query() {
      const params = new URLSearchParams();
      if (kind.value) params.set("kind", kind.value);
      if (state.value) params.set("state", state.value);
      return params;
    }
    function row(job) {
      const tr = document.createElement("tr");
      tr.dataset.jobId = job.job_id;
      const link = node("a", job.job_id);
      link.href = "/jobs/" + encodeURIComponent(job.job_id);
      const first = node("td"); first.appendChild(link); tr.appendChild(first);
      tr.appendChild(node("td", job.kind));
      const stateCell = node("td"); stateCell.appendChild(node("span", job.state, "state state-" + job.state)); tr.appendChild(stateCell);
      const progress = node("td");
      progress.appendChild(progressBar(job.fraction));
      progress.appendChild(node("span", " " + (job.error || job.detail)));
      for (const warning of job.warnings) progress.appendChild(node("div", warning, "warning"));
      tr.appendChild(progress);
      tr.appendChild(node("td", job.rate));
      tr.appendChild(node("td", TERMINAL.has(job.state) ? "" : eta(job.eta_s)));
      tr.appendChild(node("td", new Date(job.submitted_at * 1000).toLocaleString()));
      const actions = node("td");
      if (allowCancel && job.cancellable) {
        const button = node("button", "cancel", "cancel");
        button.type = "button";
        button.addEventListener("click", () => cancel(job.job_id, button));
        actions.appendChild(button);
      }
      tr.appendChild(actions);
      return tr;
    }
    async function update() {
      const data = await api("/api/jobs?" + query().toString());
      tbody.replaceChildren(...data.jobs.map(row));
      if (data.jobs.length === 0) tbody.replaceChildren(message("no jobs", 8));
      $("job-count").textContent = data.jobs.length + " jobs";
    }
    for (const select of [kind, state]) {
      select.addEventListener("change", () => {
        history.replaceState(null, "", "/?" + query().toString());
        update();
      });
    }
    poll(update);
  }

  // ---- the header every job page shares ----
  function updateHeader(job) {
    $("state").textContent = job.state;
    $("state").className = "state state-" + job.state;
    const bar = $("progress");
    if (job.fraction !== null && job.fraction !== undefined) bar.value = job.fraction; else bar.removeAttribute("value");
    $("detail").textContent = job.detail;
    $("rate").textContent = job.rate;
    $("eta").textContent = TERMINAL.has(job.state) || job.eta_s === null ? "" : "ETA " + eta(job.eta_s);
    $("storage-error").textContent = job.storage_error;
    $("storage-error").hidden = !job.storage_error;
    $("error").textContent = job.error;
    $("error").hidden = !job.error;
    $("warnings").replaceChildren(...job.warnings.map((warning) => node("li", warning)));
    $("warning-count").textContent = String(job.warnings.length);
    $("warning-first").textContent = job.warnings.length ? job.warnings[0] : "";
    $("warnings-box").hidden = job.warnings.length === 0;
    const button = $("cancel");
    if (button) button.hidden = !job.cancellable;
  }

  function bindCancel() {
    const button = $("cancel");
    if (button) button.addEventListener("click", () => cancel(button.dataset.jobId, button));
  }

  function jobApi() { return "/api/jobs/" + encodeURIComponent(body.dataset.jobId); }

  // ---- training ----
  function trainPage() {
    const slider = $("sample-slider"), grid = $("grid");
    let samples = [];
    function show(index) {
      const sample = samples[index];
      if (!sample) return;
      grid.hidden = false;
      if (grid.getAttribute("src") !== sample.url) grid.src = sample.url;
      $("sample-step").textContent = "step " + sample.step + " (" + (index + 1) + " of " + samples.length + ")";
    }
    slider.addEventListener("input", () => show(Number(slider.value)));
    function series(history, names, colors) {
      return names.map((name, i) => ({ name: name[1], color: colors[i], points: history.map((r) => [r.step, r[name[0]]]) }));
    }
    async function update() {
      const job = await api(jobApi());
      updateHeader(job);
      const atEnd = samples.length === 0 || Number(slider.value) === samples.length - 1;
      samples = job.samples;
      slider.max = String(Math.max(samples.length - 1, 0));
      if (atEnd) slider.value = slider.max;  // follow the newest grid unless the user is looking back
      show(Number(slider.value));
      $("sample-count").textContent = String(samples.length);
      window.AugmentChart.draw($("loss-chart"), series(job.history, [["loss_d", "loss_D"], ["loss_g", "loss_G"]], ["#2f6fde", "#e8710a"]));
      window.AugmentChart.draw($("d-chart"), series(job.history, [["d_x", "D(x)"], ["d_g_z", "D(G(z))"]], ["#1e8e3e", "#c5221f"]), [0, 1]);
      const noCurve = job.curve_note || "no validation measurement yet";
      window.AugmentChart.draw($("fid-chart"), series(job.curve, [["fid", "FID"]], ["#2f6fde"]), null, noCurve);
      window.AugmentChart.draw($("pr-chart"), series(job.curve, [["precision", "precision"], ["recall", "recall"],
        ["label_accuracy", "label accuracy"]], ["#1e8e3e", "#e8710a", "#9334e6"]).filter((s) => s.points.some((p) => p[1] !== null)),
        [0, 1], noCurve);
      $("best-step").textContent = job.best ? "best at step " + job.best.step + " (" + job.select + ")" : "";
      if (!TERMINAL.has(job.state)) return true;
      // the model card is written last: rebuild the page once so its section shows, then stop polling
      if (job.model_card && body.dataset.card !== "1") location.reload();
      return false;
    }
    bindCancel();
    poll(update);
  }

  // whether a page rendered while its job ran polls on: once the job has ended, the page is rebuilt once with what
  // the job left (its report, its manifest)
  function keepPolling(job, renderedState) {
    if (!TERMINAL.has(job.state)) return true;
    if (!TERMINAL.has(renderedState)) location.reload();
    return false;
  }

  // ---- generation and evaluation: live header; the page is rebuilt once when the job ends ----
  function outputPage() {
    const renderedState = body.dataset.state;
    async function update() {
      const job = await api(jobApi());
      updateHeader(job);
      if ($("shards-done")) {
        $("shards-done").textContent = job.shards_done;
        $("images-done").textContent = job.images_done;
      }
      return keepPolling(job, renderedState);
    }
    bindCancel();
    poll(update);
  }

  // ---- sweeps: every trial's curve and the leaderboard, live; the page is rebuilt once when the sweep ends ----
  const PALETTE = ["#2f6fde", "#e8710a", "#1e8e3e", "#c5221f", "#9334e6", "#12a4af", "#b06000", "#5f6368"];
  function sweepPage() {
    const renderedState = body.dataset.state;
    function cell(text) { return node("td", text === null || text === undefined ? "-" : String(text)); }
    async function update() {
      const job = await api(jobApi());
      updateHeader(job);
      const series = job.curves.map((c, i) => ({ name: c.name, color: PALETTE[i % PALETTE.length], points: c.points }));
      window.AugmentChart.draw($("sweep-chart"), series, null, "no validation measurement yet");
      $("leaderboard").replaceChildren(...job.trials.map((row) => {
        const tr = document.createElement("tr");
        if (row.winner) tr.className = "winner";
        tr.appendChild(cell(row.trial + (row.winner ? " (winner)" : "")));
        tr.appendChild(cell(row.settings));
        tr.appendChild(cell(row.steps));
        tr.appendChild(cell(row.state));
        tr.appendChild(cell(row.best === null ? null : Number(row.best).toPrecision(4)));
        tr.appendChild(cell(row.best_step));
        const jobs = node("td");
        for (const id of row.jobs) {
          const a = node("a", id);
          a.href = "/jobs/" + encodeURIComponent(id);
          jobs.append(a, " ");
        }
        tr.appendChild(jobs);
        return tr;
      }));
      return keepPolling(job, renderedState);
    }
    bindCancel();
    poll(update);
  }

  // ---- workers ----
  function workersPage() {
    const tbody = $("workers-body");
    async function update() {
      const data = await api("/api/workers");
      tbody.replaceChildren(...data.workers.map((worker) => {
        const tr = document.createElement("tr");
        tr.appendChild(node("td", worker.name));
        tr.appendChild(node("td", worker.answered ? "yes" : "no (busy)"));
        tr.appendChild(node("td", worker.pool));
        tr.appendChild(node("td", worker.concurrency));
        tr.appendChild(node("td", worker.queues.join(", ")));
        const running = node("td");
        for (const task of worker.running) running.appendChild(node("div", task));
        tr.appendChild(running);
        return tr;
      }));
      if (data.workers.length === 0) tbody.replaceChildren(message("no worker answered", 6));
    }
    poll(update);
  }

  const pages = { jobs: jobsPage, train: trainPage, generate: outputPage, evaluate: outputPage, sweep: sweepPage, job: outputPage,
    workers: workersPage };
  const start = pages[body.dataset.page];
  if (start) start();
})();
