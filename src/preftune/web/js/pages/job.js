// One job: status and progress, live uPlot charts of its metrics (training and eval series), the event
// log, checkpoints with downloads and "continue from this checkpoint", and cancel.

import { api, download } from "../api.js";
import { badge, confirmAction, errorBox, flash, fmtDuration, fmtNum, fmtTime, h, poll } from "../ui.js";
import { ACTIVE, methodName, progressCell } from "./jobs.js";

// Which metric keys go on which chart; matched against the key with any eval prefix removed.
export const CHARTS = [
  ["loss", "Loss", (k) => /(^|[/_.])loss$/.test(k) || k === "loss"],
  ["accuracy", "Reward accuracy", (k) => /accurac/.test(k)],
  ["margin", "Reward margin", (k) => /margin/.test(k)],
  ["logps", "Log-probs: chosen and rejected", (k) => /logp/.test(k)],
  ["lr", "Learning rate", (k) => k === "learning_rate" || k === "lr"],
];
const NOT_SERIES = new Set(["step", "total_steps", "epoch", "eta_seconds", "time", "timestamp", "created_at",
  "elapsed_seconds", "tokens_per_second", "examples_per_second", "split", "phase", "type", "object"]);
const EVAL_RE = /^eval[/_.]/;
const COLORS = ["#0b5cad", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

/** The last step's speed: pairs (or examples) per second over all processes, and MFU per device. */
export function throughput(m) {
  if (!m) return "—";
  const parts = [];
  const rate = m.pairs_per_s ?? m.examples_per_s;
  if (typeof rate === "number") parts.push(`${rate.toFixed(2)} ${m.pairs_per_s != null ? "pairs/s" : "examples/s"}`);
  if (typeof m.mfu === "number") parts.push(`MFU ${(100 * m.mfu).toPrecision(2)}%`);
  return parts.length ? parts.join(" · ") : "—";
}

/** Metric rows -> {chartKey: {labels: [series names], steps: [...], values: {name: [...]}}}. */
export function seriesFrom(rows) {
  const charts = Object.fromEntries(CHARTS.map(([key]) => [key, new Map()]));
  for (const row of rows) {
    if (typeof row.step !== "number") continue;
    const rowIsEval = ["eval", "validation"].includes(row.split ?? row.phase ?? row.type);
    for (const [rawKey, value] of Object.entries(row)) {
      if (NOT_SERIES.has(rawKey) || typeof value !== "number" || !Number.isFinite(value)) continue;
      const isEval = rowIsEval || EVAL_RE.test(rawKey);
      const key = rawKey.replace(EVAL_RE, "");
      const chart = CHARTS.find(([, , match]) => match(key));
      if (!chart) continue;
      const name = `${isEval ? "eval" : "train"} ${key}`;
      const series = charts[chart[0]];
      if (!series.has(name)) series.set(name, new Map());
      series.get(name).set(row.step, value);
    }
  }
  const out = {};
  for (const [chartKey, series] of Object.entries(charts)) {
    const steps = [...new Set([...series.values()].flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
    out[chartKey] = { steps, names: [...series.keys()], values: [...series.values()].map((m) => steps.map((s) => m.get(s) ?? null)) };
  }
  return out;
}

/** Tick labels with just enough digits to tell neighbouring ticks apart (loss may move by 1e-4). */
export function axisLabels(ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : Math.abs(ticks[0] || 1);
  const biggest = Math.max(...ticks.map(Math.abs));
  if (biggest !== 0 && (biggest < 1e-3 || biggest >= 1e6)) {
    const digits = Math.min(6, Math.max(1, Math.ceil(Math.log10(biggest / step))));
    return ticks.map((v) => (v === 0 ? "0" : v.toExponential(digits)));
  }
  const decimals = step > 0 ? Math.min(8, Math.max(0, -Math.floor(Math.log10(step)))) : 0;
  return ticks.map((v) => v.toFixed(decimals));
}

/** A chart panel that owns one uPlot instance and redraws it when the series change. */
class Chart {
  constructor(title) {
    this.title = title;
    this.body = h("div", h("div.empty", "No points yet."));
    this.el = h("figure.chart", { role: "group", "aria-label": title, style: "margin:0" }, h("h3", title), this.body);
    this.plot = null;
    this.names = "";
    this.points = 0;
  }

  update(data, totalSteps) {
    // The x axis spans the whole run from the start, so the curve visibly grows towards the end.
    this.totalSteps = totalSteps || 0;
    this.points = data.steps.length;
    this.el.dataset.points = String(this.points);
    if (!data.steps.length || !window.uPlot) return;
    const names = data.names.join("|");
    const payload = [data.steps, ...data.values];
    if (this.plot && names === this.names) {
      this.plot.setData(payload);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.names = names;
    this.body.replaceChildren();
    const width = Math.max(260, this.el.clientWidth - 20);
    this.plot = new window.uPlot({
      width,
      height: 200,
      scales: { x: { time: false, range: (u, min, max) => [Math.min(min, 1), Math.max(max, this.totalSteps, min + 1)] } },
      axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] }, { size: 70, values: (u, ticks) => axisLabels(ticks) }],
      series: [{ label: "step" }, ...data.names.map((name, i) => ({
        label: name,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        dash: name.startsWith("eval") ? [6, 4] : undefined,
        spanGaps: true,
        points: { show: name.startsWith("eval") || data.steps.length < 3 },
        value: (u, v) => (v === null ? "—" : fmtNum(v)),
      }))],
    }, payload, this.body);
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(260, this.el.clientWidth - 20), height: 200 });
  }

  destroy() {
    if (this.plot) this.plot.destroy();
  }
}

function listOf(response) {
  return Array.isArray(response) ? response : response?.data || [];
}

export function render(main, { params: [id] }) {
  const path = `/fine-tunes/${encodeURIComponent(id)}`;
  const header = h("div", h("p.muted", "Loading job…"));
  const errorSlot = h("div");
  const charts = CHARTS.map(([key, title]) => [key, new Chart(title)]);
  const chartGrid = h("div.grid2", charts.map(([, c]) => c.el));
  const events = h("ol.events", { "aria-label": "Event log" });
  const checkpoints = h("div", h("p.muted", "None yet."));
  const hyper = h("div");
  const evaluation = h("div", h("p.muted", "Loading…"));
  const curves = h("div", { "data-testid": "curves" }, h("p.muted", "The curves picture appears when the job ends."));
  let curvesShown = false;
  main.append(h("p", h("a", { href: "#/jobs" }, "← Jobs")), header, errorSlot,
    h("section", { "aria-label": "Charts" }, h("h2", "Metrics"), chartGrid),
    h("div.grid2",
      h("section.panel", { "aria-label": "Held-out evaluation" }, h("h2", { style: "margin-top:0" }, "Held-out evaluation"), evaluation),
      h("section.panel", { "aria-label": "Curves" }, h("h2", { style: "margin-top:0" }, "Curves (curves.png)"), curves)),
    h("div.grid2",
      h("section.panel", { "aria-label": "Events" }, h("h2", { style: "margin-top:0" }, "Events"), events),
      h("section.panel", { "aria-label": "Checkpoints" }, h("h2", { style: "margin-top:0" }, "Checkpoints and outputs"), checkpoints)),
    h("details.group", h("summary", "Hyperparameters"), hyper));

  let job = null;
  let active = true;
  // Metrics and events are fetched incrementally, so a long run costs the same per poll as a short one.
  const metricRows = new Map(); // "split:step" -> row
  let lastStep = 0;
  const eventList = [];
  const eventIds = new Set();

  async function fetchNewMetrics() {
    // One step back: an eval row can land after the train row of the same step was fetched.
    const after = Math.max(0, lastStep - 1);
    const rows = listOf(await api(`${path}/metrics${after ? `?after_step=${after}` : ""}`));
    for (const row of rows) {
      metricRows.set(`${row.split || "train"}:${row.step}`, row);
      if (typeof row.step === "number") lastStep = Math.max(lastStep, row.step);
    }
  }

  async function fetchNewEvents() {
    for (;;) {
      const last = eventList.length ? eventList[eventList.length - 1].id : null;
      const page = await api(`${path}/events?limit=1000${last ? `&after=${encodeURIComponent(last)}` : ""}`);
      const fresh = listOf(page).filter((e) => !eventIds.has(e.id));
      fresh.forEach((e) => eventIds.add(e.id));
      eventList.push(...fresh);
      if (!page.has_more || !fresh.length) return;
    }
  }
  const observer = new ResizeObserver(() => charts.forEach(([, c]) => c.resize()));
  observer.observe(chartGrid);

  const stop = poll(async () => {
    const [j, , , cks] = await Promise.all([
      api(path),
      fetchNewMetrics(),
      fetchNewEvents(),
      api(`${path}/checkpoints`).catch(() => []),
    ]);
    errorSlot.replaceChildren();
    job = j;
    active = ACTIVE.has(j.status);
    drawHeader(j);
    const series = seriesFrom([...metricRows.values()]);
    charts.forEach(([key, c]) => c.update(series[key], j.progress?.total_steps));
    drawEvents(eventList);
    drawCheckpoints(j, listOf(cks));
    drawHyper(j.hyperparameters || {});
    drawEvaluation(j);
    if (!active && !curvesShown) showCurves();
  }, {
    interval: 2000,
    keepGoing: () => active,
    onError: (err) => {
      if (!job) header.replaceChildren(errorBox(err, `Could not open job ${id}`));
      else errorSlot.replaceChildren(errorBox(err, "Lost contact with the server (retrying)"));
      if (err.status === 404) active = false;
    },
  });

  function drawHeader(j) {
    const cancel = ACTIVE.has(j.status) && j.status !== "cancel_requested"
      ? h("button.danger", { type: "button", onclick: () => cancelJob(j) }, "Cancel job") : null;
    header.replaceChildren(...[
      h("div.row.spread", h("h1.mono", j.id), h("div.row", h("span", { "data-testid": "job-status" }, badge(j.status)), cancel)),
      h("div.panel.row.spread",
        h("div", h("div.muted", "Model"), h("div.mono", j.model)),
        h("div", h("div.muted", "Method"), h("div", methodName(j.hyperparameters || {}))),
        h("div", h("div.muted", "Dataset"), h("a.mono", { href: `#/datasets/${encodeURIComponent(j.training_file)}` }, j.training_file)),
        h("div", h("div.muted", "Progress"), progressCell(j)),
        h("div", h("div.muted", "Throughput"), h("div", { "data-testid": "job-throughput" }, throughput(j.latest_metrics))),
        h("div", h("div.muted", "Started"), h("div", fmtTime(j.started_at))),
        h("div", h("div.muted", j.finished_at ? "Took" : "Running for"),
          h("div", j.started_at ? fmtDuration((j.finished_at || Date.now() / 1000) - j.started_at) : "—"))),
      j.output_name ? h("p", "Fine-tuned model: ", h("code", j.output_name), " ",
        j.status === "completed" ? h("a", { href: `#/playground?model=${encodeURIComponent(j.output_name)}&base=${encodeURIComponent(j.model)}` }, "Try it in the playground") : null) : null,
      j.error ? h("div.alert.error", { role: "alert" }, `${j.error.code ? `${j.error.code}: ` : ""}${j.error.message}`) : null,
    ].filter(Boolean));
  }

  async function cancelJob(j) {
    if (!confirmAction(`Cancel ${j.id}? It stops at the next step; checkpoints saved so far stay available.`)) return;
    try {
      await api(`${path}/cancel`, { method: "POST" });
      flash(`Cancelling ${j.id}…`, "info");
      active = true;
    } catch (err) {
      flash(`Could not cancel: ${err.message}`);
    }
  }

  function drawEvents(list) {
    // Oldest first, like a log; the API may list newest first (OpenAI's order).
    const ordered = [...list].sort((a, b) => (a.seq ?? a.created_at ?? 0) - (b.seq ?? b.created_at ?? 0));
    const stick = events.scrollTop + events.clientHeight >= events.scrollHeight - 4;
    events.replaceChildren(...(ordered.length ? ordered : [{ message: "No events yet." }]).map((e) => h(`li.${e.level || "info"}`,
      e.created_at ? h("span.muted", `${new Date(e.created_at * 1000).toLocaleTimeString()} `) : null,
      e.type ? h("code", e.type) : null, e.type ? " " : null,
      e.message ?? "")));
    if (stick) events.scrollTop = events.scrollHeight;
  }

  function drawCheckpoints(j, list) {
    const done = j.status === "completed";
    const hp = j.hyperparameters || {};
    const get = (artifact, step, label) => h("button", { type: "button", onclick: () => {
      const q = new URLSearchParams({ artifact });
      if (step !== undefined) q.set("step", step);
      download(`${path}/download?${q}`, `${j.id}-${artifact}${step !== undefined ? `-${step}` : ""}.tar`)
        .then(() => flash(`Downloaded ${label}.`, "ok"))
        .catch((err) => flash(`Download failed: ${err.message}`));
    } }, label);
    const cont = (step) => {
      const q = new URLSearchParams({ model: j.model, training_file: j.training_file,
        from_checkpoint: step === undefined ? j.id : `${j.id}:${step}` });
      return h("a.button", { href: `#/jobs/new?${q}` }, "Continue from here");
    };
    const rows = list.map((c) => h("tr",
      h("td", `step ${c.step}`, c.best ? h("strong", " (best)") : null), h("td.hide-narrow", fmtTime(c.created_at)),
      h("td", h("div.row", get("checkpoint", c.step, `Download step ${c.step}`), cont(c.step)))));
    const outputs = done ? h("div.row", { style: "margin-bottom:10px" },
      hp.lora === false ? get("model", undefined, "Download model") : get("adapter", undefined, "Download adapter"),
      hp.merge ? get("merged", undefined, "Download merged model") : null,
      j.best_checkpoint_step != null ? get("best", undefined, `Download best (step ${j.best_checkpoint_step})`) : null,
      cont(undefined)) : null;
    checkpoints.replaceChildren(outputs || "",
      rows.length ? h("table", h("thead", h("tr", h("th", "Checkpoint"), h("th.hide-narrow", "Saved"), h("th", h("span.muted", "Actions")))), h("tbody", rows))
        : h("p.muted", active ? "Checkpoints appear here as they are saved." : "No checkpoints were saved."));
  }

  function drawEvaluation(j) {
    const m = j.eval_metrics;
    if (!m) {
      evaluation.replaceChildren(h("p.muted", "No evaluation yet. A job with a validation file (or validation_split) is evaluated n_evals times and at the end."));
      return;
    }
    const rows = [["loss", "DPO loss"], ["rewards/accuracies", "Reward accuracy"], ["rewards/margins", "Reward margin"],
      ["preference_accuracy", "Preference accuracy"], ["preference_accuracy_normalized", "Preference accuracy (per token)"]];
    evaluation.replaceChildren(h("table", { "data-testid": "eval-metrics" }, h("tbody",
      h("tr", h("th", "Step"), h("td.mono", String(m.step ?? "—"))),
      ...rows.filter(([k]) => k in m).map(([k, label]) => h("tr", h("th", label), h("td.mono", fmtNum(m[k])))),
      j.best_checkpoint_step != null ? h("tr", h("th", "Best checkpoint"), h("td.mono", `step ${j.best_checkpoint_step}`)) : null)));
  }

  async function showCurves() {
    curvesShown = true;
    try {
      const response = await api(`${path}/curves.png`, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      curves.replaceChildren(h("img", { src: url, alt: "Loss, reward accuracy and margin over the steps, train and eval", style: "max-width:100%" }));
    } catch (err) {
      curves.replaceChildren(h("p.muted", `No curves: ${err.message}`));
    }
  }

  function drawHyper(hp) {
    hyper.replaceChildren(h("table", h("tbody", Object.entries(hp).map(([k, v]) =>
      h("tr", h("th.mono", k), h("td.mono", v === null ? "—" : String(v)))))));
  }

  return () => {
    stop();
    observer.disconnect();
    charts.forEach(([, c]) => c.destroy());
  };
}
