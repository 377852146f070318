"""Classifying a batch of upload events: fetch, decode, infer, store. No Faust in here.

The classify agent calls ``process_batch``; keeping it free of Faust makes it testable and
keeps the agent a thin loop. Per-image problems become ``failed`` results with a reason code;
only an unreachable object store is retried (events wait until it is back), because failing
those images would turn an outage into lost work.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image

from app import imaging, names
from app import results as res
from app import trace as tr
from app.locality import recent_uploads
from app.logs import get_logger
from app.settings import get_settings
from app.storage import ObjectMissing, get_store

log = get_logger(__name__)

# One decoder thread per worker: the stack runs a worker per core, each with one inference
# thread, so decoding in one worker overlaps inference in the other. A second decoder thread
# per worker measured the same throughput (bench/pipeline.py) with more context switches.
_decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
S3_RETRY_MAX_S = 10.0


@dataclass
class Prepared:
    """One image ready for inference, or the reason it failed."""

    event: res.UploadEvent
    started: float
    data: bytes | None = None
    fetch_ms: float = 0.0
    decode_ms: float = 0.0
    array: np.ndarray | None = None
    model_input_jpeg: bytes | None = None
    error: tuple[str, str] | None = None
    stored_at: float = 0.0  # app.trace "stored": its model input and result are in MinIO
    # Set when the labels were copied from an earlier identical image (``reuse_of``).
    borrowed: tuple[dict[str, str], list[dict[str, Any]]] | None = None


def _age_ms(created_at: str) -> float:
    try:
        created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(created.tzinfo) - created).total_seconds() * 1000)


async def _with_s3_retry(call: Callable[[], Awaitable[Any]]) -> Any:
    """Retry while the store is unreachable; a missing object is an answer, not an outage."""
    delay = 0.2
    while True:
        try:
            return await call()
        except ObjectMissing:
            raise
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, 5xx
            log.warning("object store unavailable; waiting", error=repr(exc)[:200],
                        retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(S3_RETRY_MAX_S, delay * 2)


def _decode(data: bytes, spec: imaging.PreprocessSpec) -> tuple[np.ndarray, bytes]:
    small, array = imaging.prepare(data, spec)
    buf = io.BytesIO()
    # JPEG q95 without chroma subsampling: 0.3 ms, where PNG took 3.4 ms of a ~20 ms budget.
    small.save(buf, format="JPEG", quality=95, subsampling=0)
    return array, buf.getvalue()


def _decode_all(items: list[Prepared], spec: imaging.PreprocessSpec) -> None:
    """Decode a batch in one thread job (one hand-off per batch, not per image)."""
    for item in items:
        t0 = time.perf_counter()
        try:
            item.array, item.model_input_jpeg = _decode(item.data or b"", spec)
        except imaging.ImageError as exc:
            item.error = (exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must fail one image, not all
            log.exception("unexpected decode error", image_id=item.event.id)
            item.error = ("internal_error", f"decoding failed: {type(exc).__name__}")
        item.data = None
        item.decode_ms = (time.perf_counter() - t0) * 1000


async def fetch(event: res.UploadEvent) -> Prepared:
    """The original's bytes: from this worker's memory (app.locality), else the store."""
    item = Prepared(event=event, started=time.perf_counter())
    item.data = recent_uploads().take(event.id)
    if item.data is None:
        try:
            item.data = await _with_s3_retry(lambda: get_store().get(
                get_settings().bucket_input, names.original_key(event.id)))
        except ObjectMissing:
            item.error = ("missing_original", "the uploaded image is no longer in storage")
    item.fetch_ms = (time.perf_counter() - item.started) * 1000
    return item


async def borrow(event: res.UploadEvent) -> Prepared | None:
    """The earlier identical image's result and model input, for ``event.reuse_of``; None
    (classify it afresh) when either is gone or does not match these bytes."""
    item = Prepared(event=event, started=time.perf_counter())
    settings = get_settings()
    store = get_store()
    try:
        earlier = res.decode(await store.get(settings.bucket_results,
                                             names.result_key(event.reuse_of or "")))
        if earlier.get("status") != "done" or earlier.get("sha256") != event.sha256 \
                or not earlier.get("model"):
            return None
        item.model_input_jpeg = await store.get(settings.bucket_processed,
                                                names.processed_key(event.reuse_of or ""))
    except ObjectMissing:
        return None
    except Exception as exc:  # noqa: BLE001 - store trouble or a bad document: classify it
        log.warning("earlier result not reusable", image_id=event.id, reuse_of=event.reuse_of,
                    error=repr(exc)[:200])
        return None
    item.borrowed = (earlier["model"], list(earlier.get("labels") or []))
    item.fetch_ms = (time.perf_counter() - item.started) * 1000
    return item


async def _fetch_or_borrow(event: res.UploadEvent) -> Prepared:
    if event.reuse_of:
        found = await borrow(event)
        if found is not None:
            return found
    return await fetch(event)


async def prepare(events: list[res.UploadEvent], spec: imaging.PreprocessSpec) -> list[Prepared]:
    items = await asyncio.gather(*(_fetch_or_borrow(e) for e in events))
    todo = [item for item in items if item.error is None and item.borrowed is None]
    if todo:
        await asyncio.get_running_loop().run_in_executor(_decode_pool, _decode_all, todo, spec)
    return items


async def _store_one(item: Prepared, encoded: bytes) -> None:
    """The model input first, then the result: a stored result implies a stored input. A
    retried PUT of the same bytes is harmless."""
    settings = get_settings()
    store = get_store()
    if item.model_input_jpeg is not None:
        jpeg = item.model_input_jpeg
        await _with_s3_retry(lambda: store.put(settings.bucket_processed,
                                               names.processed_key(item.event.id), jpeg,
                                               "image/jpeg"))
    await _with_s3_retry(lambda: store.put(settings.bucket_results,
                                           names.result_key(item.event.id), encoded,
                                           "application/json"))
    item.stored_at = tr.now_ms()


@dataclass
class Classified:
    """A batch's results, in event order, with what must be stored next to them."""

    prepared: list[Prepared]
    results: list[dict[str, Any]]
    encoded: list[bytes]  # each result as stored in MinIO and sent to Kafka, encoded once
    started: float  # time.perf_counter() when the batch began


# (partition, offset, broker append time in epoch ms or None) of an event on image-uploads
Position = tuple[int, int, float | None]


async def classify_batch(events: list[res.UploadEvent], classifier: Any,
                         positions: list[Position] | None = None,
                         worker: int | None = None) -> Classified:
    """Fetch, decode and classify; nothing is stored yet (``store_batch`` does that), so the
    agent can store one batch while it classifies the next.

    Each result's trace (app.trace) gets ``batch_started`` and ``inferred``, and where the
    event was read from (``positions``, by the agent) and by which ``worker``."""
    batch_start = time.perf_counter()
    started_ms = tr.now_ms()
    loaded = classifier.current  # one model for the whole batch, even if the default switches
    prepared = await prepare(events, loaded.spec)
    ok = [p for p in prepared if p.error is None and p.borrowed is None]
    model = loaded.model_dict()
    infer_ms = 0.0
    labels_by_id: dict[str, list[dict[str, Any]]] = {}
    if ok:
        t0 = time.perf_counter()
        try:
            preds = await classifier.classify_arrays([p.array for p in ok], model=loaded)
            ranked = preds.labels(res.STORED_LABELS)
            labels_by_id = {p.event.id: labels for p, labels in zip(ok, ranked, strict=True)}
        except Exception as exc:  # noqa: BLE001 - the model failing fails these images, loudly
            log.exception("inference failed", batch=len(ok),
                          image_ids=[p.event.id for p in ok])
            for p in ok:
                p.error = ("inference_failed", f"the model failed: {type(exc).__name__}")
        infer_ms = (time.perf_counter() - t0) * 1000
    per_image_infer = infer_ms / max(1, len(ok))
    inferred_ms = tr.now_ms()

    out: list[dict[str, Any]] = []
    for index, item in enumerate(prepared):
        timings = res.Timings(
            queue_ms=_age_ms(item.event.created_at) - (time.perf_counter() - batch_start) * 1000,
            fetch_ms=item.fetch_ms, decode_ms=item.decode_ms,
            inference_ms=per_image_infer if item.error is None else 0.0,
        )
        timings.total_ms = _age_ms(item.event.created_at)
        timings.extra["batch_size"] = float(len(events))
        if item.borrowed is not None:
            timings.inference_ms = 0.0
            result = res.done(item.event, item.borrowed[0], item.borrowed[1], timings)
        elif item.error is None:
            result = res.done(item.event, model, labels_by_id[item.event.id], timings)
        else:
            result = res.failed(item.event, item.error[0], item.error[1], timings, model)
        _trace_batch(result, started_ms, inferred_ms, len(events), worker,
                     positions[index] if positions and index < len(positions) else None)
        out.append(result)
    return Classified(prepared=prepared, results=out, encoded=[res.encode(r) for r in out],
                      started=batch_start)


def _trace_batch(result: dict[str, Any], started_ms: float, inferred_ms: float, size: int,
                 worker: int | None, position: Position | None) -> None:
    trace = result.setdefault("trace", {})
    trace.setdefault("stamps", {}).update(batch_started=started_ms, inferred=inferred_ms)
    trace["batch_size"] = size
    if worker is not None:
        trace["worker"] = worker
    if position is not None:
        trace["partition"], trace["offset"], appended = position
        if appended:  # the broker's time beats the producer's "handed to Kafka"
            trace["stamps"]["enqueued"] = appended


async def store_batch(batch: Classified) -> None:
    """Every model input and result of the batch in the object store (retried while it is
    down)."""
    await asyncio.gather(*(_store_one(item, data)
                           for item, data in zip(batch.prepared, batch.encoded, strict=True)))


async def classify_now(data: bytes, classifier: Any, top_k: int = 5,
                       min_score: float = 0.0) -> dict[str, Any]:
    """The synchronous path (``POST /v1/classify``, image-classifier function): no queue."""
    imaging.inspect(data)
    loaded = classifier.current
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    array, _ = await loop.run_in_executor(_decode_pool, _decode, data, loaded.spec)
    t1 = time.perf_counter()
    preds = await classifier.classify_arrays([array], model=loaded)
    t2 = time.perf_counter()
    labels = preds.labels(top_k, min_score)[0]
    return {
        "status": "done",
        "model": loaded.model_dict(),
        "labels": labels,
        "timings": {"decode_ms": round((t1 - t0) * 1000, 2),
                    "inference_ms": round((t2 - t1) * 1000, 2)},
    }


def image_size(data: bytes) -> tuple[int, int]:
    """Used by tests to check a stored model input really is the model's input size."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


__all__ = ["Classified", "classify_batch", "classify_now", "image_size", "store_batch"]
