// imagerec web page: upload many images, watch them get classified live, browse recent results.
//
// Plain ES module, no build step and no third-party code, so the gateway can serve it as a
// static file and the page works offline. Server data is only ever put into the page with
// textContent (never innerHTML), and the CSP in index.html forbids inline script and style.
//
// Flow: each file is POSTed on its own XMLHttpRequest (fetch has no upload progress), the
// server answers 202 with an id, and the finished result arrives on the /v1/events stream.
// A one-off long-poll (GET ?wait=) is only a safety net for results the stream missed.

import { fetchTrace, renderTrace } from "/trace.js";

const KEY_STORAGE = "imagerec.apiKey";
const MAX_PARALLEL_UPLOADS = 4;     // a browser allows 6 connections per host; keep 2 spare
const MAX_RETRIES = 3;              // for 429 and 503, which carry Retry-After
const READY_POLL_MS = 15000;
const SAFETY_NET_MS = 12000;        // long-poll an image whose result the stream has not sent
const LONG_POLL_S = 25;
const GALLERY_MAX = 200;
const RATE_WINDOW_MS = 60000;
const IMAGE_EXTENSIONS = /\.(jpe?g|png|webp|gif|bmp|tiff?)$/i;

const $ = (id) => document.getElementById(id);

const state = {
  apiKey: loadKey(),
  nextLocalId: 1,
  waiting: [],                // entries not yet sent, in order
  active: 0,                  // uploads in flight
  entries: new Map(),         // local id -> upload entry
  byServerId: new Map(),      // server image id -> upload entry
  early: new Map(),           // results that arrived before their upload's 202
  gallery: new Map(),         // server image id -> { result, el }
  thumbs: new Map(),          // server image id -> object URL of the uploaded file
  finishedAt: [],             // timestamps of results seen, for images/minute
  source: null,               // the EventSource
  sourceRetryMs: 1000,
  liveOpen: false,
};

// ---------------------------------------------------------------------------------------
// API key

function loadKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";                // storage can be disabled (private mode, policies)
  }
}

function saveKey(key) {
  state.apiKey = key;
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* the key still works for this tab */
  }
}

function authHeaders() {
  return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
}

function keyMessage(text, isError = false) {
  const el = $("key-message");
  el.textContent = text;
  el.classList.toggle("is-error", isError);
}

function keyRejected(message) {
  const why = message ? `: ${message}` : "";
  keyMessage(state.apiKey
    ? `The API key was rejected (401)${why}. Enter a valid key and save it.`
    : `This server needs an API key (401)${why}. Enter your key above and save it.`, true);
  $("api-key").setAttribute("aria-invalid", "true");
}

// ---------------------------------------------------------------------------------------
// HTTP helpers

/** The server's own error message when it sent one, else a readable fallback. */
function errorText(status, body, statusText = "") {
  const err = body && typeof body === "object" ? body.error : null;
  if (err && err.message) return err.message;
  const fallback = {
    0: "the gateway could not be reached",
    400: "the request was malformed",
    401: "the API key was rejected",
    404: "not found",
    413: "the file is too large",
    415: "not an image, or a format that is not allowed",
    422: "the image could not be decoded",
    429: "too many requests; slow down",
    502: "no worker is available",
    503: "a dependency is down; retry shortly",
  };
  return fallback[status] || `HTTP ${status} ${statusText}`.trim();
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function api(path, { signal } = {}) {
  const resp = await fetch(path, { headers: { Accept: "application/json", ...authHeaders() },
    signal });
  const body = parseJson(await resp.text());
  return { status: resp.status, ok: resp.ok, body, statusText: resp.statusText };
}

function retryAfterMs(header, attempt) {
  const seconds = Number.parseFloat(header || "");
  const base = Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : 2000 * 2 ** attempt;
  return Math.min(base, 30000);
}

// ---------------------------------------------------------------------------------------
// Cards (shared by "Your uploads" and the gallery)

function formatPercent(score) {
  const pct = score * 100;
  if (pct > 0 && pct < 0.1) return "<0.1%";
  return `${pct.toFixed(1)}%`;
}

function newCard(name) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".card-name").textContent = name;
  node.querySelector(".card-name").title = name;
  const img = node.querySelector("img");
  img.addEventListener("error", () => {
    node.classList.add("no-thumb");
    if (node.dataset.thumb === "remote") {
      node.dataset.thumb = "failed";            // the letter stays
      return;
    }
    // A local file the browser cannot draw (TIFF, say): show the server's copy instead.
    const result = thumbFallbacks.get(node);
    if (result && node.dataset.thumb === "local") wantServerThumb(node, result);
  });
  return node;
}

function setThumb(card, url, name, alt = "") {
  const img = card.querySelector("img");
  if (url) {
    card.classList.remove("no-thumb");
    img.src = url;
    img.alt = alt || (name ? `Thumbnail of ${name}` : "Thumbnail");
  } else {
    card.classList.add("no-thumb");
    img.removeAttribute("src");
  }
}

const BADGES = {
  waiting: "waiting",
  uploading: "uploading",
  retrying: "retrying",
  queued: "queued",
  processing: "processing",
  done: "done",
  failed: "failed",
  rejected: "rejected",
};

function setBadge(card, status, text) {
  const badge = card.querySelector(".badge");
  badge.textContent = text || BADGES[status] || status;
  badge.dataset.status = status;
  card.dataset.status = status;
}

function setMessage(card, text, isError = false) {
  const msg = card.querySelector(".card-message");
  msg.textContent = text || "";
  msg.classList.toggle("is-error", isError);
  msg.setAttribute("role", isError ? "alert" : "status");
}

function setProgress(card, fraction, text) {
  const row = card.querySelector(".progress-row");
  if (fraction === null) {
    row.hidden = true;
    return;
  }
  row.hidden = false;
  const bar = row.querySelector("progress");
  bar.value = Math.round(fraction * 100);
  bar.setAttribute("aria-label", `Upload progress of ${card.querySelector(".card-name").textContent}`);
  row.querySelector(".progress-text").textContent = text;
}

function renderLabels(card, labels) {
  const list = card.querySelector(".labels");
  list.replaceChildren();
  for (const item of (labels || []).slice(0, 5)) {
    const score = Math.max(0, Math.min(1, Number(item.score) || 0));
    const li = document.createElement("li");
    li.className = "label-row";
    const name = document.createElement("span");
    name.className = "label-name";
    name.textContent = item.label;
    if (item.class_id !== undefined) name.title = `class ${item.class_id}`;
    const pct = document.createElement("span");
    pct.className = "label-score";
    pct.textContent = formatPercent(score);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${(score * 100).toFixed(1)}%`;   // CSSOM, allowed by the CSP
    bar.append(fill);
    li.append(name, pct, bar);
    list.append(li);
  }
}

function resultMeta(result) {
  const parts = [];
  if (result.model && result.model.name) {
    parts.push(`${result.model.name}${result.model.version ? ` v${result.model.version}` : ""}`);
  }
  const started = Date.parse(result.created_at || "");
  const ended = Date.parse(result.completed_at || "");
  if (Number.isFinite(started) && Number.isFinite(ended) && ended >= started) {
    parts.push(`${((ended - started) / 1000).toFixed(2)} s`);
  }
  if (Number.isFinite(ended)) parts.push(new Date(ended).toLocaleTimeString());
  return parts.join(" · ");
}

/** Paint a server result (any status) onto a card. */
function paintResult(card, result) {
  const status = result.status || "queued";
  setBadge(card, status);
  setProgress(card, null);
  if (status === "failed") {
    const reason = result.error && result.error.message ? result.error.message : "unknown reason";
    setMessage(card, `Failed: ${reason}`, true);
  } else if (status === "done") {
    setMessage(card, (result.labels || []).length ? "" : "No label above the threshold.");
  } else if (status === "processing") {
    setMessage(card, "Being classified…");
  } else {
    setMessage(card, "Queued for classification…");
  }
  renderLabels(card, status === "done" ? result.labels : []);
  card.querySelector(".card-meta").textContent = status === "done" ? resultMeta(result) : "";
  wireTrace(card, isFinal(status) ? result.id : null);
}

/** "Where the time went": the image's stages (GET ?trace=1), fetched when first opened. */
function wireTrace(card, imageId) {
  const details = card.querySelector(".trace-details");
  details.hidden = !imageId;
  if (!imageId || details.dataset.imageId === imageId) return;
  details.dataset.imageId = imageId;
  details.open = false;
  const out = details.querySelector(".trace-out");
  out.replaceChildren();
  details.ontoggle = async () => {
    if (!details.open || out.dataset.loaded === imageId) return;
    out.dataset.loaded = imageId;
    try {
      out.replaceChildren(renderTrace(await fetchTrace(imageId, authHeaders())));
    } catch (err) {
      out.dataset.loaded = "";
      out.textContent = `No trace: ${err.message}`;
    }
  };
}

// ---------------------------------------------------------------------------------------
// Uploads

function addFiles(files) {
  const list = Array.from(files).filter((f) => f && (f.size > 0 || f.type));
  if (!list.length) return;
  for (const file of list) {
    const entry = {
      localId: state.nextLocalId++,
      file,
      name: file.name || "pasted image",
      thumb: URL.createObjectURL(file),
      attempts: 0,
      status: "waiting",
      serverId: null,
      result: null,
      safetyTimer: null,
      card: newCard(file.name || "pasted image"),
    };
    setThumb(entry.card, entry.thumb, entry.name);
    entry.card.dataset.thumb = "local";
    setBadge(entry.card, "waiting");
    setMessage(entry.card, "Waiting to upload…");
    state.entries.set(entry.localId, entry);
    state.waiting.push(entry);
    $("uploads").prepend(entry.card);
  }
  $("uploads-empty").hidden = true;
  updateSummary();
  pump();
}

function pump() {
  while (state.active < MAX_PARALLEL_UPLOADS && state.waiting.length) {
    const entry = state.waiting.shift();
    state.active += 1;
    send(entry);
  }
}

function send(entry) {
  entry.status = "uploading";
  setBadge(entry.card, "uploading");
  setMessage(entry.card, "");
  setProgress(entry.card, 0, "0%");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/images");
  xhr.setRequestHeader("Accept", "application/json");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (ev) => {
    if (!ev.lengthComputable) return;
    const fraction = ev.loaded / ev.total;
    setProgress(entry.card, fraction, `${Math.round(fraction * 100)}%`);
  });
  xhr.upload.addEventListener("load", () => {
    setProgress(entry.card, 1, "100% · waiting for the server");
  });
  xhr.addEventListener("load", () => finishUpload(entry, xhr.status, xhr.responseText,
    xhr.getResponseHeader("Retry-After"), xhr.statusText));
  xhr.addEventListener("error", () => finishUpload(entry, 0, "", null, ""));
  xhr.addEventListener("timeout", () => finishUpload(entry, 0, "", null, ""));
  const form = new FormData();
  form.append("file", entry.file, entry.name);
  xhr.send(form);
}

function finishUpload(entry, status, text, retryAfter, statusText) {
  state.active -= 1;
  let body = parseJson(text);
  if (Array.isArray(body)) body = body[0] || null;   // a one-file multipart may get a list
  if ((status === 429 || status === 503 || status === 502) && entry.attempts < MAX_RETRIES) {
    const delay = retryAfterMs(retryAfter, entry.attempts);
    entry.attempts += 1;
    entry.status = "retrying";
    setBadge(entry.card, "retrying", `retry in ${Math.ceil(delay / 1000)} s`);
    setProgress(entry.card, null);
    setMessage(entry.card, `${errorText(status, body, statusText)} — retrying ` +
      `(${entry.attempts}/${MAX_RETRIES}).`);
    setTimeout(() => {
      state.waiting.unshift(entry);
      pump();
    }, delay);
  } else if ((status === 200 || status === 202) && body && body.id && !body.error) {
    entry.serverId = body.id;
    state.byServerId.set(body.id, entry);
    state.thumbs.set(body.id, entry.thumb);
    const early = state.early.get(body.id);
    state.early.delete(body.id);
    applyResult(entry, early || body);
    if (!isFinal(entry.status)) armSafetyNet(entry, state.liveOpen ? SAFETY_NET_MS : 0);
  } else {
    reject(entry, status, body, statusText);
  }
  updateSummary();
  pump();
}

function reject(entry, status, body, statusText) {
  entry.status = "rejected";
  setProgress(entry.card, null);
  setBadge(entry.card, "rejected", status ? `rejected · ${status}` : "not sent");
  const reason = body && body.error ? body.error : null;
  setMessage(entry.card, errorText(status, reason ? { error: reason } : body, statusText), true);
  if (status === 401) keyRejected(reason && reason.message);
}

function isFinal(status) {
  return status === "done" || status === "failed" || status === "rejected";
}

function applyResult(entry, result) {
  entry.status = result.status || "queued";
  entry.result = result;
  paintResult(entry.card, result);
  if (isFinal(entry.status)) {
    clearTimeout(entry.safetyTimer);
    // If the browser could not draw the file itself, the server's copy stands in.
    thumbFallbacks.set(entry.card, result);
    if (entry.card.classList.contains("no-thumb")) wantServerThumb(entry.card, result);
    upsertGallery(result);
  }
  updateSummary();
}

/**
 * Wait for one image with a long-poll. Used right away when the event stream is down and,
 * otherwise, only for an image whose result the stream has not delivered in a while (it may
 * have finished while the stream was reconnecting). Not a loop over all images.
 */
function armSafetyNet(entry, delayMs) {
  clearTimeout(entry.safetyTimer);
  entry.safetyTimer = setTimeout(async () => {
    if (isFinal(entry.status)) return;
    try {
      const resp = await api(`/v1/images/${encodeURIComponent(entry.serverId)}` +
        `?wait=${LONG_POLL_S}&top_k=5`);
      if (isFinal(entry.status)) return;       // the stream won the race
      if (resp.ok && resp.body) applyResult(entry, resp.body);
      else if (resp.status === 401) keyRejected(errorText(401, resp.body));
    } catch {
      /* the gateway is unreachable; the status strip says so */
    }
    if (!isFinal(entry.status)) armSafetyNet(entry, state.liveOpen ? SAFETY_NET_MS * 2 : 2000);
  }, delayMs);
}

function updateSummary() {
  const counts = {};
  for (const entry of state.entries.values()) counts[entry.status] = (counts[entry.status] || 0) + 1;
  const order = ["waiting", "uploading", "retrying", "queued", "processing", "done", "failed",
    "rejected"];
  const text = order.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(" · ");
  $("upload-summary").textContent = text;
  const finished = (counts.done || 0) + (counts.failed || 0) + (counts.rejected || 0);
  $("uploads-clear").hidden = finished === 0;
}

function clearFinished() {
  for (const [localId, entry] of state.entries) {
    if (!isFinal(entry.status)) continue;
    dropServerThumb(entry.card);
    entry.card.remove();
    state.entries.delete(localId);
    if (entry.serverId) state.byServerId.delete(entry.serverId);
    if (!entry.serverId || !state.gallery.has(entry.serverId)) URL.revokeObjectURL(entry.thumb);
  }
  $("uploads-empty").hidden = state.entries.size > 0;
  updateSummary();
  $("uploads-heading").focus();
}

// ---------------------------------------------------------------------------------------
// Server thumbnails
//
// A card without the uploaded file (a result from another client, or from before a reload)
// shows the image the model classified, the result's links.input. An <img src> cannot send
// the API key, so the JPEG is fetched with the key and shown from an object URL. Only cards
// on screen fetch, a few at a time: a full gallery must not spend the key's rate limit or
// the connections that uploads need. Each object URL is revoked when its card goes.
// card.dataset.thumb says where a card's picture stands (tests wait on it):
// local | waiting (off screen) | queued | loading | remote | failed.

const THUMB_PARALLEL = 2;
const THUMB_RETRY_STATUSES = new Set([0, 429, 502, 503]);   // worth asking again later
const serverThumbs = new WeakMap();   // card -> { path, alt, key, status, retry, url }
const thumbFallbacks = new WeakMap(); // card with a local file -> its final result
const thumbQueue = [];
let thumbsActive = 0;
const thumbObserver = typeof IntersectionObserver === "function"
  ? new IntersectionObserver(onThumbsVisible, { rootMargin: "200px 0px" })
  : null;

/** The thumbnail for a card: the local file while it draws, else the server's copy. */
function showThumb(card, localUrl, name, result) {
  const server = serverThumbs.get(card);
  if (server && server.url) {
    setThumb(card, server.url, name, server.alt);
  } else if (localUrl && !server) {   // a server copy is only asked for once the file failed
    setThumb(card, localUrl, name);
    card.dataset.thumb = "local";
    thumbFallbacks.set(card, result);
  } else {
    setThumb(card, null);
    wantServerThumb(card, result);
  }
}

/** Queue the server's copy of a finished image for this card, once it is on screen. Asks
 * again only after a failure that may pass (rate limit, outage) or under another key. */
function wantServerThumb(card, result) {
  const path = result && result.links && result.links.input;
  if (typeof path !== "string" || !path.startsWith("/v1/images/")) return;  // keyed API only
  const top = result.labels && result.labels[0];
  const alt = top ? String(top.label) : "Classified image";
  const known = serverThumbs.get(card);
  if (known && known.path === path &&
      !(known.status === "failed" && (known.retry || known.key !== state.apiKey))) {
    known.alt = alt;
    return;
  }
  dropServerThumb(card);
  serverThumbs.set(card, { path, alt, key: state.apiKey, status: "waiting", retry: false,
    url: null });
  card.dataset.thumb = "waiting";
  if (thumbObserver) {
    thumbObserver.observe(card);
  } else {
    onThumbsVisible([{ target: card, isIntersecting: true }]);
  }
}

function onThumbsVisible(entries) {
  for (const { target, isIntersecting } of entries) {
    const thumb = serverThumbs.get(target);
    if (!thumb) continue;
    if (isIntersecting && thumb.status === "waiting") {
      thumb.status = target.dataset.thumb = "queued";
      thumbQueue.push(target);
    } else if (!isIntersecting && thumb.status === "queued") {
      thumb.status = target.dataset.thumb = "waiting";  // scrolled away before its turn
    }
  }
  pumpThumbs();
}

function pumpThumbs() {
  while (thumbsActive < THUMB_PARALLEL && thumbQueue.length) {
    const card = thumbQueue.shift();
    const thumb = serverThumbs.get(card);
    if (thumb && thumb.status === "queued" && card.isConnected) loadServerThumb(card, thumb);
  }
}

async function loadServerThumb(card, thumb) {
  thumbsActive += 1;
  thumb.status = "loading";
  card.dataset.thumb = "loading";
  if (thumbObserver) thumbObserver.unobserve(card);
  let status = 0;
  try {
    const resp = await fetch(thumb.path, { headers: { Accept: "image/jpeg", ...authHeaders() } });
    status = resp.status;
    const blob = resp.ok ? await resp.blob() : null;
    if (serverThumbs.get(card) !== thumb) return;     // the card went meanwhile
    if (!blob || !blob.type.startsWith("image/")) throw new Error(`HTTP ${status}`);
    thumb.url = URL.createObjectURL(blob);
    thumb.status = "loaded";
    card.dataset.thumb = "remote";
    setThumb(card, thumb.url, null, thumb.alt);
  } catch {
    if (serverThumbs.get(card) === thumb) {
      thumb.status = "failed";
      thumb.retry = THUMB_RETRY_STATUSES.has(status);
      card.dataset.thumb = "failed";  // the letter stays
    }
  } finally {
    thumbsActive -= 1;
    pumpThumbs();
  }
}

/** Forget a card's server thumbnail (the card is going, or asks again): free its blob. */
function dropServerThumb(card) {
  if (thumbObserver) thumbObserver.unobserve(card);
  const thumb = serverThumbs.get(card);
  if (thumb && thumb.url) URL.revokeObjectURL(thumb.url);
  serverThumbs.delete(card);
}

// ---------------------------------------------------------------------------------------
// Gallery

function upsertGallery(result, { append = false } = {}) {
  if (!result || !result.id || !isFinal(result.status)) return;
  let item = state.gallery.get(result.id);
  if (!item) {
    const local = state.byServerId.get(result.id);
    const card = newCard(local ? local.name : galleryName(result));
    card.querySelector(".card-name").title = `image ${result.id}`;
    item = { result, el: card };
    state.gallery.set(result.id, item);
    if (append) $("gallery").append(card);
    else $("gallery").prepend(card);
    trimGallery();
  }
  item.result = result;
  const thumb = state.thumbs.get(result.id);
  const localName = state.byServerId.get(result.id)?.name;
  if (localName) item.el.querySelector(".card-name").textContent = localName;
  const top = result.labels && result.labels[0];
  item.el.querySelector(".thumb-placeholder").textContent =
    top ? top.label.charAt(0).toUpperCase() : "?";
  showThumb(item.el, thumb || null, localName, result);
  paintResult(item.el, result);
  applyFilter();
  refreshLabelOptions();
}

/** Results from other clients carry no file name; when they were made is more useful than
 * a time-sortable id whose first characters are all alike. */
function galleryName(result) {
  const when = Date.parse(result.completed_at || result.created_at || "");
  if (!Number.isFinite(when)) return `…${String(result.id).slice(-6)}`;
  const date = new Date(when);
  const today = new Date().toDateString() === date.toDateString();
  const time = date.toLocaleTimeString([], { hour12: false });
  return today ? time : `${date.toLocaleDateString()} ${time}`;
}

function trimGallery() {
  while (state.gallery.size > GALLERY_MAX) {
    const last = $("gallery").lastElementChild;
    if (!last) break;
    for (const [id, item] of state.gallery) {
      if (item.el === last) {
        state.gallery.delete(id);
        break;
      }
    }
    dropServerThumb(last);
    last.remove();
  }
}

function applyFilter() {
  const query = $("label-filter").value.trim().toLowerCase();
  let shown = 0;
  for (const { result, el } of state.gallery.values()) {
    const labels = (result.labels || []).map((l) => String(l.label).toLowerCase());
    const match = !query || labels.some((l) => l.includes(query));
    el.hidden = !match;
    if (match) shown += 1;
  }
  const total = state.gallery.size;
  $("gallery-empty").hidden = total > 0;
  $("gallery-count").textContent = !total ? "" :
    query ? `${shown} of ${total} match “${$("label-filter").value.trim()}”` : `${total} shown`;
}

function refreshLabelOptions() {
  const freq = new Map();
  for (const { result } of state.gallery.values()) {
    const top = result.labels && result.labels[0];
    if (top) freq.set(top.label, (freq.get(top.label) || 0) + 1);
  }
  const options = [...freq.entries()].sort((a, b) => b[1] - a[1]).slice(0, 50).map(([label]) => {
    const opt = document.createElement("option");
    opt.value = label;
    return opt;
  });
  $("label-options").replaceChildren(...options);
}

async function loadGallery() {
  try {
    const resp = await api("/v1/images?limit=50&top_k=5");
    if (resp.status === 401) keyRejected(errorText(401, resp.body));
    if (!resp.ok || !resp.body || !Array.isArray(resp.body.images)) return;
    for (const result of resp.body.images) upsertGallery(result, { append: true });
  } catch {
    /* the gallery fills from live results instead */
  }
}

// ---------------------------------------------------------------------------------------
// Live updates (Server-Sent Events)

function setLive(kind, text) {
  $("live-dot").className = `dot dot-${kind}`;
  $("live-text").textContent = `live updates: ${text}`;
}

function connectEvents() {
  if (state.source) state.source.close();
  const query = state.apiKey ? `?api_key=${encodeURIComponent(state.apiKey)}` : "";
  const source = new EventSource(`/v1/events${query}`);
  state.source = source;
  setLive("unknown", "connecting…");
  source.addEventListener("open", () => {
    if (state.source !== source) return;
    const wasDown = !state.liveOpen;
    state.liveOpen = true;
    state.sourceRetryMs = 1000;
    setLive("ok", "on");
    // The gallery loads here, each time the stream opens: a result that finished
    // while the stream was connecting is in the list, and one that finishes later is streamed.
    loadGallery();
    // Results may have finished while the stream was down: check each pending image once.
    if (wasDown) {
      for (const entry of state.entries.values()) {
        if (entry.serverId && !isFinal(entry.status)) armSafetyNet(entry, 0);
      }
    }
  });
  source.addEventListener("result", (ev) => {
    const result = parseJson(ev.data);
    if (result && result.id) onLiveResult(result);
  });
  source.addEventListener("error", () => {
    if (state.source !== source) return;
    state.liveOpen = false;
    if (source.readyState === EventSource.CLOSED) {
      // The browser gives up on a non-200 answer; find out why, then try again later.
      explainClosedStream(query, source);
      const delay = state.sourceRetryMs;
      state.sourceRetryMs = Math.min(state.sourceRetryMs * 2, 30000);
      setTimeout(() => { if (state.source === source) connectEvents(); }, delay);
    } else {
      setLive("warn", "reconnecting…");
    }
  });
}

async function explainClosedStream(query, source) {
  const ctrl = new AbortController();
  try {
    const resp = await fetch(`/v1/events${query}`, { signal: ctrl.signal });
    if (state.source !== source) {
      // A newer stream (e.g. opened with a key saved meanwhile) owns the status now: an
      // answer about the old one's key must not overwrite it.
      ctrl.abort();
      return;
    }
    if (resp.status === 401) {
      const body = parseJson(await resp.text());
      setLive("bad", state.apiKey ? "key rejected" : "needs an API key");
      keyRejected(errorText(401, body));
    } else {
      ctrl.abort();
      setLive("bad", resp.status === 404 ? "not available" : `off (HTTP ${resp.status})`);
      loadGallery();   // no stream to open: show the recent list anyway
    }
  } catch {
    if (state.source === source) setLive("bad", "off (gateway unreachable)");
  }
}

function onLiveResult(result) {
  if (isFinal(result.status)) {
    state.finishedAt.push(Date.now());
    renderRate();
  }
  const entry = state.byServerId.get(result.id);
  if (entry) {
    applyResult(entry, result);
  } else {
    if (state.early.size > 500) state.early.clear();
    state.early.set(result.id, result);
    upsertGallery(result);
  }
}

function renderRate() {
  const cutoff = Date.now() - RATE_WINDOW_MS;
  while (state.finishedAt.length && state.finishedAt[0] < cutoff) state.finishedAt.shift();
  $("rate-value").textContent = String(state.finishedAt.length);
}

// ---------------------------------------------------------------------------------------
// Status strip

async function checkReady() {
  const dot = $("ready-dot");
  const text = $("ready-text");
  try {
    const resp = await api("/readyz");
    if (resp.body && resp.body.ready) {
      dot.className = "dot dot-ok";
      text.textContent = "ready";
    } else if (resp.body && Array.isArray(resp.body.down)) {
      dot.className = "dot dot-warn";
      text.textContent = `degraded: ${resp.body.down.join(", ") || "not ready"} down`;
    } else {
      dot.className = "dot dot-warn";
      text.textContent = `degraded (${errorText(resp.status, resp.body, resp.statusText)})`;
    }
  } catch {
    dot.className = "dot dot-bad";
    text.textContent = "gateway unreachable";
  }
}

async function loadModels() {
  try {
    const resp = await api("/v1/models");
    if (resp.status === 401) {
      $("model-name").textContent = "(needs a key)";
      keyRejected(errorText(401, resp.body));
      return;
    }
    if (resp.ok && resp.body) {
      const models = resp.body.models || [];
      const def = models.find((m) => m.default) || models.find((m) => m.name === resp.body.default);
      $("model-name").textContent = def && def.version ? `${def.name} v${def.version}` :
        resp.body.default || "?";
      if (state.apiKey) {
        keyMessage("Key accepted.");
        $("api-key").removeAttribute("aria-invalid");
      }
    } else {
      $("model-name").textContent = "unavailable";
    }
  } catch {
    $("model-name").textContent = "?";
  }
}

// ---------------------------------------------------------------------------------------
// Input: picker, drag and drop (files and folders), paste

async function filesFromDrop(dataTransfer) {
  const entries = [...(dataTransfer.items || [])]
    .map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  if (!entries.length || entries.some((e) => !e)) return [...dataTransfer.files];
  const out = [];
  async function walk(entry, inFolder) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      // A folder may hold anything; explicit files go to the server, which says what's wrong.
      if (!inFolder || IMAGE_EXTENSIONS.test(file.name)) out.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, true);
      }
    }
  }
  for (const entry of entries) await walk(entry, false);
  return out;
}

function wireInputs() {
  const input = $("file-input");
  const zone = $("dropzone");
  zone.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";           // picking the same file again still fires "change"
  });

  let depth = 0;                // dragenter/leave fire for every child element
  const hasFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (ev) => {
    if (!hasFiles(ev)) return;
    depth += 1;
    zone.classList.add("is-dragging");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("is-dragging");
  });
  window.addEventListener("dragover", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();        // otherwise the browser opens the dropped file
    ev.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("drop", async (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    depth = 0;
    zone.classList.remove("is-dragging");
    addFiles(await filesFromDrop(ev.dataTransfer));
  });
  document.addEventListener("paste", (ev) => {
    const files = ev.clipboardData ? [...ev.clipboardData.files] : [];
    if (files.length) {
      ev.preventDefault();
      addFiles(files);
    }
  });
}

function wireKeyForm() {
  const input = $("api-key");
  input.value = state.apiKey;
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    saveKey(input.value.trim());
    input.removeAttribute("aria-invalid");
    keyMessage(state.apiKey ? "Key saved; checking…" : "No key set.");
    connectEvents();   // the gallery loads once the stream is open
    loadModels();
  });
  $("key-toggle").addEventListener("click", (ev) => {
    const show = input.type === "password";
    input.type = show ? "text" : "password";
    ev.currentTarget.textContent = show ? "Hide" : "Show";
    ev.currentTarget.setAttribute("aria-pressed", String(show));
  });
  $("key-clear").addEventListener("click", () => {
    input.value = "";
    saveKey("");
    keyMessage("Key forgotten.");
    connectEvents();
  });
}

function main() {
  wireKeyForm();
  wireInputs();
  $("label-filter").addEventListener("input", applyFilter);
  $("uploads-clear").addEventListener("click", clearFinished);
  connectEvents();
  checkReady();
  setInterval(checkReady, READY_POLL_MS);
  setInterval(renderRate, 2000);
  loadModels();
  applyFilter();
  document.documentElement.dataset.ready = "true";   // lets tests know the page is wired
}

main();
