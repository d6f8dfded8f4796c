// Datasets: the list, the "Create dataset" wizard (upload -> validation report) and a dataset's page
// (report, token-length histograms, preview of pairs with their differences highlighted).

import { api, download, listAll, newIdempotencyKey, readHead, uploadFile } from "../api.js";
import { bytesToText, normalise, parseRecords } from "../examples.js";
import { badge, confirmAction, errorBox, flash, fmtBytes, fmtTime, h, nextId } from "../ui.js";

const PREVIEW_BYTES = 256 * 1024;
const PREVIEW_PAGE = 5;

export function renderList(main) {
  const body = h("div", h("p.muted", "Loading datasets…"));
  main.append(
    h("div.row.spread", h("h1", "Datasets"), h("a.button.primary", { href: "#/datasets/new" }, "Create dataset")),
    body);
  load();

  async function load() {
    let files;
    try {
      files = await listAll("/files");
    } catch (err) {
      body.replaceChildren(errorBox(err, "Could not list datasets"));
      return;
    }
    if (!files.length) {
      body.replaceChildren(h("div.panel", h("p", "No datasets yet. "), h("a", { href: "#/datasets/new" }, "Create your first dataset.")));
      return;
    }
    const rows = files.map((f) => h("tr",
      h("td", h("a", { href: `#/datasets/${encodeURIComponent(f.id)}` }, f.name || f.filename), h("div.muted.mono", f.id)),
      h("td", badge(f.status || "processed")),
      h("td", f.format || "—"),
      h("td", f.n_examples ?? "—"),
      h("td.hide-narrow", fmtBytes(f.bytes)),
      h("td.hide-narrow", fmtTime(f.created_at)),
      h("td", h("button.danger", { type: "button", "aria-label": `Delete ${f.name || f.filename}`,
        onclick: () => remove(f) }, "Delete"))));
    body.replaceChildren(h("div.table-wrap", h("table",
      h("thead", h("tr", h("th", "Name"), h("th", "Status"), h("th", "Format"), h("th", "Examples"),
        h("th.hide-narrow", "Size"), h("th.hide-narrow", "Created"), h("th", h("span.muted", "Actions")))),
      h("tbody", rows))));
  }

  async function remove(f) {
    if (!confirmAction(`Delete dataset ${f.name || f.filename} (${f.id})? Jobs that used it keep their results.`)) return;
    try {
      await api(`/files/${encodeURIComponent(f.id)}`, { method: "DELETE" });
      flash(`Deleted ${f.name || f.filename}.`, "ok");
      load();
    } catch (err) {
      flash(`Could not delete ${f.id}: ${err.message}`);
    }
  }
}

async function modelOptions() {
  try {
    const models = await listAll("/models");
    return models.map((m) => m.id).filter((id) => !id.startsWith("ft:"));
  } catch {
    return [];
  }
}

export function renderWizard(main) {
  const steps = ["Choose a file", "Upload", "Validation report"];
  const stepList = h("ol.steps", { "aria-label": "Progress" }, steps.map((s) => h("li", s)));
  const content = h("div");
  main.append(h("h1", "Create dataset"), stepList, content);
  setStep(0);
  chooseStep();

  function setStep(i) {
    [...stepList.children].forEach((li, j) => (j === i ? li.setAttribute("aria-current", "step") : li.removeAttribute("aria-current")));
  }

  function chooseStep() {
    const fileId = nextId("file");
    const nameId = nextId("name");
    const modelId = nextId("model");
    let chosen = null;
    // One key per form: a double submit, or "Try again" after a lost answer, is the same upload.
    const idempotencyKey = newIdempotencyKey();
    const picked = h("p.muted", { "aria-live": "polite" }, "No file chosen yet.");
    const input = h("input", { id: fileId, type: "file", accept: ".jsonl,.json,.gz,.jsonl.gz,application/json" });
    const name = h("input", { id: nameId, type: "text", placeholder: "optional, e.g. support-prefs-v1" , pattern: "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?" });
    const model = h("select", { id: modelId }, h("option", { value: "" }, "No token statistics"));
    modelOptions().then((ids) => ids.forEach((id) => model.append(h("option", { value: id }, id))));
    const next = h("button.primary", { type: "submit", disabled: true }, "Upload and validate");
    const zone = h("div.dropzone",
      h("p", "Drag a JSONL, JSON or .jsonl.gz file here, or pick one."),
      h("label", { for: fileId }, "Dataset file"), input,
      picked);
    const choose = (file) => {
      chosen = file;
      picked.textContent = `${file.name} · ${fmtBytes(file.size)}`;
      next.disabled = false;
    };
    input.addEventListener("change", () => input.files[0] && choose(input.files[0]));
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer.files[0]) choose(e.dataTransfer.files[0]);
    });
    const form = h("form.panel",
      zone,
      h("div.grid2", { style: "margin-top:16px" },
        h("div.field", h("label", { for: nameId }, "Dataset name"), name,
          h("div.help", "Lowercase letters, digits and dashes, e.g. orca-pairs-v2; jobs can refer to it by name. The file name is shown when empty.")),
        h("div.field", h("label", { for: modelId }, "Token statistics for model"), model,
          h("div.help", "Count tokens with this model's tokenizer to see prompt and answer lengths."))),
      h("p.muted", "Preference data: one example per line with input.messages, preferred_output and "
        + "non_preferred_output (chosen/rejected, ShareGPT and hh-rlhf files are converted). SFT data: messages."),
      next);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (chosen) uploadStep(chosen, name.value.trim(), model.value, idempotencyKey);
    });
    content.replaceChildren(form);
  }

  async function uploadStep(file, name, model, idempotencyKey) {
    setStep(1);
    const bar = h("progress", { max: 100, value: 0, "aria-label": "Upload progress" });
    const label = h("span", "0%");
    const status = h("p", { "aria-live": "polite" }, `Uploading ${file.name}…`);
    content.replaceChildren(h("div.panel", status, h("div.row", bar, label)));
    let created;
    try {
      created = await uploadFile(file, {
        name: name || undefined,
        idempotencyKey,
        onProgress: (p) => {
          bar.value = Math.round(p * 100);
          label.textContent = `${Math.round(p * 100)}%`;
          if (p >= 1) status.textContent = "Uploaded; the server is validating every example…";
        },
      });
    } catch (err) {
      // Lost on the way (no answer, or a server error): the server may have the file already, so a
      // retry sends the same key and gets that file back rather than a second one.
      const retryable = !err.status || err.status >= 500;
      content.replaceChildren(errorBox(err, `Upload of ${file.name} failed`), h("div.row",
        retryable ? h("button.primary", { type: "button", onclick: () => uploadStep(file, name, model, idempotencyKey) },
          "Try again") : null,
        h("button", { type: "button", onclick: () => { setStep(0); chooseStep(); } }, "Choose another file")));
      return;
    }
    setStep(2);
    content.replaceChildren(h("p.muted", "Loading the validation report…"));
    const panel = h("div");
    content.replaceChildren(panel, h("div.row",
      h("a.button.primary", { href: `#/datasets/${encodeURIComponent(created.id)}` }, "Open dataset"),
      created.status === "error" ? null
        : h("a.button", { href: `#/jobs/new?training_file=${encodeURIComponent(created.id)}` }, "Train on it"),
      h("button", { type: "button", onclick: () => { setStep(0); chooseStep(); } }, "Upload another")));
    await showReport(panel, created, model);
  }
}

/** The validation report of `file` into `target`; with `model`, ask for token statistics too. */
async function showReport(target, file, model) {
  let report;
  try {
    report = await api(`/files/${encodeURIComponent(file.id)}/report${model ? `?model=${encodeURIComponent(model)}` : ""}`);
  } catch (err) {
    target.replaceChildren(errorBox(err, "Could not load the validation report"));
    return null;
  }
  target.replaceChildren(reportView(file, report, model));
  return report;
}

function reportView(file, report, model) {
  const ok = report.ok ?? file.status !== "error";
  const errors = report.errors || [];
  const warnings = report.warnings || [];
  const parts = [
    h("div.row.spread", h("h2", { style: "margin-top:0" }, file.name || file.filename), badge(ok ? "processed" : "error")),
    h("div.stats",
      stat("Examples", report.n_examples ?? file.n_examples ?? "—"),
      stat("Format", report.format ?? file.format ?? "—"),
      report.n_valid !== undefined ? stat("Valid", report.n_valid) : null,
      stat("Errors", report.n_errors_total ?? errors.length),
      stat("Warnings", report.n_warnings_total ?? warnings.length)),
  ];
  parts.push(ok
    ? h("div.alert.ok", "Every example is valid: this dataset can be used for training.")
    : h("div.alert.error", report.summary || file.status_details
      || "Some examples are invalid: fix the lines below and upload the file again."));
  if (errors.length) {
    const total = report.n_errors_total ?? errors.length;
    parts.push(h("h3", total > errors.length ? `First ${errors.length} errors of ${total}` : `Errors (${total})`),
      issueTable(errors, "errors"));
  }
  if (warnings.length) parts.push(h("h3", "Warnings"), issueTable(warnings, "warnings"));
  parts.push(tokenStats(report, model));
  return h("section.panel", { "aria-label": "Validation report" }, parts);
}

function stat(label, value) {
  return h("div", h("div.muted", label), h("div.stat", String(value)));
}

function issueTable(items, what) {
  return h("div.table-wrap", h("table", { "aria-label": what },
    h("thead", h("tr", h("th", "Line"), h("th", "Field"), h("th", "Problem"))),
    h("tbody", items.map((e) => typeof e === "string"
      ? h("tr", h("td", "—"), h("td", "—"), h("td", e))
      : h("tr", h("td.mono", e.line ?? "—"), h("td.mono", e.field ?? "—"), h("td", e.message ?? JSON.stringify(e)))))));
}

/** Token-length histograms for prompt / preferred / non-preferred when the report carries them. */
function tokenStats(report, model) {
  const stats = report.token_stats || null;
  if (!model && !stats) return h("p.muted", "Choose a model under “Token statistics for model” to see token lengths of prompts and answers.");
  if (!stats) {
    return h("p.muted", `The server returned no token statistics for ${model}; the counts above are complete.`);
  }
  const labels = { prompt: "Prompt", preferred: "Preferred answer", non_preferred: "Non-preferred answer",
    sequence: "Whole example" };
  const entries = Object.entries(labels).filter(([key]) => stats[key] && typeof stats[key] === "object");
  // One scale for every card, so the prompt and the answers compare at a glance.
  const scale = Math.max(1, ...entries.map(([key]) => Number(stats[key].max) || 0));
  return h("div", h("h3", `Token lengths${stats.model || model ? ` (${stats.model || model} tokenizer)` : ""}`),
    stats.max_length ? h("p.muted", `${stats.truncated ?? 0} of ${stats.n_examples ?? "?"} examples are longer than `
      + `max_length ${stats.max_length} and would be truncated.`) : null,
    h("div.grid3", entries.map(([key, label]) => lengthCard(label, stats[key], scale))));
}

function lengthCard(title, v, scale) {
  const counts = v.histogram?.counts || [];
  const edges = v.histogram?.edges || [];
  let figure;
  if (counts.length) {
    const max = Math.max(1, ...counts);
    figure = h("div.hist", { role: "img", "aria-label": `${title} token-length histogram` },
      counts.map((c, i) => h("span", { style: `height:${(100 * c) / max}%`,
        title: `${edges[i] ?? "?"}–${edges[i + 1] ?? "?"} tokens: ${c}` })));
  } else if (v.max !== null && v.max !== undefined) {
    // Summary only (min, median, p95, max): a range strip on the shared scale.
    const at = (x) => `${(100 * x) / scale}%`;
    figure = h("div.range", { role: "img",
      "aria-label": `${title}: min ${v.min}, median ${v.median}, p95 ${v.p95}, max ${v.max} tokens` },
      h("span.whisker", { style: `left:${at(v.min)};width:${at(v.max - v.min)}` }),
      h("span.box", { style: `left:${at(v.median)};width:${at(v.p95 - v.median)}` }),
      h("span.median", { style: `left:${at(v.median)}` }));
  } else {
    figure = h("div.empty", "no data");
  }
  const summary = ["min", "median", "mean", "p95", "max"].filter((k) => v[k] !== undefined && v[k] !== null)
    .map((k) => `${k} ${Math.round(v[k])}`).join(" · ");
  return h("div.chart", h("h3", title), figure,
    edges.length ? h("div.row.spread.muted", h("span", String(edges[0])), h("span", `${edges[edges.length - 1]} tokens`)) : null,
    summary ? h("div.muted", `${summary} tokens`) : null);
}

export function renderDetail(main, { params: [id] }) {
  const head = h("div", h("p.muted", "Loading…"));
  const reportBox = h("div");
  const preview = h("section.panel", { "aria-label": "Preview" }, h("h2", "Preview"), h("p.muted", "Loading examples…"));
  main.append(h("p", h("a", { href: "#/datasets" }, "← Datasets")), head, reportBox, preview);
  (async () => {
    let file;
    try {
      file = await api(`/files/${encodeURIComponent(id)}`);
    } catch (err) {
      head.replaceChildren(errorBox(err, `Could not open dataset ${id}`));
      preview.remove();
      return;
    }
    const modelId = nextId("model");
    const model = h("select", { id: modelId }, h("option", { value: "" }, "None"));
    modelOptions().then((ids) => ids.forEach((m) => model.append(h("option", { value: m }, m))));
    model.addEventListener("change", () => showReport(reportBox, file, model.value));
    head.replaceChildren(
      h("div.row.spread",
        h("h1", file.name || file.filename),
        h("div.row",
          h("a.button.primary", { href: `#/jobs/new?training_file=${encodeURIComponent(file.id)}` }, "Train on it"),
          h("button", { type: "button", onclick: () => download(`/files/${encodeURIComponent(file.id)}/content`, file.filename)
            .catch((err) => flash(`Download failed: ${err.message}`)) }, "Download"))),
      h("p.muted.mono", `${file.id} · ${file.filename} · ${fmtBytes(file.bytes)} · ${fmtTime(file.created_at)}`),
      h("div.field", { style: "max-width:360px" }, h("label", { for: modelId }, "Token statistics for model"), model));
    showReport(reportBox, file, "");
    loadPreview(preview, file);
  })();
}

async function loadPreview(section, file) {
  let records;
  let note;
  try {
    const { bytes, complete } = await readHead(`/files/${encodeURIComponent(file.id)}/content`, PREVIEW_BYTES);
    const text = await bytesToText(bytes);
    ({ records, note } = parseRecords(text, complete || bytes.length < PREVIEW_BYTES));
  } catch (err) {
    section.replaceChildren(h("h2", "Preview"), errorBox(err, "Could not read the file"));
    return;
  }
  const list = h("div");
  const more = h("button", { type: "button" }, "Show more examples");
  let shown = 0;
  const showMore = () => {
    records.slice(shown, shown + PREVIEW_PAGE).forEach((r, i) => list.append(exampleView(normalise(r), shown + i + 1)));
    shown = Math.min(records.length, shown + PREVIEW_PAGE);
    more.hidden = shown >= records.length;
  };
  more.addEventListener("click", showMore);
  section.replaceChildren(h("h2", `Preview of the first ${records.length} examples`),
    h("p.muted", note || ""),
    h("p.muted", "The preferred and non-preferred answers side by side; words only in one of them are highlighted."),
    list, more);
  showMore();
}

function exampleView(ex, n) {
  const title = h("h3", `Example ${n}`);
  if (ex.kind === "unknown") return h("article", title, h("pre.prompt", ex.raw));
  const prompt = (ex.kind === "preference" ? ex.prompt : ex.messages).map((m) =>
    h("div.prompt", h("div.role", m.role), h("pre", clip(m.content))));
  if (ex.kind === "sft") return h("article", title, prompt);
  const [preferred, nonPreferred] = diffViews(clip(ex.preferred), clip(ex.nonPreferred));
  return h("article", title, prompt,
    h("div.pair",
      h("div.preferred", h("h4", "Preferred"), preferred),
      h("div.non-preferred", h("h4", "Non-preferred"), nonPreferred)));
}

function clip(s, n = 4000) {
  return s.length > n ? `${s.slice(0, n)}… (${s.length - n} more characters)` : s;
}

/** Word diff (jsdiff): words only in the preferred answer are <ins>, only in the other <del>. */
function diffViews(preferred, nonPreferred) {
  const left = h("pre");
  const right = h("pre");
  if (!window.Diff) {
    left.textContent = preferred;
    right.textContent = nonPreferred;
    return [left, right];
  }
  for (const part of window.Diff.diffWordsWithSpace(nonPreferred, preferred)) {
    if (part.added) left.append(h("ins.diff", part.value));
    else if (part.removed) right.append(h("del.diff", part.value));
    else {
      left.append(part.value);
      right.append(part.value);
    }
  }
  return [left, right];
}
