// The console's only way to the server: the public /v1 API with the user's key as a Bearer token.
// The key lives in sessionStorage (gone when the tab closes) and is never put in a URL.

const KEY_STORAGE = "preftune.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

/** An error the server (or the network) reported, with words for people. */
export class ApiError extends Error {
  constructor(message, { status = 0, param = null, code = null, type = null } = {}) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
    this.type = type;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

/** Turn a failed response into an ApiError carrying the server's own message. */
async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy page, an empty body): fall back to the status line below.
  }
  const err = body && body.error ? body.error : null;
  if (err && err.message) {
    return new ApiError(err.message, { status: response.status, param: err.param, code: err.code, type: err.type });
  }
  if (body && typeof body.detail === "string") return new ApiError(body.detail, { status: response.status });
  if (body && Array.isArray(body.detail) && body.detail.length) {
    const d = body.detail[0];
    const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
    return new ApiError(`${where ? where + ": " : ""}${d.msg}`, { status: response.status, param: where || null });
  }
  const text = response.status === 401 ? "Your API key was not accepted. Sign in again with a valid key."
    : `The server answered ${response.status} ${response.statusText || ""}`.trim();
  return new ApiError(text, { status: response.status });
}

/** Fetch `/v1${path}`; JSON in and out; throws ApiError. */
export async function api(path, { method = "GET", body = undefined, headers: extra = {}, raw = false, signal } = {}) {
  const init = { method, headers: headers(extra), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(`/v1${path}`, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("Cannot reach the preftune server. Is it running? Retrying when you act again.");
  }
  if (!response.ok) {
    const err = await errorFrom(response);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("preftune:unauthorized"));
    throw err;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** The items of a list response, following the `after` cursor up to `max` items. */
export async function listAll(path, { max = 1000 } = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    const data = Array.isArray(page) ? page : page.data || [];
    items.push(...data);
    if (Array.isArray(page) || !page.has_more || !data.length || items.length >= max) break;
    after = data[data.length - 1].id;
  }
  return items;
}

/**
 * A fresh Idempotency-Key for one user action (a create or an upload). Like the SDK, every attempt of
 * that action sends the same key, so a double submit or a retry after a lost answer makes one resource.
 */
export function newIdempotencyKey() {
  if (window.crypto && crypto.randomUUID) return `console-${crypto.randomUUID()}`;
  return `console-${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/**
 * Upload a file with progress (fetch has no upload progress; XMLHttpRequest does). Pass the action's
 * `idempotencyKey` again when retrying it; without one, the upload gets a key of its own.
 */
export function uploadFile(file, { name, onProgress, idempotencyKey = newIdempotencyKey() }) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("purpose", "fine-tune");
    if (name) form.append("name", name);
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    const key = getKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.setRequestHeader("Idempotency-Key", idempotencyKey);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total);
    };
    xhr.onerror = () => reject(new ApiError("The upload was interrupted: cannot reach the preftune server."));
    xhr.onload = async () => {
      const response = new Response(xhr.responseText, {
        status: xhr.status,
        headers: { "content-type": xhr.getResponseHeader("content-type") || "" },
      });
      if (xhr.status >= 200 && xhr.status < 300) resolve(await response.json());
      else reject(await errorFrom(response));
    };
    xhr.send(form);
  });
}

/** Download an authenticated URL as a file (a plain link cannot carry the Bearer token). */
export async function download(path, filename) {
  const response = await api(path, { raw: true });
  const blob = await response.blob();
  const disposition = response.headers.get("content-disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = match ? decodeURIComponent(match[1]) : filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Read the first `maxBytes` of a streamed response as bytes, then stop the download. */
export async function readHead(path, maxBytes) {
  const response = await api(path, { raw: true, headers: { Range: `bytes=0-${maxBytes - 1}` } });
  const reader = response.body.getReader();
  const chunks = [];
  let total = 0;
  let complete = true;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    total += value.length;
    if (total >= maxBytes) {
      complete = false;
      await reader.cancel();
      break;
    }
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.length;
  }
  if (response.status === 206) {
    const range = response.headers.get("content-range") || "";
    const size = Number(range.split("/")[1]);
    complete = Number.isFinite(size) && total >= size;
  }
  return { bytes: bytes.slice(0, Math.min(total, maxBytes)), complete };
}

/**
 * POST /v1/chat/completions with stream: true; calls onDelta(text) for each content piece.
 * The server sends OpenAI's server-sent events: `data: {json}` lines, ending with `data: [DONE]`.
 */
export async function streamChat(body, { onDelta, signal }) {
  const response = await api("/chat/completions", { method: "POST", body: { ...body, stream: true }, raw: true, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return finish;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(event.error.message || "the model failed while answering");
      const choice = event.choices && event.choices[0];
      if (choice && choice.delta && choice.delta.content) onDelta(choice.delta.content);
      if (choice && choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return finish;
}
