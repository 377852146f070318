"""The callbacks agent: delivers the webhooks queued on ``image-callbacks`` (app.callbacks).

Each message is acked only when its delivery ended, so a worker that dies during a backoff
leaves it uncommitted and the next owner of the partition delivers it. Deliveries run as
tasks, so one receiver's backoff does not hold up the others; Faust commits an offset only
once every message before it is acked, so nothing is skipped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app import callbacks
from app import results as res
from app.faust_app import app
from app.logs import get_logger
from app.topics import callbacks_topic

log = get_logger(__name__)
_running: set[asyncio.Task] = set()


async def _deliver_and_ack(stream: Any, event: Any) -> None:
    try:
        result = res.decode(event.value)
        if result.get("callback_url") and result.get("id"):
            await callbacks.deliver(result)
    except asyncio.CancelledError:
        raise  # shutting down: not acked, so the next owner delivers it
    except Exception as exc:  # noqa: BLE001 - a bad message must not block the partition
        log.error("callback message dropped", error=repr(exc)[:300])
    await stream.ack(event)


@app.agent(callbacks_topic, concurrency=1)
async def deliver_callbacks(stream):  # noqa: ANN001 - faust.StreamT
    """One task per queued webhook; the message stays unacked until its task ends."""
    try:
        async for event in stream.events():
            event.message.incref()  # released by _deliver_and_ack, not by the loop
            task = asyncio.create_task(_deliver_and_ack(stream, event))
            _running.add(task)
            task.add_done_callback(_running.discard)
    finally:
        for task in list(_running):
            task.cancel()
