"""The results agent: one event at a time into the table, Redis and the webhook queue.

Separate from the classify agent because table writes inside ``take()`` raise (faust-streaming
issue 497), and because Redis and webhooks must not slow down inference.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from app import cache, metrics
from app import results as res
from app import trace as tr
from app.faust_app import app
from app.logs import get_logger
from app.messages import known_version
from app.settings import get_settings
from app.topics import callbacks_topic, results_topic
from tables.results import results_table

log = get_logger(__name__)


def _observe(result: dict) -> None:
    if result["status"] == "done":
        metrics.IMAGES_CLASSIFIED.labels(model=result["model"]["name"]).inc()
    else:
        metrics.IMAGES_FAILED.labels(reason=(result.get("error") or {}).get("code", "?")).inc()
    try:
        created = datetime.fromisoformat(result["created_at"].replace("Z", "+00:00"))
        done = datetime.fromisoformat(result["completed_at"].replace("Z", "+00:00"))
        metrics.END_TO_END_SECONDS.observe(max(0.0, (done - created).total_seconds()))
    except (KeyError, TypeError, ValueError):
        pass


class _CacheWrites:
    """How long a result's Redis write is retried: through a Sentinel failover (a few
    seconds) when Redis was fine so far, once while it is known to be down, so that an
    outage longer than a failover costs one attempt per result, not a stall per result."""

    def __init__(self) -> None:
        self.down = False

    def window_s(self) -> float:
        if self.down:
            return 0.0
        return 10.0 if get_settings().sentinels else 0.6


_cache_writes = _CacheWrites()


async def _cache(result: dict, raw: bytes) -> None:
    """Redis is a cache: if it is down, retrieval falls back to the table; retry briefly."""
    deadline = time.monotonic() + _cache_writes.window_s()
    delay = 0.2
    while True:
        try:
            await cache.put_result(result, raw)
            _cache_writes.down = False
            return
        except Exception as exc:  # noqa: BLE001
            if time.monotonic() + delay > deadline:
                _cache_writes.down = True
                log.warning("result not cached in redis", image_id=result["id"],
                            error=repr(exc))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def _queue_callback(image_id: str, raw: bytes) -> None:
    """Hand the webhook to the durable queue (``agents.callbacks``); wait for Kafka's ack, so
    that once this result message is acked, its webhook cannot be lost. Retried while Kafka
    is briefly away; if it stays away the exception escapes and the worker restarts."""
    delay = 0.2
    for attempt in range(8):
        try:
            fut = await callbacks_topic.send(key=image_id.encode(), value=raw)
            await fut
            return
        except Exception as exc:  # noqa: BLE001
            if attempt == 7:
                raise
            log.warning("callback not queued yet; retrying", image_id=image_id,
                        error=repr(exc)[:200])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _with_trace(result: dict, headers: object) -> bytes | None:
    """The result with the rest of its journey (app.trace): ``stored`` and ``sent`` from the
    message headers, ``cached`` now. The table and Redis get these bytes; one more encode
    per result (about 20 us) is the price of a trace that ends where clients read it."""
    trace = result.get("trace")
    if not isinstance(trace, dict):
        return None  # a result from before traces: stored as it came
    stamps = trace.setdefault("stamps", {})
    if not isinstance(stamps, dict):
        return None
    stamps.update(tr.stamps_from_headers(headers))  # type: ignore[arg-type]
    stamps["cached"] = tr.now_ms()
    return res.encode(result)


@app.agent(results_topic, concurrency=1)
async def store_results(stream):  # noqa: ANN001 - faust.StreamT
    async for event in stream.events():
        raw = event.value
        try:
            result = res.decode(raw)
            image_id = result["id"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.error("unreadable result message skipped", error=repr(exc))
            continue
        if not known_version(result):  # app.messages: never guess at a newer schema
            log.error("result of an unsupported message version skipped", image_id=image_id,
                      v=result.get("v"))
            continue
        # The bytes as they came, unless the trace gained the stamps of this hop.
        raw = _with_trace(result, event.message.headers) or raw
        results_table[image_id] = raw
        await _cache(result, raw)
        _observe(result)
        # A re-classified result (app.reclassify) does not call the webhook a second time.
        if result.get("callback_url") and not result.get("reclassify_job"):
            await _queue_callback(image_id, raw)
