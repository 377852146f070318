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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image

from app import imaging, names
from app import results as res
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
    fetch_ms: float = 0.0
    decode_ms: float = 0.0
    array: np.ndarray | None = None
    model_input_jpeg: bytes | None = None
    error: tuple[str, str] | None = None


def _age_ms(created_at: str) -> float:
    try:
        created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(created.tzinfo) - created).total_seconds() * 1000)


async def _with_s3_retry(call: Any, *args: Any) -> Any:
    """Retry while the store is unreachable; a missing object is an answer, not an outage."""
    delay = 0.2
    while True:
        try:
            return await asyncio.to_thread(call, *args)
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


async def prepare(event: res.UploadEvent, spec: imaging.PreprocessSpec) -> Prepared:
    item = Prepared(event=event, started=time.perf_counter())
    settings = get_settings()
    t0 = time.perf_counter()
    data = recent_uploads().take(event.id)
    if data is None:
        try:
            data = await _with_s3_retry(get_store().get_bytes, settings.bucket_input,
                                        names.original_key(event.id))
        except ObjectMissing:
            item.error = ("missing_original", "the uploaded image is no longer in storage")
            return item
    item.fetch_ms = (time.perf_counter() - t0) * 1000
    t1 = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        item.array, item.model_input_jpeg = await loop.run_in_executor(_decode_pool, _decode,
                                                                      data, spec)
    except imaging.ImageError as exc:
        item.error = (exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must fail one image, not the batch
        log.exception("unexpected decode error", image_id=event.id)
        item.error = ("internal_error", f"decoding failed: {type(exc).__name__}")
    item.decode_ms = (time.perf_counter() - t1) * 1000
    return item


async def _store_outputs(item: Prepared, result: dict[str, Any]) -> None:
    settings = get_settings()
    store = get_store()
    writes = [_with_s3_retry(store.put_bytes, settings.bucket_results,
                             names.result_key(item.event.id), res.encode(result),
                             "application/json")]
    if item.model_input_jpeg is not None:
        writes.append(_with_s3_retry(store.put_bytes, settings.bucket_processed,
                                     names.processed_key(item.event.id), item.model_input_jpeg,
                                     "image/jpeg"))
    await asyncio.gather(*writes)


async def process_batch(events: list[res.UploadEvent], classifier: Any) -> list[dict[str, Any]]:
    """Results for ``events``, in order, all stored in the object store."""
    batch_start = time.perf_counter()
    loaded = classifier.current  # one model for the whole batch, even if the default switches
    prepared = await asyncio.gather(*(prepare(e, loaded.spec) for e in events))
    ok = [p for p in prepared if p.error is None]
    model = {"name": loaded.info.name, "version": loaded.info.version}
    infer_ms = 0.0
    labels_by_id: dict[str, list[dict[str, Any]]] = {}
    if ok:
        t0 = time.perf_counter()
        try:
            preds = await classifier.classify_arrays([p.array for p in ok], model=loaded)
            ranked = preds.labels(res.STORED_LABELS)
            labels_by_id = {p.event.id: labels for p, labels in zip(ok, ranked, strict=True)}
        except Exception as exc:  # noqa: BLE001 - the model failing fails these images, loudly
            log.exception("inference failed", batch=len(ok))
            for p in ok:
                p.error = ("inference_failed", f"the model failed: {type(exc).__name__}")
        infer_ms = (time.perf_counter() - t0) * 1000
    per_image_infer = infer_ms / max(1, len(ok))

    out: list[dict[str, Any]] = []
    for item in prepared:
        timings = res.Timings(
            queue_ms=_age_ms(item.event.created_at) - (time.perf_counter() - batch_start) * 1000,
            fetch_ms=item.fetch_ms, decode_ms=item.decode_ms,
            inference_ms=per_image_infer if item.error is None else 0.0,
        )
        timings.total_ms = _age_ms(item.event.created_at)
        timings.extra["batch_size"] = float(len(events))
        if item.error is None:
            result = res.done(item.event, model, labels_by_id[item.event.id], timings)
        else:
            result = res.failed(item.event, item.error[0], item.error[1], timings, model)
        out.append(result)
    await asyncio.gather(*(_store_outputs(item, r) for item, r in zip(prepared, out,
                                                                      strict=True)))
    return out


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
        "model": {"name": loaded.info.name, "version": loaded.info.version},
        "labels": labels,
        "timings": {"decode_ms": round((t1 - t0) * 1000, 2),
                    "inference_ms": round((t2 - t1) * 1000, 2)},
    }


def image_size(data: bytes) -> tuple[int, int]:
    """Used by tests to check a stored model input really is the model's input size."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


__all__ = ["classify_now", "image_size", "process_batch"]
