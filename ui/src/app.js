// The Conduit admin UI: sign-in, overview, keys, key detail, requests, models.
// Routing by the URL fragment (#/keys/ID), so the gateway serves one page.
import "uplot/dist/uPlot.min.css";
import "./app.css";
import { render } from "preact";
import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api, get, query, setUnauthorizedHandler } from "./api.js";
import { Chart } from "./chart.js";
import { ago, csv, keyStatus, num, usd, when } from "./format.js";
import { html } from "./html.js";

// ---------------------------------------------------------------- routing

function parseHash() {
  const h = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = h.split("?");
  return { path, params: new URLSearchParams(qs || "") };
}

function useRoute() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const on = () => setRoute(parseHash());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

// ---------------------------------------------------------------- data hooks

function useLoad(fn, deps) {
  const [state, setState] = useState({ loading: true, data: null, error: null });
  const reload = useCallback(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    fn().then(
      (data) => live && setState({ loading: false, data, error: null }),
      (error) => live && setState({ loading: false, data: null, error }),
    );
    return () => {
      live = false;
    };
  }, deps);
  useEffect(reload, [reload]);
  return [state, reload];
}

function Loading({ state, children }) {
  if (state.error) return html`<p class="error" role="alert">${state.error.message}</p>`;
  if (state.loading && !state.data) return html`<p class="muted" aria-live="polite">Loading…</p>`;
  return children(state.data);
}

// ---------------------------------------------------------------- sign-in

function SignIn({ onDone }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api("POST", "/admin/session", { master_key: key });
      setKey("");
      onDone();
    } catch (err) {
      setError(err.status === 401 ? "That is not the master key." : err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="signin" id="main">
    <h1>Conduit admin</h1>
    <form onSubmit=${submit} class="card">
      <label for="master-key">Master key</label>
      <input id="master-key" type="password" autocomplete="current-password" required
        value=${key} onInput=${(e) => setKey(e.currentTarget.value)} />
      <p class="hint">The value of <code>CONDUIT_MASTER_KEY</code>. It is sent once; the session lasts 12 hours.</p>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button>
    </form>
  </main>`;
}

function Disabled() {
  return html`<main class="signin" id="main">
    <h1>Conduit admin</h1>
    <div class="card" role="alert">
      <h2>The admin API is disabled</h2>
      <p>This gateway has no master key. Set <code>CONDUIT_MASTER_KEY</code> and restart it to enable the admin API and this UI:</p>
      <ul>
        <li>server: <code>CONDUIT_MASTER_KEY=… conduit serve</code></li>
        <li>Cloudflare: <code>npx wrangler secret put CONDUIT_MASTER_KEY</code></li>
        <li>AWS Lambda: the <code>ConduitMasterKey</code> parameter of <code>sam deploy</code></li>
      </ul>
    </div>
  </main>`;
}

// ---------------------------------------------------------------- shell

const NAV = [
  ["/", "Overview"],
  ["/keys", "Keys"],
  ["/requests", "Requests"],
  ["/models", "Models"],
];

function Shell({ route, onSignOut, children }) {
  const current = "/" + (route.path.split("/")[1] || "");
  return html`<div class="shell">
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>Skip to content</a>
    <header class="top">
      <span class="brand">Conduit</span>
      <nav aria-label="Main">
        <ul>
          ${NAV.map(([p, label]) => html`<li><a href=${"#" + p} aria-current=${current === p ? "page" : undefined}>${label}</a></li>`)}
        </ul>
      </nav>
      <button type="button" class="link signout" onClick=${onSignOut}>Sign out</button>
    </header>
    <main id="main" tabindex="-1">${children}</main>
  </div>`;
}

// ---------------------------------------------------------------- overview

const RANGES = {
  "24h": { label: "Last 24 hours", secs: 86400, bucket: "hour" },
  "7d": { label: "Last 7 days", secs: 7 * 86400, bucket: "hour" },
  "30d": { label: "Last 30 days", secs: 30 * 86400, bucket: "day" },
};

function summaryPath(range, extra = {}) {
  const r = RANGES[range];
  const until = Math.ceil(Date.now() / 1000 / 3600) * 3600;
  return "/admin/usage/summary" + query({ since: until - r.secs, until, bucket: r.bucket, ...extra });
}

function RangePicker({ value, onChange }) {
  return html`<div class="range" role="group" aria-label="Time range">
    ${Object.entries(RANGES).map(([k, r]) => html`<button type="button" aria-pressed=${value === k ? "true" : "false"} onClick=${() => onChange(k)}>${r.label}</button>`)}
  </div>`;
}

function Totals({ t }) {
  const items = [
    ["Requests", num(t.requests)],
    ["Errors", num(t.errors)],
    ["Refused: rate limit", num(t.rate_limited)],
    ["Refused: budget", num(t.budget_refused)],
    ["Tokens", num(t.total_tokens)],
    ["Spend", usd(t.cost_usd)],
  ];
  return html`<dl class="totals">${items.map(([k, v]) => html`<div class="stat"><dt>${k}</dt><dd>${v}</dd></div>`)}</dl>`;
}

function SummaryCharts({ s }) {
  const data = useMemo(() => {
    const xs = s.buckets.map((b) => b.start_unix);
    const col = (f) => s.buckets.map(f);
    return {
      xs,
      requests: [
        { label: "requests", values: col((b) => b.requests) },
        { label: "errors", values: col((b) => b.errors) },
        { label: "refused", values: col((b) => b.refused) },
      ],
      tokens: [
        { label: "prompt tokens", values: col((b) => b.prompt_tokens) },
        { label: "completion tokens", values: col((b) => b.completion_tokens) },
      ],
      spend: [{ label: "spend (USD)", values: col((b) => b.cost_usd) }],
    };
  }, [s]);
  return html`<div class="charts">
    <${Chart} title="Requests, errors and refusals" xs=${data.xs} series=${data.requests} />
    <${Chart} title="Tokens" xs=${data.xs} series=${data.tokens} />
    <${Chart} title="Spend" xs=${data.xs} series=${data.spend} money=${true} />
  </div>`;
}

function Overview() {
  const [range, setRange] = useState("24h");
  const [state] = useLoad(() => get(summaryPath(range)), [range]);
  return html`<h1>Overview</h1>
    <${RangePicker} value=${range} onChange=${setRange} />
    <${Loading} state=${state}>${(s) => html`
      <${Totals} t=${s.totals} />
      <${SummaryCharts} s=${s} />
      <div class="two">
        <section aria-labelledby="top-keys">
          <h2 id="top-keys">Top keys by spend</h2>
          <${TopTable} rows=${s.top_keys} first="Key" name=${(r) => html`<a href=${"#/keys/" + encodeURIComponent(r.key_id)}>${r.name ?? r.key_id + " (deleted)"}</a>`} />
        </section>
        <section aria-labelledby="top-models">
          <h2 id="top-models">Top models by spend</h2>
          <${TopTable} rows=${s.top_models} first="Model" name=${(r) => r.model} />
        </section>
      </div>`}<//>`;
}

function TopTable({ rows, first, name }) {
  if (!rows.length) return html`<p class="muted">No requests in this range.</p>`;
  return html`<div class="scroll" tabindex="0" role="region" aria-label=${"Top " + first.toLowerCase() + "s"}><table>
    <thead><tr><th scope="col">${first}</th><th scope="col" class="n">Requests</th><th scope="col" class="n">Tokens</th><th scope="col" class="n">Spend</th></tr></thead>
    <tbody>${rows.map((r) => html`<tr><td>${name(r)}</td><td class="n">${num(r.requests)}</td><td class="n">${num(r.total_tokens)}</td><td class="n">${usd(r.cost_usd)}</td></tr>`)}</tbody>
  </table></div>`;
}

// ---------------------------------------------------------------- keys

function useModels() {
  const [state] = useLoad(() => get("/admin/models"), []);
  return state.data ? state.data.data.map((m) => m.id) : [];
}

function limitsText(l) {
  const parts = [];
  if (l.rpm != null) parts.push(`${num(l.rpm)} rpm`);
  if (l.rpd != null) parts.push(`${num(l.rpd)} rpd`);
  if (l.tpm != null) parts.push(`${num(l.tpm)} tpm`);
  return parts.length ? parts.join(", ") : "none";
}

function SpendBar({ spent, max }) {
  if (max == null) return html`<span class="muted">no budget</span>`;
  const pct = max > 0 ? Math.min(100, (spent / max) * 100) : 100;
  return html`<span class="spend">
    <span class="bar" role="meter" aria-valuemin="0" aria-valuemax=${max} aria-valuenow=${spent} aria-label="Spend against budget">
      <span class=${"fill" + (pct >= 90 ? " hot" : "")} style=${{ width: pct + "%" }}></span>
    </span>
    <span>${usd(spent)} / ${usd(max)}</span>
  </span>`;
}

function Keys() {
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

// ------------------------------------------------ dialogs: create, edit, toggle, rotate, delete

function Dialog({ title, onClose, children }) {
  const ref = useRef(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    const cancel = (e) => {
      e.preventDefault();
      onClose(false);
    };
    d.addEventListener("cancel", cancel);
    return () => d.removeEventListener("cancel", cancel);
  }, []);
  return html`<dialog ref=${ref} aria-labelledby="dialog-title">
    <h2 id="dialog-title">${title}</h2>
    ${children}
  </dialog>`;
}

function KeyDialogs({ dialog, models, onClose }) {
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

function Confirm({ title, text, action, danger, run, onClose }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const go = async () => {
    setBusy(true);
    try {
      await run();
      onClose(true);
    } catch (e) {
      setError(e.message);
      setBusy(false);
    }
  };
  return html`<${Dialog} title=${title} onClose=${onClose}>
    <p>${text}</p>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="buttons">
      <button type="button" onClick=${() => onClose(false)}>Cancel</button>
      <button type="button" class=${danger ? "danger solid" : "primary"} disabled=${busy} onClick=${go}>${action}</button>
    </div>
  <//>`;
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

// ---------------------------------------------------------------- key detail

function Remaining({ label, v }) {
  if (!v) return html`<div class="stat"><dt>${label}</dt><dd class="muted">unlimited</dd></div>`;
  return html`<div class="stat"><dt>${label}</dt><dd>${num(v.remaining)} <span class="muted small">of ${num(v.limit)}</span></dd></div>`;
}

function KeyDetail({ id }) {
  const [state, reload] = useLoad(() => get("/admin/keys/" + encodeURIComponent(id)), [id]);
  const [range, setRange] = useState("24h");
  const [summary] = useLoad(() => get(summaryPath(range, { key_id: id })), [id, range]);
  const [recent] = useLoad(() => get("/admin/usage" + query({ key_id: id, limit: 20 })), [id]);
  const [dialog, setDialog] = useState(null);
  const models = useModels();
  return html`<${Loading} state=${state}>${(k) => html`
    <p><a href="#/keys">← Keys</a></p>
    <div class="heading">
      <h1>${k.name}</h1>
      <div class="actions">
        <button type="button" onClick=${() => setDialog({ kind: "edit", key: k })}>Edit</button>
        <button type="button" onClick=${() => setDialog({ kind: "toggle", key: k })}>${k.enabled ? "Disable" : "Enable"}</button>
        <button type="button" onClick=${() => setDialog({ kind: "rotate", key: k })}>Rotate</button>
        <button type="button" class="danger" onClick=${() => setDialog({ kind: "delete", key: k })}>Delete</button>
      </div>
    </div>
    <dl class="facts">
      <div><dt>Id</dt><dd>${k.id}</dd></div>
      <div><dt>Status</dt><dd><span class=${"badge " + keyStatus(k)}>${keyStatus(k)}</span></dd></div>
      <div><dt>Allowed models</dt><dd>${k.allowed_models.length ? k.allowed_models.join(", ") : "all"}</dd></div>
      <div><dt>Limits</dt><dd>${limitsText(k.limits)}</dd></div>
      <div><dt>Expires</dt><dd>${k.expires_at ? when(k.expires_at) : "never"}</dd></div>
      <div><dt>Last used</dt><dd>${when(k.last_used_at)}</dd></div>
      <div><dt>Created</dt><dd>${when(k.created_at)}</dd></div>
      <div><dt>Metadata</dt><dd><code>${JSON.stringify(k.metadata)}</code></dd></div>
    </dl>
    <h2>Remaining limits</h2>
    <dl class="totals">
      <${Remaining} label="Requests this minute (rpm)" v=${k.rate_limits?.rpm} />
      <${Remaining} label="Requests today (rpd)" v=${k.rate_limits?.rpd} />
      <${Remaining} label="Tokens this minute (tpm)" v=${k.rate_limits?.tpm} />
      <div class="stat"><dt>Spend this period</dt><dd>${k.spend ? html`<${SpendBar} spent=${k.spend.spent_usd} max=${k.spend.max_usd} /><div class="muted small">${k.spend.period} since ${when(k.spend.period_start)}</div>` : html`<span class="muted">no budget</span>`}</dd></div>
    </dl>
    <h2>Usage</h2>
    <${RangePicker} value=${range} onChange=${setRange} />
    <${Loading} state=${summary}>${(s) => html`<${Totals} t=${s.totals} /><${SummaryCharts} s=${s} />`}<//>
    <h2>Recent requests</h2>
    <${Loading} state=${recent}>${(r) => html`<${RequestTable} rows=${r.data} names=${{ [k.id]: k.name }} />`}<//>
    <p><a href=${"#/requests?key_id=" + encodeURIComponent(k.id)}>All requests of this key</a></p>
    ${dialog && html`<${KeyDialogs} dialog=${dialog} models=${models} onClose=${(changed) => {
      setDialog(null);
      if (changed && dialog.kind === "delete") location.hash = "#/keys";
      else if (changed) reload();
    }} />`}
  `}<//>`;
}

// ---------------------------------------------------------------- requests

function statusText(r) {
  if (r.refused_by) return `${r.status} refused (${r.refused_by})`;
  return String(r.status);
}

function RequestTable({ rows, names }) {
  if (!rows.length) return html`<p class="muted">No requests.</p>`;
  return html`<div class="scroll" tabindex="0" role="region" aria-label="Requests table"><table class="requests">
    <thead><tr><th scope="col">Time</th><th scope="col">Key</th><th scope="col">Model</th><th scope="col">Status</th>
      <th scope="col" class="n">Prompt</th><th scope="col" class="n">Completion</th><th scope="col" class="n">Total tokens</th><th scope="col" class="n">Cost</th><th scope="col" class="n">Latency</th></tr></thead>
    <tbody>${rows.map((r) => html`<tr key=${r.request_id} data-request-id=${r.request_id}>
      <td>${when(r.created_at_ms ? new Date(r.created_at_ms).toISOString() : r.created_at)}</td>
      <td><a href=${"#/keys/" + encodeURIComponent(r.key_id)}>${names[r.key_id] ?? r.key_id}</a></td>
      <td>${r.model}</td>
      <td><span class=${"badge " + (r.refused_by ? "refused" : r.status >= 400 ? "error" : "ok")}>${statusText(r)}</span></td>
      <td class="n">${num(r.prompt_tokens)}</td><td class="n">${num(r.completion_tokens)}</td><td class="n">${num(r.total_tokens)}</td>
      <td class="n">${r.price_known ? usd(r.cost_usd) : "unpriced"}</td><td class="n">${r.latency_ms} ms</td>
    </tr>`)}</tbody>
  </table></div>`;
}

const CSV_COLUMNS = ["created_at", "request_id", "key_id", "model", "provider", "provider_model", "endpoint", "status", "refused_by", "streamed",
  "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens", "cost_usd", "cost_nano_usd", "latency_ms", "upstream_latency_ms", "overhead_ms"];

function Requests({ params }) {
  const [filters, setFilters] = useState({
    key_id: params.get("key_id") || "", model: params.get("model") || "", status: params.get("status") || "",
    since: params.get("since") || "", until: params.get("until") || "",
  });
  const [cursors, setCursors] = useState([null]);
  const cursor = cursors[cursors.length - 1];
  const [keys] = useLoad(() => get("/admin/keys"), []);
  const models = useModels();
  const q = useMemo(() => ({
    key_id: filters.key_id, model: filters.model, status: filters.status,
    since: filters.since ? Math.floor(new Date(filters.since).getTime() / 1000) : "",
    until: filters.until ? Math.floor(new Date(filters.until).getTime() / 1000) : "",
  }), [filters]);
  const [page] = useLoad(() => get("/admin/usage" + query({ ...q, limit: 50, cursor })), [q, cursor]);
  const [exporting, setExporting] = useState(null);
  const names = useMemo(() => Object.fromEntries((keys.data?.data || []).map((k) => [k.id, k.name])), [keys.data]);
  const set = (k) => (e) => {
    setFilters({ ...filters, [k]: e.currentTarget.value });
    setCursors([null]);
  };
  const exportCsv = async () => {
    setExporting("Exporting…");
    try {
      const rows = [];
      let c = null;
      do {
        const p = await get("/admin/usage" + query({ ...q, limit: 1000, cursor: c }));
        rows.push(...p.data);
        c = p.next_cursor;
        setExporting(`Exporting… ${rows.length} records`);
      } while (c && rows.length < 100000);
      const blob = new Blob([csv(CSV_COLUMNS, rows)], { type: "text/csv" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "conduit-requests.csv";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      setExporting(`Exported ${rows.length} records.`);
    } catch (e) {
      setExporting("Export failed: " + e.message);
    }
  };
  return html`<div class="heading"><h1>Requests</h1>
      <button type="button" onClick=${exportCsv}>Export CSV</button></div>
    <p aria-live="polite" class="muted">${exporting || ""}</p>
    <form class="filters" onSubmit=${(e) => e.preventDefault()} aria-label="Filters">
      <label>Key <select value=${filters.key_id} onChange=${set("key_id")}>
        <option value="">all keys</option>
        ${(keys.data?.data || []).map((k) => html`<option value=${k.id}>${k.name}</option>`)}
        ${filters.key_id && !names[filters.key_id] && html`<option value=${filters.key_id}>${filters.key_id}</option>`}
      </select></label>
      <label>Model <select value=${filters.model} onChange=${set("model")}>
        <option value="">all models</option>${models.map((m) => html`<option value=${m}>${m}</option>`)}
      </select></label>
      <label>Status <select value=${filters.status} onChange=${set("status")}>
        <option value="">all</option><option value="ok">ok</option><option value="error">errors</option><option value="refused">refused</option>
      </select></label>
      <label>From <input type="datetime-local" value=${filters.since} onInput=${set("since")} /></label>
      <label>To <input type="datetime-local" value=${filters.until} onInput=${set("until")} /></label>
    </form>
    <${Loading} state=${page}>${(p) => html`
      <${RequestTable} rows=${p.data} names=${names} />
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled=${cursors.length < 2} onClick=${() => setCursors(cursors.slice(0, -1))}>Newer</button>
        <span class="muted">Page ${cursors.length}</span>
        <button type="button" disabled=${!p.next_cursor} onClick=${() => setCursors([...cursors, p.next_cursor])}>Older</button>
      </nav>`}<//>`;
}

// ---------------------------------------------------------------- models

function price(p) {
  if (!p) return html`<span class="muted">unknown</span>`;
  const f = (v) => (v == null ? "–" : "$" + +v.toPrecision(6));
  return html`${f(p.input_usd)} in / ${f(p.output_usd)} out${p.cached_input_usd != null ? html` / ${f(p.cached_input_usd)} cached` : ""}`;
}

function routingText(r) {
  const parts = [r.strategy, `${r.retries} ${r.retries === 1 ? "retry" : "retries"}`, `timeout ${r.timeout_ms / 1000} s`];
  if (r.fallbacks && r.fallbacks.length) parts.push("fallbacks: " + r.fallbacks.join(", "));
  if (r.context_window_fallbacks && r.context_window_fallbacks.length) parts.push("context-window fallbacks: " + r.context_window_fallbacks.join(", "));
  return parts.join("; ");
}

function Models() {
  const [state] = useLoad(() => get("/admin/models"), []);
  return html`<h1>Models</h1>
    <p class="muted">Prices are USD per million tokens. Routing: the alias's strategy, retries, attempt timeout and fallbacks.</p>
    <${Loading} state=${state}>${(d) => html`<div class="scroll" tabindex="0" role="region" aria-label="Models table"><table class="models">
      <thead><tr><th scope="col">Alias</th><th scope="col">#</th><th scope="col">Provider</th><th scope="col">Kind</th><th scope="col">Model</th><th scope="col">Price per 1M tokens</th><th scope="col">Routing</th></tr></thead>
      <tbody>${d.data.flatMap((m) => m.deployments.map((dep, i) => html`<tr>
        ${i === 0 && html`<th scope="rowgroup" rowspan=${m.deployments.length}>${m.id}</th>`}
        <td>${i + 1}</td><td>${dep.provider}</td><td>${dep.provider_kind}</td><td>${dep.model}</td><td>${price(dep.price_per_million_tokens)}</td>
        ${i === 0 && html`<td rowspan=${m.deployments.length}>${routingText(m.routing)}</td>`}
      </tr>`))}</tbody>
    </table></div>`}<//>`;
}

// ---------------------------------------------------------------- app

function App() {
  const route = useRoute();
  const [session, setSession] = useState(null);
  const check = useCallback(() => {
    get("/admin/session").then(setSession, () => setSession({ admin_enabled: true, signed_in: false, error: true }));
  }, []);
  useEffect(() => {
    check();
    setUnauthorizedHandler(() => setSession((s) => ({ ...(s || {}), signed_in: false })));
  }, []);
  useEffect(() => {
    const h = document.querySelector("main h1");
    document.title = (h ? h.textContent + " · " : "") + "Conduit admin";
  });
  if (!session) return html`<p class="muted">Loading…</p>`;
  if (!session.admin_enabled) return html`<${Disabled} />`;
  if (!session.signed_in) return html`<${SignIn} onDone=${check} />`;
  const signOut = async () => {
    await api("DELETE", "/admin/session").catch(() => null);
    location.hash = "#/";
    setSession({ ...session, signed_in: false });
  };
  const parts = route.path.split("/").filter(Boolean);
  let page;
  if (parts.length === 0) page = html`<${Overview} />`;
  else if (parts[0] === "keys" && parts[1]) page = html`<${KeyDetail} id=${decodeURIComponent(parts[1])} key=${parts[1]} />`;
  else if (parts[0] === "keys") page = html`<${Keys} />`;
  else if (parts[0] === "requests") page = html`<${Requests} params=${route.params} />`;
  else if (parts[0] === "models") page = html`<${Models} />`;
  else page = html`<h1>Not found</h1><p><a href="#/">Overview</a></p>`;
  return html`<${Shell} route=${route} onSignOut=${signOut}>${page}<//>`;
}

render(html`<${App} />`, document.getElementById("app"));
