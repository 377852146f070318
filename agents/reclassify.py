"""The reclassify agent: stored originals classified again with a job's model (app.reclassify).

Its own topic and agent, so that a job's backlog never waits in front of live uploads; the
job's token bucket bounds how much of the workers' time it takes. Like the classify agent:
``concurrency=1``, batches with ``within``, failures retried (every write is keyed by image
id and model version), nothing escapes the loop body.
"""

from __future__ import annotations

import asyncio

from agents.classify import retrying
from app import reclassify
from app import results as res
from app.faust_app import app, settings
from app.logs import get_logger
from app.messages import DeadLetterHeaders
from app.topics import dlq_topic, reclassify_topic, results_topic

log = get_logger(__name__)


async def _send_result(image_id: str, data: bytes) -> None:
    fut = await results_topic.send(key=image_id.encode(), value=data)
    await fut


async def _to_dlq(raw: bytes | None, error: str) -> None:
    log.warning("reclassify message sent to DLQ", error=error)
    headers = DeadLetterHeaders(error=error, source_topic=settings.topic_reclassify,
                                failed_at=res.now_iso())
    fut = await dlq_topic.send(value=raw or b"", headers=headers.to_headers())
    await fut


# Small batches: the decode thread is shared with live uploads, and a job's batch holds it
# for its whole decode; four images keep that under ~20 ms.
RECLASSIFY_BATCH = 4


@app.agent(reclassify_topic, concurrency=1)
async def reclassify_images(stream):  # noqa: ANN001 - faust.StreamT
    async for values in stream.take(min(RECLASSIFY_BATCH, settings.batch_size), within=0.2):
        await retrying(reclassify.reclassify_batch, list(values), _send_result, _to_dlq)


_running: dict[str, asyncio.Task] = {}


def start_job(job_id: str) -> asyncio.Task:
    """Run a job's enqueuer in this worker, in the background (once per job here)."""
    task = _running.get(job_id)
    if task is None or task.done():
        task = _running[job_id] = asyncio.create_task(_run(job_id))
    return task


async def _run(job_id: str) -> None:
    try:
        state = await reclassify.run_job(job_id)
        log.info("reclassify runner ended", job=job_id, state=state)
    except Exception as exc:  # noqa: BLE001 - recorded in the job; another worker resumes
        log.warning("reclassify runner failed", job=job_id, error=repr(exc)[:300])


async def _start(job_id: str) -> None:
    start_job(job_id)


@app.timer(15.0)
async def resume_reclassify_jobs() -> None:
    """Jobs whose runner died (its lease expired) continue here from their position."""
    try:
        for job_id in await reclassify.resume_orphans(_start):
            log.info("reclassify job resumed", job=job_id)
    except Exception as exc:  # noqa: BLE001 - next tick tries again
        log.debug("reclassify resume check failed", error=repr(exc)[:200])
