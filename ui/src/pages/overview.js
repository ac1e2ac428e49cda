// The overview page: usage over a range (totals, charts) and the top keys
// and models by spend.
import { useState } from "preact/hooks";
import { get } from "../api.js";
import { num, usd } from "../format.js";
import { html } from "../html.js";
import { Loading, RangePicker, SummaryCharts, Totals, summaryPath, useLoad } from "../components.js";

export function Overview() {
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
          <${TopTable} rows=${s.top_models} first="Model" name=${(r) => r.model || html`<span class="muted">(no model: refused before one was read)</span>`} />
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
