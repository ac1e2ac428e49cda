// Time-series charts with uPlot.
import uPlot from "uplot";
import { useEffect, useRef } from "preact/hooks";
import { html } from "./html.js";

const COLORS = ["#2563eb", "#dc2626", "#d97706", "#059669", "#7c3aed"];

// series: [{label, values}], xs: unix seconds. `title` labels the figure.
export function Chart({ title, xs, series, money }) {
  const box = useRef(null);
  useEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    const opts = {
      width: Math.max(el.clientWidth, 240),
      height: 200,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [
        { stroke: "#4b5563", grid: { stroke: "#e5e7eb" } },
        {
          stroke: "#4b5563",
          grid: { stroke: "#e5e7eb" },
          size: money ? 84 : 60,
          values: (u, ticks) => ticks.map((v) => (money ? "$" + +v.toPrecision(3) : +v.toPrecision(4))),
        },
      ],
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, fill: i === 0 ? "rgba(37,99,235,0.08)" : undefined, points: { show: xs.length < 50 } }))],
    };
    const plot = new uPlot(opts, [xs, ...series.map((s) => s.values)], el);
    const resize = () => plot.setSize({ width: Math.max(el.clientWidth, 240), height: 200 });
    window.addEventListener("resize", resize);
    return () => {
      window.removeEventListener("resize", resize);
      plot.destroy();
    };
  }, [xs, series]);
  const total = series.map((s) => `${s.label}: ${s.values.reduce((a, b) => a + b, 0).toLocaleString("en-US", { maximumFractionDigits: 6 })}`).join(", ");
  return html`<figure class="chart">
    <figcaption>${title}</figcaption>
    <div ref=${box} role="img" aria-label=${`${title}: ${total}`}></div>
  </figure>`;
}
