// Which worker owns which partitions, with its model, engine, memory and uptime.
import { BASE, el, failed, formatDuration, getJson, sectionState } from "./api.js";

export async function loadWorkers() {
  const resp = await getJson(`${BASE}/workers`);
  if (!resp.ok) { failed("workers", resp); return; }
  const rows = resp.body.workers.map((w) => {
    const parts = Object.entries(w.partitions || {}).filter(([t]) => t.startsWith("image-"))
      .map(([t, ps]) => `${t}: ${ps.join(",")}`).join("; ");
    return el("tr", { dataset: { worker: w.worker ?? w.url } },
      el("td", {}, w.worker ?? w.url), el("td", { class: w.ok ? "ok" : "bad" },
        w.ok ? "up" : `down (${w.error})`),
      el("td", {}, parts || "—"),
      el("td", {}, w.model ? `${w.model.name} ${w.model.version}` : "—"),
      el("td", {}, w.model ? w.model.engine : "—"),
      el("td", {}, w.rss_mb ? `${Math.round(w.rss_mb)} MB` : "—"),
      el("td", {}, w.uptime_s !== undefined ? formatDuration(w.uptime_s) : "—"));
  });
  document.getElementById("workers-body").replaceChildren(...rows);
  const up = resp.body.workers.filter((w) => w.ok).length;
  sectionState("workers", "loaded", `${up} of ${resp.body.workers.length} up`);
}
