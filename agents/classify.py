"""The classify agent: batches of upload events in, results out on ``image-results``.

``concurrency=1`` (faust-streaming issue 606); parallelism comes from partitions and worker
processes. Nothing escapes the loop body: an escaping exception would ack and drop the batch.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app import cache, metrics
from app import results as res
from app import trace as tr
from app.faust_app import WORKER_ID, app, settings
from app.logs import get_logger
from app.messages import DeadLetterHeaders
from app.pipeline import Classified, Position, classify_batch, store_batch
from app.runtime import get_classifier
from app.topics import dlq_topic, results_topic, uploads_topic

log = get_logger(__name__)


async def _to_dlq(raw: bytes | None, error: str,
                  where: tuple[int, int] | None = None) -> None:
    """The message as it came, with why and where from in its headers (the console's
    dead-letter view shows them and can replay it)."""
    metrics.DLQ_MESSAGES.inc()
    partition, offset = (str(where[0]), str(where[1])) if where is not None else (None, None)
    log.warning("message sent to DLQ", error=error, source_partition=partition,
                source_offset=offset)
    headers = DeadLetterHeaders(error=error, source_topic=settings.topic_uploads,
                                failed_at=res.now_iso(), source_partition=partition,
                                source_offset=offset)
    fut = await dlq_topic.send(value=raw or b"", headers=headers.to_headers())
    await fut


async def start_batch(raws: list[bytes | None],
                      positions: list[Position] | None = None) -> Classified | None:
    """Parse (unreadable messages go to the DLQ), then fetch, decode and classify.

    ``positions``: each message's (partition, offset, broker append time or None) on
    image-uploads, for the trace."""
    events: list[res.UploadEvent] = []
    kept: list[Position] = []
    for index, raw in enumerate(raws):
        try:
            events.append(res.UploadEvent.from_bytes(raw))
        except res.BadEvent as exc:
            where = positions[index][:2] if positions else None
            await _to_dlq(raw, str(exc), where)
            continue
        if positions:
            kept.append(positions[index])
    if not events:
        return None
    metrics.BATCH_SIZE.observe(len(events))
    try:
        await cache.mark_processing([e.id for e in events])
    except Exception as exc:  # noqa: BLE001 - status 'processing' is cosmetic
        log.debug("could not mark processing", error=repr(exc))
    batch = await classify_batch(events, await get_classifier(), kept or None, WORKER_ID)
    metrics.INFERENCE_SECONDS.observe(time.perf_counter() - batch.started)
    return batch


async def finish_batch(batch: Classified) -> None:
    """Store the outputs, then send the results and wait until Kafka has them."""
    await store_batch(batch)
    results = batch.results
    sent = tr.now_ms()
    futures = [await results_topic.send(key=r["id"].encode(), value=data,
                                        headers=tr.headers_for({"stored": item.stored_at,
                                                                "sent": sent}))
               for r, data, item in zip(results, batch.encoded, batch.prepared, strict=True)]
    await asyncio.gather(*futures)
    for r in results:
        if r["status"] == "failed":
            log.warning("image failed", image_id=r["id"], request_id=r.get("request_id", ""),
                        reason=r["error"]["code"], detail=r["error"]["message"])
    log.info("batch classified", size=len(results), image_ids=[r["id"] for r in results],
             failed=sum(r["status"] == "failed" for r in results),
             ms=round((time.perf_counter() - batch.started) * 1000, 1))


GIVE_UP_AFTER_S = 300.0
T = TypeVar("T")


async def retrying(step: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Retry a step that failed (every write is keyed by id, so repeats are harmless).

    If it keeps failing, exit the process without acking: supervisord restarts the worker and
    Kafka redelivers the batch. Letting the exception escape would ack it and lose the images.
    """
    delay, started = 0.5, time.monotonic()
    while True:
        try:
            return await step(*args)
        except Exception:  # noqa: BLE001
            if time.monotonic() - started > GIVE_UP_AFTER_S:
                log.critical("batch keeps failing; exiting so it is redelivered")
                os._exit(70)
            log.exception("batch failed; retrying", retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _finish_and_ack(stream: Any, events: list[Any], batch: Classified | None) -> None:
    if batch is not None:
        await retrying(finish_batch, batch)
    for event in events:
        await stream.ack(event)


LOG_APPEND_TIME = 1  # Kafka's timestamp type when the broker stamps the append time


def _position(message: Any) -> tuple[int, int, float | None]:
    """Where the event was read (for the trace), and when the broker appended it when the
    topic stamps append times (app.stack.provision.topic_configs)."""
    appended = (message.timestamp * 1000 if message.timestamp_type == LOG_APPEND_TIME
                and message.timestamp else None)
    return message.partition, message.offset, appended


@app.agent(uploads_topic, concurrency=1)
async def classify(stream):  # noqa: ANN001 - faust.StreamT
    """Two batches in flight: while one batch is stored and sent, the next is classified.

    The CPU would otherwise idle while a batch waits on MinIO and Kafka. ``take_events`` acks
    a batch when the loop body returns, before its results are stored; each message therefore
    holds one more reference, released only after its results are stored and sent. Tails run
    one at a time and in order, so offsets are committed in order and never past an image
    whose result is not yet in Kafka.
    """
    tail: asyncio.Task | None = None
    try:
        async for events in stream.take_events(settings.batch_size,
                                               within=settings.batch_window_s):
            held = list(events)
            for event in held:
                event.message.incref()
            batch = await retrying(start_batch, [event.value for event in held],
                                   [_position(event.message) for event in held])
            if tail is not None:
                await tail
            tail = asyncio.create_task(_finish_and_ack(stream, held, batch))
        if tail is not None:
            await tail
    finally:
        if tail is not None and not tail.done():
            tail.cancel()  # not acked: Kafka redelivers the batch


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
        # One line a minute: when passes stop or grow slow (a lost mark makes the next one
        # look back a day), this is where an operator sees it.
        log.info("reconciler pass", re_enqueued=count, looked_back_s=round(until - since),
                 took_s=round(time.time() - now, 2))
    except Exception as exc:  # noqa: BLE001 - next tick tries again
        log.warning("reconciler pass failed", error=repr(exc)[:200])


_REPORTED: set[tuple[str, str]] = set()  # (topic, partition) this worker last reported


@app.timer(10.0)
async def report_consumer_lag() -> None:
    """Lag = end offset - committed offset, per assigned partition of our two topics.

    Partitions this worker no longer owns lose their series, or two workers would report one
    partition (one of them frozen) after a rebalance.
    """
    consumer = app.consumer
    ours = [tp for tp in consumer.assignment()
            if tp.topic in (settings.topic_uploads, settings.topic_results)]
    ends = {}
    if ours:
        try:
            ends = await consumer.highwaters(*ours)
        except Exception as exc:  # noqa: BLE001 - a metric must never hurt the worker
            log.debug("lag check failed", error=repr(exc)[:200])
            return
    committed = consumer._committed_offset  # noqa: SLF001 - faust exposes no public getter
    reported = set()
    for tp in ours:
        done = committed.get(tp)
        end = ends.get(tp)
        if end is not None:
            labels = (tp.topic, str(tp.partition))
            next_offset = done + 1 if done is not None else 0
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, end - next_offset))
            metrics.CONSUMER_COMMITTED.labels(*labels).set(next_offset)
            reported.add(labels)
    for labels in _REPORTED - reported:
        for gauge in (metrics.CONSUMER_LAG, metrics.CONSUMER_COMMITTED):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass
    _REPORTED.clear()
    _REPORTED.update(reported)
