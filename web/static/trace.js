// One image's journey as a waterfall: the `trace` of GET /v1/images/{id}?trace=1 (the server
// computes the stages, app/trace.py; this only draws them). Shared by the upload page and
// the console. Bars are sized through the CSSOM, which the pages' CSP allows.

function node(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A <figure> with one row per stage: name, +offset, own duration, and its bar. */
export function renderTrace(trace) {
  const fig = node("figure", "waterfall");
  const total = Number(trace.total_ms) || 0;
  fig.dataset.totalMs = String(total);
  fig.dataset.stages = String((trace.stages || []).length);
  const list = node("ol", "waterfall-rows");
  for (const stage of trace.stages || []) {
    const row = node("li", "waterfall-row");
    row.dataset.stage = stage.stage;
    row.title = stage.what || "";
    const track = node("span", "waterfall-track");
    const bar = node("span", "waterfall-bar");
    const start = total > 0 ? ((stage.offset_ms - stage.ms) / total) * 100 : 0;
    const width = total > 0 ? (stage.ms / total) * 100 : 0;
    bar.style.marginLeft = `${Math.max(0, start).toFixed(2)}%`;
    bar.style.width = `${Math.max(0.5, width).toFixed(2)}%`;
    track.append(bar);
    row.append(node("span", "waterfall-name", stage.stage),
      node("span", "waterfall-ms", `${Number(stage.ms).toFixed(1)} ms`), track);
    list.append(row);
  }
  const caption = node("figcaption", "hint",
    `${total.toFixed(1)} ms from ${trace.stages?.[0]?.stage ?? "?"} to ` +
    `${trace.stages?.at(-1)?.stage ?? "?"}` +
    (trace.request_id ? ` · request ${trace.request_id}` : "") +
    (trace.partition !== undefined ? ` · partition ${trace.partition} offset ${trace.offset}` : "") +
    (trace.complete ? "" : " · incomplete"));
  fig.append(list, caption);
  return fig;
}

/** Fetch an image's trace with the given headers and draw it; an error text otherwise. */
export async function fetchTrace(imageId, headers) {
  const resp = await fetch(`/v1/images/${encodeURIComponent(imageId)}?trace=1&top_k=1`,
    { headers: { Accept: "application/json", ...headers } });
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok || !body) {
    const msg = body && body.error ? body.error.message : `HTTP ${resp.status}`;
    throw new Error(msg);
  }
  return body.trace;
}
