// Small DOM helpers shared by the pages: element building, messages, formatting, polling.

/** h("div.cls#id", {attrs}, ...children): build an element. Strings become text nodes (never HTML). */
export function h(spec, attrs = {}, ...children) {
  if (attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  const [, tag = "div", rest = ""] = /^([a-z0-9-]*)(.*)$/i.exec(spec);
  const el = document.createElement(tag || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" || k === "checked") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

let uid = 0;
/** A unique id for label/for pairs. */
export function nextId(prefix = "f") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** Show a message at the top of the page (errors stay until closed; others fade). */
export function flash(message, kind = "error") {
  const box = document.getElementById("flash");
  const close = h("button.link.close", { type: "button", "aria-label": "Dismiss message" }, "Dismiss");
  const el = h(`div.alert.${kind}`, { role: kind === "error" ? "alert" : "status" }, close, message);
  close.addEventListener("click", () => el.remove());
  box.replaceChildren(el);
  if (kind !== "error") setTimeout(() => el.remove(), 6000);
}

export function clearFlash() {
  document.getElementById("flash").replaceChildren();
}

/** An inline error panel for a failed load, with the server's words. */
export function errorBox(err, what) {
  const message = err && err.message ? err.message : String(err);
  return h("div.alert.error", { role: "alert" }, what ? `${what}: ${message}` : message);
}

export function badge(status) {
  return h(`span.badge.${status}`, status.replaceAll("_", " "));
}

export function fmtTime(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function fmtNum(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toFixed(4);
}

/**
 * Call `fn` now and again every `interval` ms while `keepGoing()` says so; on errors wait longer
 * (doubling up to 30 s) so a restarting server is not hammered. Returns a stop function.
 */
export function poll(fn, { interval = 2000, keepGoing = () => true, onError = () => {} } = {}) {
  let stopped = false;
  let timer = null;
  let delay = interval;
  async function tick() {
    if (stopped) return;
    try {
      await fn();
      delay = interval;
    } catch (e) {
      onError(e);
      delay = Math.min(delay * 2, 30_000);
    }
    if (!stopped && keepGoing()) timer = setTimeout(tick, document.hidden ? Math.max(delay, 10_000) : delay);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** A confirmation that works with the keyboard and screen readers (the browser's own dialog). */
export function confirmAction(message) {
  return window.confirm(message);
}
