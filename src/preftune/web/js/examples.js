// Reading a dataset's first examples in the browser for the preview: bytes -> records -> one shape.
// The server validates and converts files; this only has to show people what they uploaded.

const GZIP_MAGIC = [0x1f, 0x8b];

/** Decode file bytes to text, gunzipping when needed; a cut-off gzip stream yields what it could. */
export async function bytesToText(bytes) {
  if (bytes.length < 2 || bytes[0] !== GZIP_MAGIC[0] || bytes[1] !== GZIP_MAGIC[1]) {
    return new TextDecoder().decode(bytes);
  }
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += value;
    }
  } catch {
    // We asked for the file's first bytes only, so the gzip stream ends early: keep what decoded.
  }
  return text;
}

/** Records from the start of a JSONL file or a JSON array; `complete` says whether text is the whole file. */
export function parseRecords(text, complete, limit = 20) {
  const trimmed = text.trimStart();
  if (trimmed.startsWith("[")) {
    if (!complete) return { records: [], note: "This file is one JSON array; preview shows it once it is small enough to read whole." };
    try {
      return { records: JSON.parse(trimmed).slice(0, limit), note: null };
    } catch (e) {
      return { records: [], note: `The file is not valid JSON: ${e.message}` };
    }
  }
  const lines = text.split("\n");
  if (!complete) lines.pop(); // the last line may be cut in the middle
  const records = [];
  for (const line of lines) {
    if (!line.trim()) continue;
    try {
      records.push(JSON.parse(line));
    } catch {
      records.push({ __unparsed: line.slice(0, 500) });
    }
    if (records.length >= limit) break;
  }
  return { records, note: null };
}

function text(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.map((m) => (m && typeof m === "object" ? text(m.content ?? m.value) : text(m))).join("\n");
  if (typeof value === "object") return text(value.content ?? value.value ?? JSON.stringify(value));
  return String(value);
}

function messages(value) {
  if (typeof value === "string") return [{ role: "user", content: value }];
  if (!Array.isArray(value)) return [];
  const roles = { human: "user", gpt: "assistant", system: "system", user: "user", assistant: "assistant" };
  return value.map((m) => ({ role: roles[m.role ?? m.from] || String(m.role ?? m.from ?? "user"), content: text(m.content ?? m.value) }));
}

/** Split two transcripts at their shared prefix (hh-rlhf style: chosen/rejected repeat the dialogue). */
function splitShared(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i += 1;
  const marker = a.lastIndexOf("\n\nAssistant:", i);
  const cut = marker > 0 ? marker + "\n\nAssistant:".length : i;
  return [a.slice(0, cut), a.slice(cut), b.slice(cut)];
}

/**
 * One record in one shape: {kind: "preference", prompt: [{role, content}], preferred, nonPreferred}
 * or {kind: "sft", messages} or {kind: "unknown", raw}. Covers the formats preftune accepts.
 */
export function normalise(record) {
  if (!record || typeof record !== "object" || record.__unparsed) {
    return { kind: "unknown", raw: record && record.__unparsed ? record.__unparsed : JSON.stringify(record) };
  }
  if (record.preferred_output || record.non_preferred_output) {
    return { kind: "preference", prompt: messages(record.input?.messages ?? []),
      preferred: text(record.preferred_output), nonPreferred: text(record.non_preferred_output) };
  }
  if ("response_j" in record && "response_k" in record) {
    return { kind: "preference", prompt: messages(record.question ?? ""), preferred: text(record.response_j),
      nonPreferred: text(record.response_k) };
  }
  if ("chosen" in record && "rejected" in record) {
    if (record.conversations) {
      return { kind: "preference", prompt: messages(record.conversations), preferred: text(record.chosen),
        nonPreferred: text(record.rejected) };
    }
    if ("prompt" in record) {
      return { kind: "preference", prompt: messages(record.prompt), preferred: text(record.chosen),
        nonPreferred: text(record.rejected) };
    }
    if (typeof record.chosen === "string" && typeof record.rejected === "string") {
      const [prompt, chosen, rejected] = splitShared(record.chosen, record.rejected);
      return { kind: "preference", prompt: prompt ? [{ role: "transcript", content: prompt.trim() }] : [],
        preferred: chosen.trim(), nonPreferred: rejected.trim() };
    }
    // Conversational chosen/rejected: the last message is the answer, the rest the prompt.
    const chosen = messages(record.chosen);
    const rejected = messages(record.rejected);
    return { kind: "preference", prompt: chosen.slice(0, -1), preferred: text(chosen.slice(-1)),
      nonPreferred: text(rejected.slice(-1)) };
  }
  if (Array.isArray(record.messages)) return { kind: "sft", messages: messages(record.messages) };
  if ("prompt" in record && "completion" in record) {
    return { kind: "sft", messages: [...messages(record.prompt), { role: "assistant", content: text(record.completion) }] };
  }
  if (typeof record.text === "string") return { kind: "sft", messages: [{ role: "text", content: record.text }] };
  return { kind: "unknown", raw: JSON.stringify(record) };
}
