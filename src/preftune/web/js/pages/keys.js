// API keys: create (the key text is shown once), list and revoke.

import { api, listAll } from "../api.js";
import { confirmAction, errorBox, flash, fmtTime, h, nextId } from "../ui.js";

export function render(main) {
  const nameId = nextId("keyname");
  const name = h("input", { id: nameId, type: "text", required: true, maxlength: 100, placeholder: "e.g. laptop, ci" });
  const ownerId = nextId("owner");
  const newOwner = h("input", { id: ownerId, type: "checkbox", "aria-describedby": `${ownerId}-help` });
  const created = h("div", { "aria-live": "polite" });
  const list = h("div", h("p.muted", "Loading keys…"));
  const form = h("form.panel",
    h("h2", { style: "margin-top:0" }, "Create a key"),
    h("div.row", { style: "align-items:flex-end" },
      h("div.field", { style: "flex:1; min-width:200px; margin:0" }, h("label", { for: nameId }, "Key name"), name),
      h("button.primary", { type: "submit" }, "Create key")),
    h("div.field.check", { style: "margin-top:10px" }, newOwner, h("label", { for: ownerId }, "For a new user"),
      h("div.help", { id: `${ownerId}-help` }, "Admins only: the key belongs to a new owner who cannot see your "
        + "datasets, jobs or models. Otherwise the key is another key for you.")),
    created);
  main.append(h("h1", "API keys"), form, h("h2", "Your keys"), list);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!name.value.trim()) {
      name.focus();
      return;
    }
    try {
      const key = await api("/keys", { method: "POST", body: { name: name.value.trim(), ...(newOwner.checked ? { new_owner: true } : {}) } });
      const secret = key.key;
      const forOther = newOwner.checked;
      const copy = h("button", { type: "button", onclick: () => navigator.clipboard?.writeText(secret)
        .then(() => flash("Key copied.", "ok"), () => flash("Copy failed; select the key and copy it by hand.")) }, "Copy");
      created.replaceChildren(h("div.secret", { role: "status" },
        h("p", { style: "margin-top:0" }, h("strong", "Copy this key now: it will not be shown again.")),
        h("code", { "data-testid": "new-key" }, secret), " ", copy,
        forOther ? h("p", { style: "margin-bottom:0" }, "This key belongs to a new user, so it is not listed under "
          + "your keys; its holder manages it from their own console.") : null));
      name.value = "";
      newOwner.checked = false;
      load();
    } catch (err) {
      created.replaceChildren(errorBox(err, "Could not create the key"));
    }
  });
  load();

  async function load() {
    let keys;
    try {
      keys = await listAll("/keys");
    } catch (err) {
      list.replaceChildren(errorBox(err, "Could not list keys"));
      return;
    }
    list.replaceChildren(h("div.table-wrap", h("table",
      h("thead", h("tr", h("th", "Name"), h("th", "Key"), h("th.hide-narrow", "Created"), h("th.hide-narrow", "Last used"),
        h("th", h("span.muted", "Actions")))),
      h("tbody", keys.map((k) => h("tr",
        h("td", k.name || "—"),
        h("td.mono", k.prefix ? `${k.prefix}…` : k.id),
        h("td.hide-narrow", fmtTime(k.created_at)),
        h("td.hide-narrow", fmtTime(k.last_used_at)),
        h("td", k.revoked_at ? h("span.muted", "revoked") : h("button.danger", { type: "button",
          "aria-label": `Revoke key ${k.name || k.id}`, onclick: () => revoke(k) }, "Revoke"))))))));
  }

  async function revoke(k) {
    if (!confirmAction(`Revoke key ${k.name || k.id}? Programs using it stop working at once.`)) return;
    try {
      await api(`/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
      flash(`Revoked ${k.name || k.id}.`, "ok");
      load();
    } catch (err) {
      flash(`Could not revoke: ${err.message}`);
    }
  }
}
