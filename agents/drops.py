"""The drops agent: MinIO's notifications for the drop prefix in, ordinary uploads out.

Each notification is handled by ``app.drops.handle_record`` (validate like a gateway upload,
store the original under its image id, enqueue on ``image-uploads``, or record a ``failed``
result). A batch's records are handled concurrently: each is mostly waiting on MinIO and
Kafka. Only an unreachable store or broker is retried (the whole batch: every step is keyed
by the derived image id, so repeats are harmless); a message that is not a notification goes
to the DLQ; nothing else escapes the loop body, which would ack and drop the batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents.classify import retrying
from app import drops, metrics
from app import results as res
from app.faust_app import app, settings
from app.logs import get_logger
from app.messages import DeadLetterHeaders
from app.runtime import current_model_ref
from app.topics import dlq_topic, drops_topic

log = get_logger(__name__)


async def _to_dlq(raw: bytes | None, error: str) -> None:
    metrics.DLQ_MESSAGES.inc()
    log.warning("drop notification sent to DLQ", error=error)
    headers = DeadLetterHeaders(error=error, source_topic=settings.topic_drops,
                                failed_at=res.now_iso())
    fut = await dlq_topic.send(value=raw or b"", headers=headers.to_headers())
    await fut


async def _handle(record: drops.DropRecord) -> tuple[str, str] | None:
    try:
        return await drops.handle_record(record, model_ref=current_model_ref)
    except drops.DependencyDown:
        raise  # retried with the batch
    except Exception as exc:  # noqa: BLE001 - a bug must cost one object, not the batch
        log.exception("dropped object not handled", source_key=record.key)
        await _to_dlq(None, f"{record.bucket}/{record.key}: {type(exc).__name__}: {exc}"[:900])
        return None


async def handle_batch(raws: list[bytes | None]) -> list[Any]:
    records: list[drops.DropRecord] = []
    for raw in raws:
        try:
            records += drops.parse_notification(raw)
        except drops.NotADropEvent as exc:
            await _to_dlq(raw, str(exc))
    outcomes = await asyncio.gather(*(_handle(r) for r in records))
    for outcome in outcomes:
        if outcome is not None and outcome[1] == "queued":
            metrics.IMAGES_RECEIVED.labels(via="drop").inc()
    return outcomes


@app.agent(drops_topic, concurrency=1)
async def ingest_drops(stream):  # noqa: ANN001 - faust.StreamT
    async for values in stream.take(settings.batch_size, within=0.1):
        await retrying(handle_batch, list(values))
