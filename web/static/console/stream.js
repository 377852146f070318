// Topics, partitions, leaders, offsets and every consumer group's position; the last
// messages of one of imagerec's topics.
import { BASE, el, failed, getJson, sectionState } from "./api.js";

export function messageItem(m) {
  const headers = Object.entries(m.headers || {});
  return el("li", { class: "message", dataset: { partition: m.partition, offset: m.offset } },
    el("div", { class: "message-head" },
      el("strong", {}, `p${m.partition} @${m.offset}`), " ",
      el("span", { class: "hint" }, new Date(m.timestamp).toLocaleString()), " ",
      m.key ? el("code", {}, m.key) : null,
      el("span", { class: "hint" }, ` ${m.size} B`)),
    headers.length ? el("dl", { class: "headers" },
      headers.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])) : null,
    el("pre", { class: "value" }, m.value));
}

export async function loadStream() {
  const resp = await getJson(`${BASE}/stream`);
  if (!resp.ok) { failed("stream", resp); return; }
  const { topics, brokers, groups } = resp.body;
  const rows = [];
  for (const t of topics) {
    t.partitions.forEach((p, i) => {
      const committed = Object.entries(p.groups).map(([g, o]) => `${g}: ${o.committed}, lag ${o.lag}`)
        .join("; ");
      rows.push(el("tr", { class: t.internal ? "internal" : null, dataset: { topic: t.topic } },
        el("td", {}, i === 0 ? t.topic : ""), el("td", {}, p.partition), el("td", {}, p.leader),
        el("td", {}, (p.isr || []).join(",")), el("td", {}, p.start), el("td", {}, p.end),
        el("td", {}, committed || "—")));
    });
  }
  document.getElementById("stream-body").replaceChildren(...rows);
  const pick = document.getElementById("topic-pick");
  const ours = topics.filter((t) => !t.internal).map((t) => t.topic);
  if (pick.options.length !== ours.length) {
    pick.replaceChildren(...ours.map((name) => el("option", { value: name }, name)));
  }
  sectionState("stream", "loaded", `${brokers.length} broker(s), groups: ${groups.join(", ")}`);
}

async function loadMessages() {
  const topic = document.getElementById("topic-pick").value;
  if (!topic) return;
  const resp = await getJson(`${BASE}/topics/${encodeURIComponent(topic)}/messages?limit=20`);
  const list = document.getElementById("topic-messages");
  if (!resp.ok) { failed("stream", resp); return; }
  list.replaceChildren(...resp.body.messages.map(messageItem));
  if (!resp.body.messages.length) list.append(el("li", { class: "hint" }, "no messages"));
}

export function wireStream() {
  document.getElementById("topic-load").addEventListener("click", loadMessages);
  document.getElementById("show-internal").addEventListener("change", (ev) => {
    document.getElementById("stream").classList.toggle("show-internal", ev.target.checked);
  });
}
