"""Operational views: liveness and readiness (every dependency checked for real)."""

from __future__ import annotations

import os
import time

from aiohttp import web

from app.faust_app import WORKER_ID, app
from app.health import readiness, rss_mb
from app.logs import get_logger
from app.runtime import get_classifier, loaded_classifier
from app.settings import get_settings

log = get_logger(__name__)


@app.task
async def load_model() -> None:
    """Load (and on first run convert) the model at start, not on the first image.

    Retried: the registry reads the default from the object store, which may be down at start.
    """
    import asyncio

    delay = 1.0
    while True:
        try:
            await get_classifier()
            return
        except Exception as exc:  # noqa: BLE001 - readiness reports "model" until this works
            log.warning("model not loaded yet; retrying", error=repr(exc)[:300], retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


@app.timer(get_settings().model_poll_s)
async def follow_default_model() -> None:
    """Switch to a new default model without a restart (see Classifier.check_default)."""
    classifier = loaded_classifier()
    if classifier is not None:
        await classifier.maybe_reload()


STARTED = time.time()


@app.page("/internal/info")
async def info(self, request):  # noqa: ANN001 - Faust passes the view and request
    """What the console's workers view shows about this worker: the partitions it owns, the
    model and engine it serves with, its memory and uptime. Workers listen on loopback and
    the gateway does not route ``/internal/``; the console asks each worker directly."""
    try:
        assigned = sorted((tp.topic, tp.partition) for tp in app.consumer.assignment())
    except Exception:  # noqa: BLE001 - not started or rebalancing: nothing owned right now
        assigned = []
    partitions: dict[str, list[int]] = {}
    for topic, partition in assigned:
        partitions.setdefault(topic, []).append(partition)
    classifier = loaded_classifier()
    return web.json_response({
        "worker": WORKER_ID, "pid": os.getpid(), "uptime_s": round(time.time() - STARTED, 1),
        "rss_mb": rss_mb(), "partitions": partitions,
        "model": classifier.current.model_dict() if classifier else None,
    })


@app.page("/healthz")
async def healthz(self, request):  # noqa: ANN001 - Faust passes the view and request
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok", "worker": WORKER_ID})


@app.page("/readyz")
async def readyz(self, request):  # noqa: ANN001
    """200 only when Kafka, every bucket and Redis answer; names what is down otherwise."""
    report = await readiness(get_settings())
    report["worker"] = WORKER_ID
    classifier = loaded_classifier()
    report["model"] = ({"ok": True, "detail": classifier.model.ref} if classifier
                       else {"ok": False, "detail": "loading"})
    if classifier is None:
        report["ready"] = False
        report["down"].append("model")
    if report["ready"]:
        return web.json_response(report)
    return web.json_response(report, status=503, headers={"Retry-After": "5"})
