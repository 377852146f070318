// Buckets with their object counts and bytes.
import { BASE, el, failed, formatBytes, getJson, sectionState } from "./api.js";

export async function loadStorage() {
  const resp = await getJson(`${BASE}/storage`);
  if (!resp.ok) { failed("storage", resp); return; }
  document.getElementById("storage-body").replaceChildren(...resp.body.buckets.map((b) =>
    el("tr", { dataset: { bucket: b.bucket } }, el("td", {}, b.bucket),
      el("td", {}, `${b.capped ? "≥ " : ""}${b.objects}`), el("td", {}, formatBytes(b.bytes)))));
  sectionState("storage", "loaded", `listed ${new Date(resp.body.listed_at).toLocaleTimeString()}`);
}
