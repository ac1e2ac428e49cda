// The requests page: usage records with filters, paging and CSV export.
import { useMemo, useState } from "preact/hooks";
import { get, query } from "../api.js";
import { csv, num, usd, when } from "../format.js";
import { html } from "../html.js";
import { Loading, useLoad, useModels } from "../components.js";

function statusText(r) {
  if (r.refused_by) return `${r.status} refused (${r.refused_by})`;
  return String(r.status);
}

export function RequestTable({ rows, names }) {
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

export function Requests({ params }) {
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
