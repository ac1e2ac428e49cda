// The keys page: the table with search and status filter, and the dialogs
// that create, edit, enable/disable, rotate and delete a key (the secret is
// shown once).
import { useState } from "preact/hooks";
import { api, get } from "../api.js";
import { ago, keyStatus, when } from "../format.js";
import { html } from "../html.js";
import { Confirm, Dialog, Loading, SpendBar, limitsText, useLoad, useModels } from "../components.js";

export function Keys() {
  const [state, reload] = useLoad(() => get("/admin/keys"), []);
  const [search, setSearch] = useState("");
  const [status, setStatus] = useState("all");
  const [dialog, setDialog] = useState(null);
  const models = useModels();
  const close = (changed) => {
    setDialog(null);
    if (changed) reload();
  };
  return html`<div class="heading">
      <h1>Keys</h1>
      <button type="button" class="primary" onClick=${() => setDialog({ kind: "create" })}>Create key</button>
    </div>
    <div class="filters">
      <label>Search <input type="search" value=${search} onInput=${(e) => setSearch(e.currentTarget.value)} placeholder="name, id or metadata" /></label>
      <label>Status <select value=${status} onChange=${(e) => setStatus(e.currentTarget.value)}>
        <option value="all">all</option><option value="active">active</option><option value="disabled">disabled</option><option value="expired">expired</option>
      </select></label>
    </div>
    <${Loading} state=${state}>${(d) => html`<${KeyTable} keys=${d.data.filter((k) => (status === "all" || keyStatus(k) === status) && matches(k, search))} onAction=${(kind, key) => setDialog({ kind, key })} />`}<//>
    ${dialog && html`<${KeyDialogs} dialog=${dialog} models=${models} onClose=${close} />`}`;
}

function matches(k, search) {
  const q = search.trim().toLowerCase();
  if (!q) return true;
  return [k.name, k.id, JSON.stringify(k.metadata || {})].some((s) => s.toLowerCase().includes(q));
}

function KeyTable({ keys, onAction }) {
  if (!keys.length) return html`<p class="muted">No keys match.</p>`;
  return html`<div class="scroll" tabindex="0" role="region" aria-label="Keys table"><table class="keys">
    <caption class="sr">Virtual keys</caption>
    <thead><tr>
      <th scope="col">Name</th><th scope="col">Status</th><th scope="col">Allowed models</th><th scope="col">Limits</th>
      <th scope="col">Budget</th><th scope="col">Last used</th><th scope="col">Expires</th><th scope="col"><span class="sr">Actions</span></th>
    </tr></thead>
    <tbody>${keys.map((k) => html`<tr key=${k.id}>
      <td><a href=${"#/keys/" + encodeURIComponent(k.id)}>${k.name}</a><div class="muted small">${k.id}</div></td>
      <td><span class=${"badge " + keyStatus(k)}>${keyStatus(k)}</span></td>
      <td>${k.allowed_models.length ? k.allowed_models.join(", ") : html`<span class="muted">all</span>`}</td>
      <td>${limitsText(k.limits)}</td>
      <td><${KeySpend} k=${k} /></td>
      <td title=${k.last_used_at ? when(k.last_used_at) : undefined}>${ago(k.last_used_at)}</td>
      <td>${k.expires_at ? when(k.expires_at) : html`<span class="muted">never</span>`}</td>
      <td class="actions">
        <button type="button" onClick=${() => onAction("edit", k)} aria-label=${"Edit " + k.name}>Edit</button>
        <button type="button" onClick=${() => onAction("toggle", k)} aria-label=${(k.enabled ? "Disable " : "Enable ") + k.name}>${k.enabled ? "Disable" : "Enable"}</button>
        <button type="button" onClick=${() => onAction("rotate", k)} aria-label=${"Rotate " + k.name}>Rotate</button>
        <button type="button" class="danger" onClick=${() => onAction("delete", k)} aria-label=${"Delete " + k.name}>Delete</button>
      </td>
    </tr>`)}</tbody>
  </table></div>`;
}

// The spend of the current period comes with the key's own record.
function KeySpend({ k }) {
  const [state] = useLoad(() => (k.budget ? get("/admin/keys/" + encodeURIComponent(k.id)) : Promise.resolve(null)), [k.id, k.updated_at]);
  if (!k.budget) return html`<span class="muted">none</span>`;
  const s = state.data && state.data.spend;
  return html`<div>${k.budget.period}</div><${SpendBar} spent=${s ? s.spent_usd : 0} max=${k.budget.max_usd} />`;
}

export function KeyDialogs({ dialog, models, onClose }) {
  const { kind, key } = dialog;
  const [secret, setSecret] = useState(null);
  if (secret) return html`<${SecretDialog} secret=${secret} onClose=${() => onClose(true)} />`;
  if (kind === "create") return html`<${KeyForm} models=${models} onClose=${onClose} onCreated=${setSecret} />`;
  if (kind === "edit") return html`<${KeyForm} models=${models} existing=${key} onClose=${onClose} />`;
  if (kind === "rotate") return html`<${Confirm} title=${"Rotate " + key.name + "?"} action="Rotate key"
    text=${`A new secret replaces the current one at once: applications using "${key.name}" get 401 until they use the new secret.`}
    run=${async () => setSecret((await api("POST", `/admin/keys/${encodeURIComponent(key.id)}/rotate`)).key)}
    onClose=${(changed) => changed || onClose(false)} />`;
  if (kind === "delete") return html`<${Confirm} title=${"Delete " + key.name + "?"} action=${"Delete " + key.name} danger=${true}
    text=${`The key "${key.name}" (${key.id}) stops working at once. This cannot be undone.`}
    run=${() => api("DELETE", `/admin/keys/${encodeURIComponent(key.id)}`)} onClose=${onClose} />`;
  if (kind === "toggle") return html`<${Confirm} title=${(key.enabled ? "Disable " : "Enable ") + key.name + "?"} action=${key.enabled ? "Disable" : "Enable"}
    text=${key.enabled ? `Requests with "${key.name}" will get 401 until it is enabled again.` : `"${key.name}" will work again.`}
    run=${() => api("PATCH", `/admin/keys/${encodeURIComponent(key.id)}`, { enabled: !key.enabled })} onClose=${onClose} />`;
  return null;
}

function SecretDialog({ secret, onClose }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(secret);
      setCopied(true);
    } catch (e) {
      const input = document.getElementById("new-secret");
      input.select();
      setCopied(document.execCommand && document.execCommand("copy"));
    }
  };
  return html`<${Dialog} title="Your new secret" onClose=${() => onClose()}>
    <p class="warn" role="alert"><strong>Copy it now: you will not see this again.</strong> Conduit keeps only its hash.</p>
    <label for="new-secret">Secret</label>
    <div class="secret">
      <input id="new-secret" readonly value=${secret} onFocus=${(e) => e.currentTarget.select()} />
      <button type="button" class="primary" onClick=${copy}>${copied ? "Copied" : "Copy"}</button>
    </div>
    <p aria-live="polite" class="muted">${copied ? "Copied to the clipboard." : ""}</p>
    <div class="buttons"><button type="button" onClick=${() => onClose()}>Done</button></div>
  <//>`;
}

function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function KeyForm({ models, existing, onClose, onCreated }) {
  const e = existing || {};
  const [name, setName] = useState(e.name || "");
  const [allowed, setAllowed] = useState(e.allowed_models || []);
  const [pattern, setPattern] = useState("");
  const [rpm, setRpm] = useState(e.limits?.rpm ?? "");
  const [rpd, setRpd] = useState(e.limits?.rpd ?? "");
  const [tpm, setTpm] = useState(e.limits?.tpm ?? "");
  const [budget, setBudget] = useState(e.budget?.max_usd ?? "");
  const [period, setPeriod] = useState(e.budget?.period || "monthly");
  const [expires, setExpires] = useState(toLocalInput(e.expires_at));
  const [metadata, setMetadata] = useState(e.metadata && Object.keys(e.metadata).length ? JSON.stringify(e.metadata, null, 2) : "");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const int = (v) => (v === "" || v === null ? null : Number(v));
  const toggle = (m) => setAllowed(allowed.includes(m) ? allowed.filter((x) => x !== m) : [...allowed, m]);
  const submit = async (ev) => {
    ev.preventDefault();
    setError(null);
    let meta = {};
    if (metadata.trim()) {
      try {
        meta = JSON.parse(metadata);
      } catch (err) {
        setError("Metadata must be a JSON object.");
        return;
      }
    }
    const body = {
      name,
      allowed_models: allowed,
      limits: { rpm: int(rpm), rpd: int(rpd), tpm: int(tpm) },
      budget: budget === "" ? null : { max_usd: Number(budget), period },
      expires_at: expires ? new Date(expires).toISOString().replace(/\.\d{3}Z$/, "Z") : null,
      metadata: meta,
    };
    setBusy(true);
    try {
      if (existing) {
        await api("PATCH", `/admin/keys/${encodeURIComponent(existing.id)}`, body);
        onClose(true);
      } else {
        const created = await api("POST", "/admin/keys", body);
        onCreated(created.key);
      }
    } catch (err) {
      setError(err.message);
      setBusy(false);
    }
  };
  const extra = allowed.filter((m) => !models.includes(m));
  return html`<${Dialog} title=${existing ? "Edit " + existing.name : "Create a key"} onClose=${onClose}>
    <form onSubmit=${submit} class="form">
      <label for="f-name">Name</label>
      <input id="f-name" required value=${name} onInput=${(ev) => setName(ev.currentTarget.value)} />
      <fieldset>
        <legend>Allowed models <span class="muted">(none checked: every model)</span></legend>
        <div class="checks">
          ${[...models, ...extra].map((m) => html`<label class="check"><input type="checkbox" checked=${allowed.includes(m)} onChange=${() => toggle(m)} /> ${m}</label>`)}
        </div>
        <div class="inline">
          <label for="f-pattern" class="sr">Add a model or prefix pattern</label>
          <input id="f-pattern" placeholder="pattern, e.g. gpt-*" value=${pattern} onInput=${(ev) => setPattern(ev.currentTarget.value)} />
          <button type="button" onClick=${() => { if (pattern.trim() && !allowed.includes(pattern.trim())) setAllowed([...allowed, pattern.trim()]); setPattern(""); }}>Add</button>
        </div>
      </fieldset>
      <fieldset>
        <legend>Rate limits <span class="muted">(empty: unlimited)</span></legend>
        <div class="grid3">
          <label>Requests per minute<input type="number" min="0" step="1" value=${rpm} onInput=${(ev) => setRpm(ev.currentTarget.value)} /></label>
          <label>Requests per day<input type="number" min="0" step="1" value=${rpd} onInput=${(ev) => setRpd(ev.currentTarget.value)} /></label>
          <label>Tokens per minute<input type="number" min="0" step="1" value=${tpm} onInput=${(ev) => setTpm(ev.currentTarget.value)} /></label>
        </div>
      </fieldset>
      <fieldset>
        <legend>Budget <span class="muted">(empty: none)</span></legend>
        <div class="grid3">
          <label>Max USD<input type="number" min="0" step="any" value=${budget} onInput=${(ev) => setBudget(ev.currentTarget.value)} /></label>
          <label>Period<select value=${period} onChange=${(ev) => setPeriod(ev.currentTarget.value)}>
            <option value="daily">daily</option><option value="weekly">weekly</option><option value="monthly">monthly</option><option value="total">total</option>
          </select></label>
        </div>
      </fieldset>
      <label for="f-expires">Expires <span class="muted">(your local time; empty: never)</span></label>
      <input id="f-expires" type="datetime-local" value=${expires} onInput=${(ev) => setExpires(ev.currentTarget.value)} />
      <label for="f-meta">Metadata <span class="muted">(JSON object)</span></label>
      <textarea id="f-meta" rows="3" value=${metadata} onInput=${(ev) => setMetadata(ev.currentTarget.value)} placeholder='{"team": "search"}'></textarea>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <div class="buttons">
        <button type="button" onClick=${() => onClose(false)}>Cancel</button>
        <button type="submit" class="primary" disabled=${busy}>${existing ? "Save" : "Create key"}</button>
      </div>
    </form>
  <//>`;
}
