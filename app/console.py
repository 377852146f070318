"""What the operator console (``/console``) shows and does, without any HTTP in it.

The views in ``web.console`` are thin; everything here talks to the real servers:

- Prometheus: only the fixed queries in ``CHARTS`` and the alerts list, never a query a
  client wrote (the console's endpoint is not a proxy for Prometheus' API);
- Kafka: topics with partitions, leaders and ISR, end offsets, every consumer group's
  committed offsets and lag, the last messages of one of our topics, the dead letters with
  their headers, and a replay of one dead letter to ``image-uploads``;
- the object store: objects and bytes per bucket (listed, capped, cached briefly);
- the workers: each one's ``/internal/info`` (partitions, engine, model, RSS, uptime).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app import names
from app import results as res
from app.settings import Settings

KAFKA_TIMEOUT_S = 5.0
PROMETHEUS_TIMEOUT_S = 5.0
MAX_MESSAGES = 200
VALUE_PREVIEW = 4000  # characters of a message value the console shows
STORAGE_CAP = 200_000  # objects listed per bucket before the count says "at least"
STORAGE_CACHE_S = 30.0


class ConsoleError(Exception):
    """A request the console refuses (400) or a dependency it cannot reach (503)."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status, self.code = status, code


# --------------------------------------------------------------------------------------------
# Prometheus


@dataclass(frozen=True)
class Chart:
    """One chart: PromQL per series (the label of each result series names the line)."""

    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]  # (series name or "{label}" template, PromQL)


# The recording rules of deploy/prometheus/rules/imagerec.yml where there is one (the same
# figures the alerts use), raw series where there is not.
CHARTS: dict[str, Chart] = {
    "throughput": Chart("Uploads and results per second", "/s", (
        ("uploads", "imagerec:uploads:rate1m"),
        ("results", "imagerec:results:rate1m"),
    )),
    "latency": Chart("Upload to result (end to end), 5 min window", "s", (
        ("p{quantile}", "imagerec:end_to_end_seconds:quantile_rate5m"),
    )),
    "batch": Chart("Images per batch (mean)", "images", (
        ("batch size", "imagerec:batch_size:mean_rate5m"),
    )),
    "inference": Chart("Batch time: fetch, decode, inference (mean)", "s", (
        ("mean", "imagerec:inference_seconds:mean_rate5m"),
    )),
    "lag": Chart("Consumer lag per partition", "messages", (
        ("{topic}/{partition}", "max by (topic, partition) (imagerec_consumer_lag)"),
    )),
    "failures": Chart("Failures per second by reason", "/s", (
        ("{reason}", "imagerec:results_failed:rate1m"),
        ("dead letters", "sum(rate(imagerec_dlq_messages_total[5m]))"),
    )),
}


def _series_name(template: str, labels: dict[str, str]) -> str:
    if "quantile" in labels:  # "0.95" reads better as p95
        try:
            labels = {**labels, "quantile": f"{float(labels['quantile']) * 100:g}"}
        except ValueError:
            pass
    try:
        return template.format(**labels)
    except (KeyError, IndexError, ValueError):
        return template


def prometheus_url(settings: Settings) -> str:
    """``IMAGEREC_PROMETHEUS_URL``, else the local stack's Prometheus on loopback next to the
    workers (app.stack.monitoring)."""
    return (settings.prometheus_url or f"http://127.0.0.1:{settings.prometheus_port}").rstrip("/")


async def _prometheus(settings: Settings, path: str, params: dict[str, str] | None = None
                      ) -> Any:
    base = prometheus_url(settings)
    url = base + path
    try:
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PROMETHEUS_TIMEOUT_S)) as session, \
                session.get(url, params=params) as resp:
            body = await resp.json(content_type=None)
    except Exception as exc:  # noqa: BLE001 - down or not installed: the console says so
        raise ConsoleError(f"Prometheus at {base} is not answering: "
                           f"{type(exc).__name__}", 503, "dependency_unavailable") from exc
    if not isinstance(body, dict) or body.get("status") != "success":
        raise ConsoleError(f"Prometheus refused the query: {str(body)[:200]}", 503,
                           "dependency_unavailable")
    return body["data"]


async def chart(settings: Settings, name: str, range_s: int, step_s: int) -> dict[str, Any]:
    """One of ``CHARTS`` over the last ``range_s`` seconds: ``{title, unit, series: [{name,
    points: [[t, v], ...]}]}`` (NaN points, e.g. a quantile of nothing, are left out)."""
    spec = CHARTS.get(name)
    if spec is None:
        raise ConsoleError(f"unknown chart {name!r}: one of {', '.join(CHARTS)}",
                           404, "not_found")
    end = time.time()
    series: list[dict[str, Any]] = []
    for template, query in spec.queries:
        data = await _prometheus(settings, "/api/v1/query_range", {
            "query": query, "start": f"{end - range_s:.3f}", "end": f"{end:.3f}",
            "step": str(step_s)})
        for item in data.get("result", []):
            points = [[float(t), float(v)] for t, v in item.get("values", [])
                      if v not in ("NaN", "+Inf", "-Inf")]
            series.append({"name": _series_name(template, item.get("metric", {})),
                           "points": points})
    return {"name": name, "title": spec.title, "unit": spec.unit, "series": series}


async def alerts(settings: Settings) -> dict[str, Any]:
    """Prometheus' alerts (firing first, then pending), as its API lists them."""
    data = await _prometheus(settings, "/api/v1/alerts")
    found = [{"name": a.get("labels", {}).get("alertname", "?"), "state": a.get("state"),
              "severity": a.get("labels", {}).get("severity", ""),
              "summary": (a.get("annotations") or {}).get("summary")
              or (a.get("annotations") or {}).get("description", ""),
              "since": a.get("activeAt"), "labels": a.get("labels", {})}
             for a in data.get("alerts", [])]
    found.sort(key=lambda a: (a["state"] != "firing", a["name"]))
    return {"alerts": found}


# --------------------------------------------------------------------------------------------
# Kafka


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer outside any group: it only reads, it commits nothing."""
    return AIOKafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False,
                            request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
                            client_id="imagerec-console")


async def _kafka(coro: Any) -> Any:
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S * 2):
            return await coro
    except ConsoleError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ConsoleError(f"Kafka is not answering: {type(exc).__name__}: {exc}"[:300], 503,
                           "dependency_unavailable") from exc


async def stream_overview(settings: Settings) -> dict[str, Any]:
    """Every topic (ours and Faust's), its partitions with leader, replicas, ISR and end
    offset, and for each consumer group its committed offset and lag per partition."""
    return await _kafka(_stream_overview(settings))


async def _stream_overview(settings: Settings) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers,
                                request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
                                client_id="imagerec-console")
    consumer = _consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        described = await admin.describe_topics()
        cluster = await admin.describe_cluster()
        groups = sorted(g[0] for g in await admin.list_consumer_groups())
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items()
                                if meta.offset >= 0}
        tps = [TopicPartition(t["topic"], p["partition"]) for t in described
               for p in t.get("partitions", [])]
        ends = await consumer.end_offsets(tps) if tps else {}
        starts = await consumer.beginning_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
        await admin.close()
    topics = []
    for t in sorted(described, key=lambda t: (t["topic"] not in settings.topics, t["topic"])):
        parts = []
        for p in sorted(t.get("partitions", []), key=lambda p: p["partition"]):
            tp = TopicPartition(t["topic"], p["partition"])
            groups_here = {g: {"committed": offs[tp], "lag": max(0, ends.get(tp, 0) - offs[tp])}
                           for g, offs in committed.items() if tp in offs}
            parts.append({"partition": p["partition"], "leader": p.get("leader"),
                          "replicas": p.get("replicas", []), "isr": p.get("isr", []),
                          "start": starts.get(tp, 0), "end": ends.get(tp, 0),
                          "groups": groups_here})
        topics.append({"topic": t["topic"], "internal": t["topic"] not in settings.topics,
                       "messages": sum(p["end"] - p["start"] for p in parts),
                       "partitions": parts})
    brokers = [{"id": b.get("node_id"), "host": b.get("host"), "port": b.get("port")}
               for b in cluster.get("brokers", [])]
    return {"brokers": brokers, "controller": cluster.get("controller_id"),
            "groups": groups, "topics": topics}


def _text(raw: bytes | None) -> str:
    if raw is None:
        return ""
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= VALUE_PREVIEW else text[:VALUE_PREVIEW] + "…"


def _record(rec: Any) -> dict[str, Any]:
    return {"partition": rec.partition, "offset": rec.offset,
            "timestamp": rec.timestamp, "key": _text(rec.key), "value": _text(rec.value),
            "size": len(rec.value or b""),
            "headers": {k: _text(v) for k, v in (rec.headers or ())}}


async def last_messages(settings: Settings, topic: str, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` messages of one of our topics (each partition's tail, merged by
    time, newest first)."""
    if topic not in settings.topics:
        raise ConsoleError(f"not one of imagerec's topics: {', '.join(settings.topics)}", 404,
                           "not_found")
    return await _kafka(_tail(settings, topic, max(1, min(limit, MAX_MESSAGES))))


async def _tail(settings: Settings, topic: str, limit: int) -> list[dict[str, Any]]:
    consumer = _consumer(settings)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - no public way
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        wanted = {tp: max(starts[tp], ends[tp] - limit) for tp in tps}
        todo = {tp for tp in tps if ends[tp] > wanted[tp]}
        if not todo:
            return []
        consumer.assign(sorted(todo))
        for tp in todo:
            consumer.seek(tp, wanted[tp])
        records: list[Any] = []
        while todo:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            if not batch:
                break
            for tp, recs in batch.items():
                records.extend(r for r in recs if r.offset < ends[tp])
                if recs and recs[-1].offset >= ends[tp] - 1:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset), reverse=True)
    return [_record(r) for r in records[:limit]]


async def dead_letters(settings: Settings, limit: int, redis: Any) -> list[dict[str, Any]]:
    """The last dead letters, newest first, each with its ``error`` header, the image id it
    names where it can be read, and ``replayed`` (who, when, as which image) once it was."""
    found = await last_messages(settings, settings.topic_dlq, limit)
    for item in found:
        try:
            item["image_id"] = json.loads(item["value"]).get("id")
        except (ValueError, AttributeError):
            item["image_id"] = None
    if found:
        marks = await redis.hmget(names.REDIS_DLQ_REPLAYED,
                                  [f"{m['partition']}/{m['offset']}" for m in found])
        for item, mark in zip(found, marks, strict=True):
            item["replayed"] = json.loads(mark) if mark else None
    return found


async def _read_one(settings: Settings, topic: str, partition: int, offset: int) -> Any:
    consumer = _consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
                                       max_records=1)
        recs = batch.get(tp) or []
        if not recs or recs[0].offset != offset:
            raise ConsoleError(f"no message at {topic} partition {partition} offset {offset}",
                               404, "not_found")
        return recs[0]
    finally:
        await consumer.stop()


async def replay(settings: Settings, partition: int, offset: int, value: str | None,
                 who: str, publish: Any, redis: Any, *, again: bool = False) -> dict[str, Any]:
    """Re-produce one dead letter to ``image-uploads``, as it was or as edited (``value``).

    Refused (400) if the message would fail again: it must parse as an upload event, so a
    replay cannot loop a broken message back to the dead-letter queue. Refused (409) if it
    was replayed before, unless ``again``: the claim in Redis is taken before producing, so
    two operators (or a bulk replay and a click) cannot send it twice. ``publish`` is
    ``app.broker``'s acks=all ``send``. Returns where it went and the image id."""
    field = f"{partition}/{offset}"

    async def refuse_if_replayed() -> None:
        earlier = await redis.hget(names.REDIS_DLQ_REPLAYED, field)
        if earlier and not again:
            mark = json.loads(earlier)
            raise ConsoleError(f"already replayed by {mark.get('by', '?')} at "
                               f"{mark.get('at', '?')} (as {mark.get('image_id', '?')}); "
                               "send again=true to replay it once more",
                               409, "already_replayed")

    await refuse_if_replayed()
    record = await _kafka(_read_one(settings, settings.topic_dlq, partition, offset))
    raw = value.encode() if value is not None else (record.value or b"")
    try:
        event = res.UploadEvent.from_bytes(raw)
    except res.BadEvent as exc:
        raise ConsoleError(f"this message would fail again ({exc}); edit it first",
                           400, "invalid_event") from exc
    mark = json.dumps({"by": who, "at": res.now_iso(), "image_id": event.id,
                       "edited": value is not None})
    if again:
        await redis.hset(names.REDIS_DLQ_REPLAYED, field, mark)
    elif not await redis.hsetnx(names.REDIS_DLQ_REPLAYED, field, mark):
        await refuse_if_replayed()  # someone else claimed it meanwhile
    headers = [("replayed-from", f"{settings.topic_dlq}/{partition}/{offset}".encode()),
               ("replayed-by", who.encode()[:200])]
    try:
        await publish(settings.topic_uploads, event.id.encode(), raw, headers)
    except Exception:
        await redis.hdel(names.REDIS_DLQ_REPLAYED, field)  # not sent: free to try again
        raise
    return {"image_id": event.id, "topic": settings.topic_uploads,
            "edited": value is not None, "from": {"partition": partition, "offset": offset}}


async def replay_all(settings: Settings, who: str, publish: Any, redis: Any,
                     log: Any) -> dict[str, Any]:
    """Every listed dead letter (the last ``MAX_MESSAGES``) that was not replayed yet and
    would not fail again, replayed as it is, oldest first; the others with the reason."""
    letters = await dead_letters(settings, MAX_MESSAGES, redis)
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for item in reversed(letters):
        where = {"partition": item["partition"], "offset": item["offset"]}
        if item.get("replayed"):
            skipped.append({**where, "reason": "already replayed"})
            continue
        try:
            sent = await replay(settings, item["partition"], item["offset"], None, who,
                                publish, redis)
        except ConsoleError as exc:
            skipped.append({**where, "reason": str(exc)})
            continue
        log.warning("dead letter replayed", by=who, dlq_partition=item["partition"],
                    dlq_offset=item["offset"], image_id=sent["image_id"], edited=False,
                    bulk=True)
        done.append(sent)
    return {"replayed": done, "skipped": skipped}


# --------------------------------------------------------------------------------------------
# Object store

_storage_cache: dict[str, Any] = {}


def _bucket_usage(client: Any, bucket: str) -> dict[str, Any]:
    count = size = 0
    for obj in client.list_objects(bucket, recursive=True):
        count += 1
        size += obj.size or 0
        if count >= STORAGE_CAP:
            return {"bucket": bucket, "objects": count, "bytes": size, "capped": True}
    return {"bucket": bucket, "objects": count, "bytes": size, "capped": False}


async def storage(settings: Settings, client: Any) -> dict[str, Any]:
    """Objects and bytes per bucket, listed (at most ``STORAGE_CAP`` each) and kept for
    ``STORAGE_CACHE_S``: a console left open must not list millions of keys a second."""
    cached = _storage_cache.get("value")
    if cached and time.monotonic() - _storage_cache["at"] < STORAGE_CACHE_S:
        return cached
    try:
        buckets = await asyncio.gather(*(asyncio.to_thread(_bucket_usage, client, b)
                                         for b in settings.buckets))
    except Exception as exc:  # noqa: BLE001
        raise ConsoleError(f"the object store is not answering: {type(exc).__name__}", 503,
                           "dependency_unavailable") from exc
    value = {"buckets": list(buckets), "listed_at": res.now_iso()}
    _storage_cache.update(value=value, at=time.monotonic())
    return value


# --------------------------------------------------------------------------------------------
# Workers


def worker_urls(settings: Settings) -> list[str]:
    """Every worker's own web address: the gateway's list when set, else the local ones."""
    listed = [w.strip() for w in settings.gateway_workers.split(",") if w.strip()]
    if listed:
        return [f"http://{w}" for w in listed]
    return [f"http://{settings.web_host}:{settings.web_port + i}" for i in range(settings.workers)]


async def workers(settings: Settings) -> dict[str, Any]:
    """Each worker's ``/internal/info``, or why it did not answer."""
    async def one(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        try:
            async with session.get(url + "/internal/info") as resp:
                return {"url": url, "ok": True, **(await resp.json())}
        except Exception as exc:  # noqa: BLE001 - a worker down is what this view shows
            return {"url": url, "ok": False, "error": f"{type(exc).__name__}"}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        return {"workers": list(await asyncio.gather(*(one(session, u)
                                                       for u in worker_urls(settings))))}
