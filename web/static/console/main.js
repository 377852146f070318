// The operator console: wires the key form and refreshes every view on its own timer.
// Each view is its own module; they share only the helpers in api.js.
import { getKey, setKey } from "./api.js";
import { loadAlerts } from "./alerts.js";
import { loadCharts, wireCharts } from "./charts.js";
import { loadDlq, wireDlq } from "./dlq.js";
import { loadStorage } from "./storage.js";
import { loadStream, wireStream } from "./stream.js";
import { loadWorkers } from "./workers.js";
import { fetchTrace, renderTrace } from "../trace.js";

// Prometheus scrapes every 15 s (IMAGEREC_PROMETHEUS_SCRAPE_INTERVAL_S): faster is wasted.
const VIEWS = [
  [loadAlerts, 15000], [loadCharts, 15000], [loadWorkers, 10000], [loadStream, 10000],
  [loadDlq, 10000], [loadStorage, 30000],
];
const timers = [];

async function refreshAll() {
  const dot = document.getElementById("refresh-dot");
  await Promise.allSettled(VIEWS.map(([load]) => load()));
  const states = [...document.querySelectorAll("main section[data-state]")]
    .map((s) => s.dataset.state);
  const forbidden = states.includes("forbidden");
  dot.className = `dot ${forbidden ? "dot-bad" : states.includes("error") ? "dot-warn" : "dot-ok"}`;
  document.getElementById("refresh-text").textContent = forbidden ? "needs an admin key"
    : `updated ${new Date().toLocaleTimeString()}`;
  document.getElementById("key-message").textContent = forbidden
    ? "This key is not an admin key (403): the console needs one." : getKey() ? "Key accepted." : "";
}

function start() {
  while (timers.length) clearInterval(timers.pop());
  if (!getKey()) {
    document.getElementById("refresh-text").textContent = "enter an admin key";
    return;
  }
  refreshAll();
  for (const [load, every] of VIEWS) timers.push(setInterval(load, every));
}

function wire() {
  const input = document.getElementById("api-key");
  input.value = getKey();
  document.getElementById("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setKey(input.value.trim());
    start();
  });
  document.getElementById("trace-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("trace-out");
    const id = document.getElementById("trace-id").value.trim();
    try {
      const trace = await fetchTrace(id, getKey() ? { Authorization: `Bearer ${getKey()}` } : {});
      out.replaceChildren(renderTrace(trace));
      document.getElementById("trace").dataset.state = "loaded";
    } catch (err) {
      out.textContent = String(err.message || err);
      document.getElementById("trace").dataset.state = "error";
    }
  });
  wireCharts();
  wireStream();
  wireDlq();
}

wire();
start();
document.documentElement.dataset.ready = "true";
