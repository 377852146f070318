"""The classify agent: batches of upload events in, results out on ``image-results``.

``concurrency=1`` (faust-streaming issue 606); parallelism comes from partitions and worker
processes. Nothing escapes the loop body: an escaping exception would ack and drop the batch.
"""

from __future__ import annotations

import asyncio
import os
import time

from app import cache, metrics
from app import results as res
from app.faust_app import app, settings
from app.logs import get_logger
from app.pipeline import process_batch
from app.runtime import get_classifier
from app.topics import dlq_topic, results_topic, uploads_topic

log = get_logger(__name__)


async def _to_dlq(raw: bytes | None, error: str) -> None:
    metrics.DLQ_MESSAGES.inc()
    log.warning("message sent to DLQ", error=error)
    fut = await dlq_topic.send(value=raw or b"", headers={
        "error": error.encode()[:1000],
        "source-topic": settings.topic_uploads.encode(),
        "failed-at": res.now_iso().encode(),
    })
    await fut


async def handle_batch(raws: list[bytes | None]) -> None:
    events: list[res.UploadEvent] = []
    for raw in raws:
        try:
            events.append(res.UploadEvent.from_bytes(raw))
        except res.BadEvent as exc:
            await _to_dlq(raw, str(exc))
    if not events:
        return
    metrics.BATCH_SIZE.observe(len(events))
    try:
        await cache.mark_processing([e.id for e in events])
    except Exception as exc:  # noqa: BLE001 - status 'processing' is cosmetic
        log.debug("could not mark processing", error=repr(exc))
    classifier = await get_classifier()
    t0 = time.perf_counter()
    results = await process_batch(events, classifier)
    metrics.INFERENCE_SECONDS.observe(time.perf_counter() - t0)
    futures = [await results_topic.send(key=r["id"].encode(), value=res.encode(r))
               for r in results]
    await asyncio.gather(*futures)
    for r in results:
        if r["status"] == "failed":
            log.warning("image failed", image_id=r["id"], request_id=r.get("request_id", ""),
                        reason=r["error"]["code"], detail=r["error"]["message"])
    log.info("batch classified", size=len(events), image_ids=[r["id"] for r in results],
             failed=sum(r["status"] == "failed" for r in results),
             ms=round((time.perf_counter() - t0) * 1000, 1))


GIVE_UP_AFTER_S = 300.0


async def handle_with_retry(raws: list[bytes | None]) -> None:
    """Retry a batch whose sends failed (every write is keyed by id, so repeats are harmless).

    If it keeps failing, exit the process without acking: supervisord restarts the worker and
    Kafka redelivers the batch. Letting the exception escape would ack it and lose the images.
    """
    delay, started = 0.5, time.monotonic()
    while True:
        try:
            await handle_batch(raws)
            return
        except Exception:  # noqa: BLE001
            if time.monotonic() - started > GIVE_UP_AFTER_S:
                log.critical("batch keeps failing; exiting so it is redelivered")
                os._exit(70)
            log.exception("batch failed; retrying", retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


@app.agent(uploads_topic, concurrency=1)
async def classify(stream):  # noqa: ANN001 - faust.StreamT
    async for batch in stream.take(settings.batch_size, within=settings.batch_window_s):
        await handle_with_retry(list(batch))


async def _reconciled_until() -> float | None:
    try:
        return await cache.reconciled_until()
    except Exception as exc:  # noqa: BLE001 - unknown: this pass looks back a day
        log.warning("reconciler mark unreadable", error=repr(exc)[:200])
        return None


@app.timer(settings.reconcile_interval_s, on_leader=True)
async def reconcile() -> None:
    """Nothing stored is left unclassified: see app.reconcile."""
    from app.reconcile import pass_start, reconcile_once
    from app.storage import get_store

    try:
        now = time.time()
        until = now - settings.reconcile_grace_s
        since = pass_start(settings, await _reconciled_until(), now)
        count = await reconcile_once(get_store(), settings, since, until)
        await cache.set_reconciled_until(until)  # a failed pass leaves the mark: retried
        if count:
            log.info("reconciler re-enqueued images", count=count)
    except Exception as exc:  # noqa: BLE001 - next tick tries again
        log.warning("reconciler pass failed", error=repr(exc)[:200])


@app.timer(10.0)
async def report_consumer_lag() -> None:
    """Lag = end offset - committed offset, per assigned partition of our two topics."""
    consumer = app.consumer
    ours = [tp for tp in consumer.assignment()
            if tp.topic in (settings.topic_uploads, settings.topic_results)]
    if not ours:
        return
    try:
        ends = await consumer.highwaters(*ours)
    except Exception as exc:  # noqa: BLE001 - a metric must never hurt the worker
        log.debug("lag check failed", error=repr(exc)[:200])
        return
    committed = consumer._committed_offset  # noqa: SLF001 - faust exposes no public getter
    for tp in ours:
        done = committed.get(tp)
        end = ends.get(tp)
        if end is not None:
            metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, end - (done + 1 if done is not None else 0)))
