// Firing and pending alerts from Prometheus, at the top of the console.
import { BASE, el, failed, getJson, sectionState } from "./api.js";

export async function loadAlerts() {
  const resp = await getJson(`${BASE}/alerts`);
  const list = document.getElementById("alerts-list");
  const summary = document.getElementById("alerts-summary");
  if (!resp.ok) {
    list.replaceChildren();
    summary.textContent = resp.message;
    failed("alerts", resp);
    return;
  }
  const alerts = resp.body.alerts || [];
  const firing = alerts.filter((a) => a.state === "firing").length;
  summary.textContent = alerts.length ? `${firing} firing, ${alerts.length - firing} pending`
    : "nothing firing";
  list.replaceChildren(...alerts.map((a) => el("li", { class: `alert alert-${a.state}` },
    el("strong", {}, a.name), " ", el("span", { class: "badge" }, a.state),
    a.severity ? el("span", { class: "hint" }, ` ${a.severity}`) : null,
    el("span", {}, a.summary ? ` — ${a.summary}` : ""),
    a.since ? el("span", { class: "hint" }, ` since ${new Date(a.since).toLocaleTimeString()}`)
      : null)));
  document.getElementById("alerts").dataset.firing = String(firing);
  sectionState("alerts", "loaded");
}
