// Shared pieces of the admin UI: loading data, dialogs, the usage summary
// (range picker, totals, charts) and the small renderings of limits and spend.
import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
import { get, query } from "./api.js";
import { Chart } from "./chart.js";
import { num, usd } from "./format.js";
import { html } from "./html.js";

export function useLoad(fn, deps) {
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

export function Loading({ state, children }) {
  if (state.error) return html`<p class="error" role="alert">${state.error.message}</p>`;
  if (state.loading && !state.data) return html`<p class="muted" aria-live="polite">Loading…</p>`;
  return children(state.data);
}

export const RANGES = {
  "24h": { label: "Last 24 hours", secs: 86400, bucket: "hour" },
  "7d": { label: "Last 7 days", secs: 7 * 86400, bucket: "hour" },
  "30d": { label: "Last 30 days", secs: 30 * 86400, bucket: "day" },
};

export function summaryPath(range, extra = {}) {
  const r = RANGES[range];
  const until = Math.ceil(Date.now() / 1000 / 3600) * 3600;
  return "/admin/usage/summary" + query({ since: until - r.secs, until, bucket: r.bucket, ...extra });
}

export function RangePicker({ value, onChange }) {
  return html`<div class="range" role="group" aria-label="Time range">
    ${Object.entries(RANGES).map(([k, r]) => html`<button type="button" aria-pressed=${value === k ? "true" : "false"} onClick=${() => onChange(k)}>${r.label}</button>`)}
  </div>`;
}

export function Totals({ t }) {
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

export function SummaryCharts({ s }) {
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

export function useModels() {
  const [state] = useLoad(() => get("/admin/models"), []);
  return state.data ? state.data.data.map((m) => m.id) : [];
}

export function limitsText(l) {
  const parts = [];
  if (l.rpm != null) parts.push(`${num(l.rpm)} rpm`);
  if (l.rpd != null) parts.push(`${num(l.rpd)} rpd`);
  if (l.tpm != null) parts.push(`${num(l.tpm)} tpm`);
  return parts.length ? parts.join(", ") : "none";
}

// ARIA values must be plain decimals: a tiny budget (1e-9 USD) is written out
// in full, never in exponent form.
function ariaNumber(v) {
  return Number(v).toFixed(9).replace(/\.?0+$/, "") || "0";
}

export function SpendBar({ spent, max }) {
  if (max == null) return html`<span class="muted">no budget</span>`;
  const pct = max > 0 ? Math.min(100, (spent / max) * 100) : 100;
  return html`<span class="spend">
    <span class="bar" role="meter" aria-valuemin="0" aria-valuemax=${ariaNumber(max)} aria-valuenow=${ariaNumber(spent)} aria-label="Spend against budget">
      <span class=${"fill" + (pct >= 90 ? " hot" : "")} style=${{ width: pct + "%" }}></span>
    </span>
    <span>${usd(spent)} / ${usd(max)}</span>
  </span>`;
}

export function Dialog({ title, onClose, children }) {
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

export function Confirm({ title, text, action, danger, run, onClose }) {
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
