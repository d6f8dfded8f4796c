// Jobs: the list with status and progress, and the create form built from the server's TrainingSpec
// schema (GET /v1/fine-tunes/spec), so defaults, ranges and help text are never repeated here.

import { api, listAll, newIdempotencyKey } from "../api.js";
import { badge, errorBox, fmtDuration, fmtTime, h, nextId, poll } from "../ui.js";

export const ACTIVE = new Set(["pending", "queued", "running", "cancel_requested"]);

export function progressCell(job) {
  const p = job.progress || {};
  if (!p.total_steps) return h("span.muted", ACTIVE.has(job.status) ? "waiting" : "—");
  const pct = Math.round((100 * (p.step || 0)) / p.total_steps);
  return h("div",
    h("progress", { max: p.total_steps, value: p.step || 0, "aria-label": `${job.id} progress ${pct}%` }),
    h("div.muted", `step ${p.step || 0}/${p.total_steps}${ACTIVE.has(job.status) && p.eta_seconds ? ` · ${fmtDuration(p.eta_seconds)} left` : ""}`));
}

export function renderList(main) {
  const body = h("div", h("p.muted", "Loading jobs…"));
  main.append(h("div.row.spread", h("h1", "Jobs"), h("a.button.primary", { href: "#/jobs/new" }, "Create job")), body);
  let anyActive = true;
  return poll(async () => {
    const jobs = await listAll("/fine-tunes");
    anyActive = jobs.some((j) => ACTIVE.has(j.status));
    if (!jobs.length) {
      body.replaceChildren(h("div.panel", h("p", "No fine-tuning jobs yet. "), h("a", { href: "#/jobs/new" }, "Create one.")));
      return;
    }
    body.replaceChildren(h("div.table-wrap", h("table",
      h("thead", h("tr", h("th", "Job"), h("th", "Status"), h("th", "Progress"), h("th.hide-narrow", "Model"),
        h("th.hide-narrow", "Method"), h("th.hide-narrow", "Created"))),
      h("tbody", jobs.map((j) => h("tr",
        h("td", h("a.mono", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id),
          j.output_name ? h("div.muted.mono", j.output_name) : null),
        h("td", badge(j.status)),
        h("td", progressCell(j)),
        h("td.hide-narrow.mono", j.model),
        h("td.hide-narrow", methodName(j.hyperparameters || {})),
        h("td.hide-narrow", fmtTime(j.created_at))))))));
  }, {
    interval: 3000,
    keepGoing: () => anyActive,
    onError: (err) => body.replaceChildren(errorBox(err, "Could not list jobs (retrying)")),
  });
}

/** "DPO", "SimPO", "RPO", "IPO"… from the resolved hyperparameters. */
export function methodName(hp) {
  if (hp.training_method === "sft") return "SFT";
  if (hp.simpo_gamma > 0) return "SimPO";
  const base = { ipo: "IPO", hinge: "hinge DPO" }[hp.dpo_loss_type] || "DPO";
  const parts = [base];
  if (hp.rpo_alpha > 0) parts.push(`+ RPO α=${hp.rpo_alpha}`);
  if (hp.dpo_normalize_logratios_by_length) parts.push("(length-normalised)");
  return parts.join(" ");
}

const GROUPS = [
  ["basic", "Basic", true],
  ["dpo", "DPO and its variants", false],
  ["sft", "Supervised fine-tuning", false],
  ["lora", "LoRA", false],
  ["advanced", "Advanced: schedule, checkpoints, evaluation", false],
  ["performance", "Performance", false],
  ["tracking", "Experiment tracking", false],
];

const VARIANTS = h("div.alert.info", { id: "dpo-variants" },
  h("strong", "Which variant? "),
  h("ul", { style: "margin:6px 0 0; padding-left:20px" },
    h("li", h("b", "DPO"), " (default): raise the preferred answer's likelihood relative to a frozen reference copy of the model. ",
      h("code", "dpo_beta"), " sets how far the model may move from the reference."),
    h("li", h("b", "Length normalisation"), ": ", h("code", "dpo_normalize_logratios_by_length"),
      " divides by answer length so longer answers do not win by length alone."),
    h("li", h("b", "RPO"), ": ", h("code", "rpo_alpha"), " > 0 adds the preferred answer's language-modelling loss, which keeps it likely while pushing the other away."),
    h("li", h("b", "SimPO"), ": ", h("code", "simpo_gamma"), " > 0 drops the reference model (faster, less memory) and asks for a reward margin of gamma; use a larger ",
      h("code", "dpo_beta"), "."),
    h("li", h("b", "IPO / hinge"), ": other losses via ", h("code", "dpo_loss_type"), "; IPO resists over-fitting on small data.")));

function unwrap(schema) {
  return schema && schema.properties ? schema : schema && schema.schema ? schema.schema : schema;
}

function kindOf(prop) {
  const options = prop.anyOf || [prop];
  const types = new Set(options.map((o) => o.type || (o.const !== undefined ? typeof o.const : null)));
  const enums = options.flatMap((o) => o.enum || (o.const !== undefined ? [o.const] : []));
  const nullable = types.has("null");
  if (types.has("boolean") && enums.length) return { kind: "choice", values: ["true", "false", ...enums.map(String)], nullable };
  if (enums.length && !types.has("integer") && !types.has("number")) return { kind: "choice", values: enums.map(String), nullable };
  if (types.has("boolean")) return { kind: "bool", nullable };
  const numeric = options.find((o) => o.type === "integer" || o.type === "number");
  if (numeric) return { kind: "number", integer: numeric.type === "integer", limits: numeric, nullable };
  const str = options.find((o) => o.type === "string") || {};
  return { kind: "text", secret: str.format === "password" || Boolean(prop.writeOnly), nullable, pattern: str.pattern };
}

function limitsText(l) {
  const parts = [];
  if (l.minimum !== undefined) parts.push(`≥ ${l.minimum}`);
  if (l.exclusiveMinimum !== undefined) parts.push(`> ${l.exclusiveMinimum}`);
  if (l.maximum !== undefined) parts.push(`≤ ${l.maximum}`);
  if (l.exclusiveMaximum !== undefined) parts.push(`< ${l.exclusiveMaximum}`);
  return parts.join(", ");
}

/** One knob: an input with label, default and the server's help text. Returns {el, read, set, mark}. */
function knob(name, prop) {
  const id = `knob-${name}`;
  const k = kindOf(prop);
  const def = prop.default;
  const defText = def === null || def === undefined ? "none" : String(def);
  let input;
  if (k.kind === "bool") {
    input = h("input", { id, name, type: "checkbox", checked: def === true, "aria-describedby": `${id}-help` });
  } else if (k.kind === "choice") {
    input = h("select", { id, name, "aria-describedby": `${id}-help` },
      k.nullable ? h("option", { value: "" }, "—") : null,
      k.values.map((v) => h("option", { value: v }, v)));
    input.value = defText === "none" ? "" : defText;
  } else if (k.kind === "number") {
    const l = k.limits;
    input = h("input", { id, name, type: "number", step: k.integer ? 1 : "any",
      min: l.minimum ?? l.exclusiveMinimum, max: l.maximum ?? l.exclusiveMaximum,
      placeholder: def === null || def === undefined ? "none" : "", "aria-describedby": `${id}-help` });
    input.value = def === null || def === undefined ? "" : String(def);
  } else {
    input = h("input", { id, name, type: k.secret ? "password" : "text", autocomplete: k.secret ? "off" : undefined,
      pattern: k.pattern, "aria-describedby": `${id}-help` });
    input.value = def === null || def === undefined ? "" : String(def);
  }
  const errorText = h("div.error-text", { id: `${id}-error`, "aria-live": "polite" });
  const limits = k.kind === "number" ? limitsText(k.limits) : "";
  const el = h(`div.field${k.kind === "bool" ? ".check" : ""}`, { dataset: { knob: name } },
    k.kind === "bool" ? [input, h("label", { for: id }, name)] : [h("label", { for: id }, name, " ",
      h("span.default", `(default ${defText}${limits ? `; ${limits}` : ""})`)), input],
    h("div.help", { id: `${id}-help` }, prop.description || "", k.kind === "bool" ? ` Default ${defText}.` : ""),
    errorText);

  function read() {
    // Returns [changed, value]: only knobs that differ from the server default are sent.
    if (k.kind === "bool") return [input.checked !== def, input.checked];
    const raw = input.value.trim();
    if (raw === "") return [def !== null && def !== undefined && k.nullable, null];
    let value = raw;
    if (k.kind === "number") value = Number(raw);
    if (k.kind === "choice") value = raw === "true" ? true : raw === "false" ? false : raw;
    return [String(value) !== defText, value];
  }
  function set(value) {
    if (k.kind === "bool") input.checked = value === true || value === "true";
    else input.value = value === null ? "" : String(value);
  }
  function mark(message) {
    el.classList.toggle("invalid", Boolean(message));
    errorText.textContent = message || "";
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
  return { el, read, set, mark, input };
}

export function renderCreate(main, { query }) {
  const status = h("div", h("p.muted", "Loading the training options from the server…"));
  main.append(h("p", h("a", { href: "#/jobs" }, "← Jobs")), h("h1", "Create a fine-tuning job"), status);
  (async () => {
    let schema;
    let files;
    let models;
    try {
      [schema, files, models] = await Promise.all([
        api("/fine-tunes/spec").then(unwrap),
        listAll("/files"),
        listAll("/models").catch(() => []),
      ]);
    } catch (err) {
      status.replaceChildren(errorBox(err, "Could not load the form"));
      return;
    }
    status.remove();
    buildForm(main, schema, files, models, query);
  })();
}

function buildForm(main, schema, files, models, query) {
  const idempotencyKey = newIdempotencyKey();
  const props = schema.properties || {};
  const knobs = new Map(Object.entries(props).map(([name, prop]) => [name, knob(name, prop)]));
  const usable = files.filter((f) => f.status !== "error");

  const modelId = nextId("model");
  const trainId = nextId("train");
  const validId = nextId("valid");
  const listId = nextId("models");
  const model = h("input", { id: modelId, name: "model", type: "text", required: true, list: listId,
    placeholder: "smollm2-135m-instruct", value: query.get("model") || "" });
  const baseModels = models.map((m) => m.id);
  if (!model.value && baseModels.length) model.value = baseModels.find((m) => !m.startsWith("ft:")) || baseModels[0];
  const fileOptions = (empty) => [h("option", { value: "" }, empty),
    usable.map((f) => h("option", { value: f.id }, `${f.name || f.filename} (${f.n_examples ?? "?"} examples, ${f.format || "?"}) · ${f.id}`))];
  const training = h("select", { id: trainId, name: "training_file", required: true }, fileOptions("Choose a dataset…"));
  const validation = h("select", { id: validId, name: "validation_file" }, fileOptions("None"));
  training.value = query.get("training_file") || "";
  validation.value = query.get("validation_file") || "";
  const fixed = {
    model: { el: model, mark: markFor(model) },
    training_file: { el: training, mark: markFor(training) },
    validation_file: { el: validation, mark: markFor(validation) },
  };

  for (const [name, value] of query.entries()) {
    if (knobs.has(name)) knobs.get(name).set(value);
  }

  const grouped = new Map(GROUPS.map(([g]) => [g, []]));
  for (const [name, prop] of Object.entries(props)) {
    const g = grouped.has(prop.group) ? prop.group : "advanced";
    grouped.get(g).push(knobs.get(name).el);
  }
  const sections = GROUPS.filter(([g]) => grouped.get(g).length).map(([g, title, open]) => {
    const openIt = open || [...knobs.entries()].some(([n, k]) => props[n].group === g && query.has(n));
    return h("details.group", { open: openIt || undefined, dataset: { group: g } },
      h("summary", title),
      g === "basic" ? [
        h("div.field", h("label", { for: modelId }, "model"), model,
          h("datalist", { id: listId }, baseModels.map((m) => h("option", { value: m }))),
          h("div.help", "Base model to fine-tune: a name from the server's models directory, or a fine-tuned model."),
          fixed.model.mark.box),
        h("div.field", h("label", { for: trainId }, "training_file"), training,
          h("div.help", "The dataset to learn from. ", h("a", { href: "#/datasets/new" }, "Create a dataset"), "."),
          fixed.training_file.mark.box),
        h("div.field", h("label", { for: validId }, "validation_file"), validation,
          h("div.help", "Optional held-out dataset for eval metrics (set n_evals in Advanced)."),
          fixed.validation_file.mark.box),
      ] : null,
      g === "dpo" ? VARIANTS.cloneNode(true) : null,
      h("div.grid2", grouped.get(g)));
  });

  const submit = h("button.primary", { type: "submit" }, "Create job");
  const formError = h("div", { "aria-live": "assertive" });
  const form = h("form", { novalidate: true }, sections, formError, h("div.row", submit,
    h("span.muted", "Only values you change are sent; the server fills in the rest.")));
  main.append(form);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    formError.replaceChildren();
    for (const f of [...knobs.values(), ...Object.values(fixed)]) f.mark(null);
    const body = { model: model.value.trim(), training_file: training.value };
    if (validation.value) body.validation_file = validation.value;
    for (const [name, k] of knobs) {
      const [changed, value] = k.read();
      if (changed) body[name] = value;
    }
    if (!body.model) return fail({ message: "Choose a base model.", param: "model" });
    if (!body.training_file) return fail({ message: "Choose a training dataset.", param: "training_file" });
    submit.disabled = true;
    try {
      const job = await api("/fine-tunes", { method: "POST", body, headers: { "Idempotency-Key": idempotencyKey } });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      submit.disabled = false;
      fail(err);
    }
  });

  function fail(err) {
    const target = err.param ? knobs.get(err.param) || fixed[err.param] : null;
    formError.replaceChildren(h("div.alert.error", { role: "alert" },
      err.param && !err.message.includes(err.param) ? `${err.param}: ${err.message}` : err.message));
    if (target) {
      target.mark(err.message);
      const details = target.el.closest("details");
      if (details) details.open = true;
      (target.input || target.el).focus();
    }
  }
}

function markFor(el) {
  const box = h("div.error-text", { "aria-live": "polite" });
  const mark = (message) => {
    box.textContent = message || "";
    el.closest(".field")?.classList.toggle("invalid", Boolean(message));
  };
  mark.box = box;
  return mark;
}
