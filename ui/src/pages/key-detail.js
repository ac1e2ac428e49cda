// One key: its facts, remaining limits and spend, usage charts and recent
// requests.
import { useState } from "preact/hooks";
import { get, query } from "../api.js";
import { keyStatus, num, when } from "../format.js";
import { html } from "../html.js";
import { Loading, RangePicker, SpendBar, SummaryCharts, Totals, limitsText, summaryPath, useLoad, useModels } from "../components.js";
import { KeyDialogs } from "./keys.js";
import { RequestTable } from "./requests.js";

function Remaining({ label, v }) {
  if (!v) return html`<div class="stat"><dt>${label}</dt><dd class="muted">unlimited</dd></div>`;
  return html`<div class="stat"><dt>${label}</dt><dd>${num(v.remaining)} <span class="muted small">of ${num(v.limit)}</span></dd></div>`;
}

export function KeyDetail({ id }) {
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
