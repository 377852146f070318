// The dead-letter topic: each message with its error header, and a replay to image-uploads,
// as it is or edited first (the server refuses a message that would fail again).
import { BASE, el, failed, getJson, postJson, sectionState } from "./api.js";
import { messageItem } from "./stream.js";

function replayedText(mark) {
  return `replayed by ${mark.by} at ${new Date(mark.at).toLocaleString()} as image ` +
    `${mark.image_id}${mark.edited ? " (edited)" : ""}`;
}

function replayForm(m) {
  const area = el("textarea", { class: "edit", rows: 4, spellcheck: "false",
    "aria-label": `Message at partition ${m.partition} offset ${m.offset}, editable` });
  area.value = m.value;
  const status = el("p", { class: "hint replay-status", role: "status" });
  // Once replayed, the buttons say so and send "again" (the server refuses a second replay
  // otherwise, so two operators cannot send one message twice by accident).
  let replayed = Boolean(m.replayed);
  const asIs = el("button", { type: "button", class: "small replay" },
    replayed ? "Replay again" : "Replay");
  const edited = el("button", { type: "button", class: "small replay-edited" },
    replayed ? "Replay edited again" : "Replay edited");
  if (replayed) {
    status.textContent = replayedText(m.replayed);
    status.dataset.outcome = "replayed-before";
  }
  async function replay(useEdit) {
    status.textContent = "replaying…";
    const body = { partition: m.partition, offset: m.offset, again: replayed };
    if (useEdit) body.value = area.value;
    const resp = await postJson(`${BASE}/dlq/replay`, body);
    status.textContent = resp.ok ? `replayed as image ${resp.body.image_id}` : resp.message;
    status.dataset.outcome = resp.ok ? "replayed" : "refused";
    if (resp.ok) {
      status.dataset.imageId = resp.body.image_id;
      replayed = true;
      asIs.textContent = "Replay again";
      edited.textContent = "Replay edited again";
    }
    status.classList.toggle("is-error", !resp.ok);
  }
  asIs.addEventListener("click", () => replay(false));
  edited.addEventListener("click", () => replay(true));
  return el("div", { class: "replay-form" }, area, el("div", {}, asIs, " ", edited), status);
}

export async function loadDlq() {
  const resp = await getJson(`${BASE}/dlq?limit=50`);
  if (!resp.ok) { failed("dlq", resp); return; }
  const list = document.getElementById("dlq-list");
  // Keep what an operator is editing: only add messages not shown yet.
  const shown = new Set([...list.querySelectorAll(":scope > li.message")]
    .map((li) => `${li.dataset.partition}/${li.dataset.offset}`));
  for (const m of [...resp.body.messages].reverse()) {
    if (shown.has(`${m.partition}/${m.offset}`)) continue;
    const item = messageItem(m);
    item.classList.add("dead-letter");
    item.append(el("p", { class: "error-reason" }, `error: ${(m.headers || {}).error || "?"}`),
      replayForm(m));
    list.prepend(item);
  }
  const count = resp.body.messages.length;
  const open = resp.body.messages.filter((m) => !m.replayed).length;
  sectionState("dlq", "loaded", count ? `${count} message(s), ${open} not replayed` : "empty");
}

async function replayAll() {
  const out = document.getElementById("dlq-bulk-status");
  out.textContent = "replaying…";
  const resp = await postJson(`${BASE}/dlq/replay-all`, {});
  if (!resp.ok) {
    out.textContent = resp.message;
    return;
  }
  const { replayed, skipped } = resp.body;
  out.textContent = `replayed ${replayed.length}, skipped ${skipped.length}` +
    (skipped.length ? ` (${[...new Set(skipped.map((s) => s.reason.split(" (")[0]))].join("; ")})` : "");
  document.getElementById("dlq-list").replaceChildren();   // redrawn with their marks
  loadDlq();
}

export function wireDlq() {
  document.getElementById("dlq-replay-all").addEventListener("click", replayAll);
}
