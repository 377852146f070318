"""Operational views: liveness and readiness (every dependency checked for real)."""

from __future__ import annotations

from aiohttp import web

from app.faust_app import WORKER_ID, app
from app.health import readiness
from app.settings import get_settings


@app.page("/healthz")
async def healthz(self, request):  # noqa: ANN001 - Faust passes the view and request
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok", "worker": WORKER_ID})


@app.page("/readyz")
async def readyz(self, request):  # noqa: ANN001
    """200 only when Kafka, every bucket and Redis answer; names what is down otherwise."""
    report = await readiness(get_settings())
    report["worker"] = WORKER_ID
    if report["ready"]:
        return web.json_response(report)
    return web.json_response(report, status=503, headers={"Retry-After": "5"})
