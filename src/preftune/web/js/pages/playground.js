// Playground: one prompt, two models answering side by side (e.g. the base model and its fine-tune),
// each answer streamed from /v1/chat/completions as it is generated.

import { listAll, streamChat } from "../api.js";
import { errorBox, h, nextId } from "../ui.js";

export function render(main, { query }) {
  const controllers = new Set();
  const status = h("p.muted", "Loading models…");
  main.append(h("h1", "Playground"), status);
  (async () => {
    let models = [];
    try {
      models = (await listAll("/models")).map((m) => m.id);
    } catch (err) {
      status.replaceChildren(errorBox(err, "Could not list models"));
    }
    status.remove();
    build(models);
  })();

  function build(models) {
    const wanted = [query.get("base") || models.find((m) => !m.startsWith("ft:")) || "",
      query.get("model") || models.find((m) => m.startsWith("ft:")) || ""];
    const columns = wanted.map((initial, i) => column(i, initial, models));
    const sysId = nextId("sys");
    const promptId = nextId("prompt");
    const tokId = nextId("tok");
    const tempId = nextId("temp");
    const system = h("textarea", { id: sysId, rows: 2, placeholder: "optional, e.g. You are a concise assistant." });
    const prompt = h("textarea", { id: promptId, rows: 3, required: true, placeholder: "Ask both models something" });
    const maxTokens = h("input", { id: tokId, type: "number", min: 1, max: 4096, value: "128" });
    const temperature = h("input", { id: tempId, type: "number", min: 0, max: 2, step: 0.1, value: "0.7" });
    const send = h("button.primary", { type: "submit" }, "Send to both");
    const clear = h("button", { type: "button" }, "New conversation");
    const form = h("form.panel",
      h("div.field", h("label", { for: sysId }, "System prompt"), system),
      h("div.field", h("label", { for: promptId }, "Message"), prompt,
        h("div.help", "Ctrl+Enter sends.")),
      h("div.row",
        h("div.field", h("label", { for: tokId }, "Max tokens"), maxTokens),
        h("div.field", h("label", { for: tempId }, "Temperature"), temperature)),
      h("div.row", send, clear));
    main.append(h("div.chat-grid", columns.map((c) => c.el)), form);
    prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
    });
    clear.addEventListener("click", () => columns.forEach((c) => c.reset()));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      prompt.value = "";
      send.disabled = true;
      const options = { max_tokens: Number(maxTokens.value) || 128, temperature: Number(temperature.value) };
      await Promise.all(columns.filter((c) => c.model()).map((c) => c.ask(system.value.trim(), text, options)));
      send.disabled = false;
      prompt.focus();
    });
  }

  function column(i, initial, models) {
    const id = nextId("model");
    const listId = nextId("models");
    const input = h("input", { id, type: "text", list: listId, value: initial,
      placeholder: i === 0 ? "base model" : "fine-tuned model (ft:…)" });
    const log = h("div.chat-log", { role: "log", "aria-live": "polite", "aria-label": `Answers from model ${i + 1}` });
    let history = [];
    const el = h("section.chat-col", { "aria-label": `Model ${i + 1}` },
      h("div.field", h("label", { for: id }, i === 0 ? "Model A" : "Model B"), input,
        h("datalist", { id: listId }, models.map((m) => h("option", { value: m })))),
      log);

    async function ask(system, text, options) {
      history.push({ role: "user", content: text });
      log.append(h("div.msg.user", h("div.who", "You"), h("div.body", text)));
      const body = h("div.body", h("span.muted", "…"));
      const msg = h("div.msg.assistant", { dataset: { done: "false" } }, h("div.who", input.value), body);
      log.append(msg);
      const controller = new AbortController();
      controllers.add(controller);
      let answer = "";
      try {
        const messages = system ? [{ role: "system", content: system }, ...history] : history;
        const finish = await streamChat({ model: input.value.trim(), messages, ...options }, {
          signal: controller.signal,
          onDelta: (piece) => {
            answer += piece;
            body.textContent = answer;
            log.scrollTop = log.scrollHeight;
          },
        });
        history.push({ role: "assistant", content: answer });
        if (finish === "length") body.append(h("div.muted", "(stopped at max tokens)"));
      } catch (err) {
        if (err.name === "AbortError") return;
        history.pop();
        body.replaceChildren(errorBox(err, `${input.value} could not answer`));
      } finally {
        controllers.delete(controller);
        msg.dataset.done = "true";
      }
    }

    return {
      el,
      ask,
      model: () => input.value.trim(),
      reset: () => {
        history = [];
        log.replaceChildren();
      },
    };
  }

  return () => controllers.forEach((c) => c.abort());
}
