// The console's HTTP helpers: the admin key (kept where the upload page keeps its key, so
// one saved key serves both pages), JSON GET/POST, and a DOM builder that only ever sets
// text (never innerHTML: message values come from anyone who can write to Kafka).

export const KEY_STORAGE = "imagerec.apiKey";
export const BASE = "/v1/admin/console";

export function loadKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function saveKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* the key still works for this tab */
  }
}

let currentKey = loadKey();
export function setKey(key) { currentKey = key; saveKey(key); }
export function getKey() { return currentKey; }

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (currentKey) headers.Authorization = `Bearer ${currentKey}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers,
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    return { status: 0, ok: false, body: null, message: "the gateway could not be reached" };
  }
  let parsed = null;
  try { parsed = await resp.json(); } catch { /* not JSON */ }
  const err = parsed && parsed.error;
  return { status: resp.status, ok: resp.ok, body: parsed,
    message: err && err.message ? err.message : `HTTP ${resp.status}` };
}

export const getJson = (path) => call("GET", path);
export const postJson = (path, body) => call("POST", path, body);

/** el("td", {class: "x", title: "y"}, "text", childNode, ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Mark a section with how its last load went (tests and CSS read data-state). */
export function sectionState(id, state, note = "") {
  const section = document.getElementById(id);
  if (section) section.dataset.state = state;
  const noteEl = document.getElementById(`${id}-note`);
  if (noteEl) {
    noteEl.textContent = note;
    noteEl.classList.toggle("is-error", state === "error" || state === "forbidden");
  }
}

/** The usual failure answer for a section: 401/403 explain the key, others the cause. */
export function failed(id, resp) {
  if (resp.status === 401 || resp.status === 403) {
    sectionState(id, "forbidden", `needs an admin key (${resp.status}): ${resp.message}`);
  } else {
    sectionState(id, "error", resp.message);
  }
}

export function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export function formatDuration(seconds) {
  const s = Math.floor(Number(seconds) || 0);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
