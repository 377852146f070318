// Live charts (uPlot, vendored from npm by scripts/install.sh): each one is a fixed query
// that the server runs against Prometheus (/v1/admin/console/charts/NAME).
import { BASE, el, failed, getJson, sectionState } from "./api.js";

// Loaded on first use, so that without the vendored file (an image built without `make
// install`) the rest of the console still works and this section says what is missing.
let uPlot = null;
async function loadUplot() {
  if (!uPlot) uPlot = (await import("/vendor/uplot/uPlot.esm.js")).default;
  return uPlot;
}

const COLORS = ["#2f5bd3", "#1f7a3d", "#b3261e", "#9a6400", "#7b3fb8", "#00838f", "#c2185b",
  "#5d4037"];
const plots = new Map();   // chart name -> { plot, names }

/** Series on one time axis: uPlot wants [xs, ys1, ys2, ...] with nulls for gaps. */
function align(series) {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map((s) => {
    const col = new Array(xs.length).fill(null);
    for (const [t, v] of s.points) col[index.get(t)] = v;
    return col;
  });
  return [xs, ...ys];
}

function draw(box, chart) {
  const names = chart.series.map((s) => s.name);
  const data = align(chart.series);
  const known = plots.get(chart.name);
  const points = chart.series.reduce((n, s) => n + s.points.length, 0);
  box.dataset.points = String(points);
  const nonzero = chart.series.flatMap((s) => s.points.filter((p) => p[1] > 0).map((p) => p[0]));
  box.dataset.nonzero = String(nonzero.length > 0);   // a flat zero line is data, not a picture
  box.dataset.lastNonzero = String(nonzero.length ? Math.max(...nonzero) : 0);
  box.dataset.series = String(names.length);
  box.querySelector(".chart-empty").hidden = points > 0;
  if (known && known.names.join("|") === names.join("|")) {
    known.plot.setData(data);
    return;
  }
  if (known) known.plot.destroy();
  const area = box.querySelector(".chart-area");
  const opts = {
    width: Math.max(280, area.clientWidth || 360),
    height: 180,
    legend: { show: true },
    scales: { x: { time: true } },
    axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => fmt(v, chart.unit)) }],
    series: [{}, ...names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length],
      width: 1.5, spanGaps: false }))],
  };
  plots.set(chart.name, { plot: new uPlot(opts, data, area), names });
}

function fmt(v, unit) {
  if (v === null || v === undefined) return "";
  if (unit === "s") return v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(1)} s`;
  return Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
}

function boxFor(grid, chart) {
  let box = grid.querySelector(`[data-chart="${chart.name}"]`);
  if (!box) {
    box = el("figure", { class: "chart", dataset: { chart: chart.name, points: "0" } },
      el("figcaption", {}, chart.title, el("span", { class: "hint" }, ` (${chart.unit})`)),
      el("div", { class: "chart-area" }),
      el("p", { class: "hint chart-empty" }, "no data in this window yet"));
    grid.append(box);
  }
  return box;
}

let chartList = null;

export async function loadCharts() {
  const grid = document.getElementById("chart-grid");
  try {
    await loadUplot();
  } catch {
    sectionState("charts", "error", "the chart library is missing: run `make install` " +
      "(it vendors uPlot into web/static/vendor/)");
    return;
  }
  if (!chartList) {
    const resp = await getJson(`${BASE}/charts`);
    if (!resp.ok) { failed("charts", resp); return; }
    chartList = resp.body.charts;
  }
  const range = document.getElementById("chart-range").value;
  const answers = await Promise.all(chartList.map((c) =>
    getJson(`${BASE}/charts/${encodeURIComponent(c.name)}?range=${range}`)));
  const bad = answers.find((a) => !a.ok);
  answers.forEach((resp, i) => {
    if (resp.ok) draw(boxFor(grid, chartList[i]), resp.body);
  });
  if (bad) failed("charts", bad);
  else sectionState("charts", "loaded", `updated ${new Date().toLocaleTimeString()}`);
}

export function wireCharts() {
  document.getElementById("chart-range").addEventListener("change", loadCharts);
}
