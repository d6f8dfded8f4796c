// The console's entry point: sign-in, the hash router and the navigation bar.
// Routes are hash URLs (#/jobs/ftjob-1) so the server only ever serves index.html and assets.

import { api, clearKey, getKey, setKey } from "./api.js";
import { clearFlash, flash, h, nextId } from "./ui.js";
import * as datasets from "./pages/datasets.js";
import * as jobs from "./pages/jobs.js";
import * as job from "./pages/job.js";
import * as playground from "./pages/playground.js";
import * as keys from "./pages/keys.js";

const routes = [
  [/^\/datasets$/, datasets.renderList, "datasets", "Datasets"],
  [/^\/datasets\/new$/, datasets.renderWizard, "datasets", "Create dataset"],
  [/^\/datasets\/([^/]+)$/, datasets.renderDetail, "datasets", "Dataset"],
  [/^\/jobs$/, jobs.renderList, "jobs", "Jobs"],
  [/^\/jobs\/new$/, jobs.renderCreate, "jobs", "Create job"],
  [/^\/jobs\/([^/]+)$/, job.render, "jobs", "Job"],
  [/^\/playground$/, playground.render, "playground", "Playground"],
  [/^\/keys$/, keys.render, "keys", "API keys"],
];

let cleanup = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/datasets";
  const [path, query = ""] = raw.split("?");
  return { path, query: new URLSearchParams(query) };
}

function renderSignIn(main) {
  const id = nextId("key");
  const input = h("input", { id, type: "password", autocomplete: "current-password", required: true,
    placeholder: "pt-...", "aria-describedby": `${id}-help` });
  const error = h("div", { "aria-live": "polite" });
  const submit = h("button.primary", { type: "submit" }, "Sign in");
  const form = h("form.panel.signin", { "aria-labelledby": "signin-title" },
    h("h1#signin-title", "Sign in to preftune"),
    h("div.field",
      h("label", { for: id }, "API key"),
      input,
      h("div.help", { id: `${id}-help` },
        "The key stays in this browser tab only and is sent as a Bearer token. The server's first key is in "
        + "$PREFTUNE_HOME/credentials; `preftune keys create` makes more.")),
    error,
    submit);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    submit.disabled = true;
    error.replaceChildren();
    setKey(key);
    try {
      await api("/files?limit=1");
      route();
    } catch (err) {
      clearKey();
      error.replaceChildren(h("div.alert.error", { role: "alert" }, err.message));
      submit.disabled = false;
      input.focus();
    }
  });
  main.replaceChildren(form);
  input.focus();
}

export function route() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const main = document.getElementById("main");
  const signedIn = Boolean(getKey());
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  if (!signedIn) {
    document.title = "Sign in · preftune";
    renderSignIn(main);
    return;
  }
  const { path, query } = parseHash();
  for (const [pattern, render, section, title] of routes) {
    const m = pattern.exec(path);
    if (!m) continue;
    document.title = `${title} · preftune`;
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.section === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    main.replaceChildren();
    try {
      cleanup = render(main, { params: m.slice(1).map(decodeURIComponent), query }) || null;
    } catch (err) {
      main.replaceChildren(h("div.alert.error", { role: "alert" }, `This page failed to draw: ${err.message}`));
    }
    return;
  }
  main.replaceChildren(h("h1", "Page not found"),
    h("p", "There is no console page at ", h("code", path), ". ", h("a", { href: "#/datasets" }, "Go to datasets.")));
}

window.addEventListener("hashchange", () => {
  clearFlash();
  route();
});
window.addEventListener("preftune:unauthorized", () => {
  clearKey();
  flash("Your API key was not accepted (revoked or mistyped). Sign in again.");
  route();
});
window.addEventListener("unhandledrejection", (e) => {
  if (e.reason && e.reason.name === "AbortError") return;
  flash(e.reason && e.reason.message ? e.reason.message : String(e.reason));
});
document.getElementById("signout").addEventListener("click", () => {
  clearKey();
  location.hash = "#/datasets";
  route();
});
route();
