// The models page: each alias, its deployments, prices and routing.
import { get } from "../api.js";
import { html } from "../html.js";
import { Loading, useLoad } from "../components.js";

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

export function Models() {
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
