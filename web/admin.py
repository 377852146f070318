"""Operator endpoints under ``/v1/admin/`` (the gateway lets only ``admin`` keys through; the
views check again): re-classification jobs (app.reclassify).

``POST /v1/admin/reclassify`` with ``{"model", "since", "prefix", "rate", "restart"}`` starts
a job or resumes the same one (same model, since and prefix), in this worker; the answer is
the job's state, which ``GET /v1/admin/reclassify/{job}`` reports as it goes (what
``imagerec reclassify`` draws its progress bar from). ``DELETE`` cancels it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from faust.web import View

from app import reclassify
from app.errors import ApiError, DependencyDown
from app.faust_app import app
from app.logs import get_logger
from app.tenancy import from_headers
from web.errors import error_response

log = get_logger(__name__)


def _forbidden(request: web.Request) -> web.Response | None:
    who = from_headers(request.headers)
    if who is None:
        return error_response(401, "unauthorized", "missing API key")
    if not who.admin:
        return error_response(403, "forbidden", "this operation needs the admin scope")
    return None


def _unavailable(exc: Exception) -> web.Response:
    log.warning("reclassify endpoint failed", error=repr(exc)[:300])
    return error_response(503, "dependency_unavailable", f"redis or kafka: {type(exc).__name__}",
                          headers={"Retry-After": "5"})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise ApiError("the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
    return body


def _spec(body: dict[str, Any]) -> tuple[reclassify.JobSpec, float | None, bool]:
    from app.settings import get_settings

    model = body.get("model") or get_settings().default_model
    since, prefix = body.get("since") or "", body.get("prefix") or ""
    rate = body.get("rate")
    if not all(isinstance(v, str) for v in (model, since, prefix)):
        raise ApiError("model, since and prefix are strings")
    if rate is not None and (not isinstance(rate, int | float) or isinstance(rate, bool)
                             or not 0 < rate <= 10_000):
        raise ApiError("rate is a number of images per second, 0 < rate <= 10000")
    return (reclassify.JobSpec(model=model, since=since, prefix=prefix),
            float(rate) if rate else None, bool(body.get("restart")))


@app.page("/v1/admin/reclassify")
class Reclassify(View):
    """Start (or resume) a job; list jobs."""

    async def post(self, request: web.Request) -> web.Response:
        if (refused := _forbidden(request)) is not None:
            return refused
        try:
            spec, rate, restart = _spec(await _body(request))
            spec = reclassify.JobSpec(reclassify.check_model(spec.model), spec.since,
                                      spec.prefix)
            job_id, new = await reclassify.create_job(spec, rate=rate, restart=restart)
        except (ApiError, reclassify.JobError) as exc:
            return error_response(400, "bad_request", str(exc))
        except DependencyDown as exc:
            return _unavailable(exc)
        except Exception as exc:  # noqa: BLE001 - Redis down
            return _unavailable(exc)
        from agents.reclassify import start_job

        job = await reclassify.load_job(job_id)
        if job and job["state"] == "running" and not job["running"]:
            start_job(job_id)
        return web.json_response({**(job or {"id": job_id}), "new": new}, status=202)

    async def get(self, request: web.Request) -> web.Response:
        if (refused := _forbidden(request)) is not None:
            return refused
        try:
            return web.json_response({"jobs": await reclassify.list_jobs()})
        except Exception as exc:  # noqa: BLE001
            return _unavailable(exc)


@app.page("/v1/admin/reclassify/{job_id}")
class ReclassifyJob(View):
    """One job's progress; DELETE cancels it (what was enqueued still completes)."""

    async def get(self, request: web.Request, job_id: str) -> web.Response:
        if (refused := _forbidden(request)) is not None:
            return refused
        try:
            job = await reclassify.load_job(job_id[:64])
        except Exception as exc:  # noqa: BLE001
            return _unavailable(exc)
        if job is None:
            return error_response(404, "not_found", "no such re-classification job")
        return web.json_response(job)

    async def delete(self, request: web.Request, job_id: str) -> web.Response:
        if (refused := _forbidden(request)) is not None:
            return refused
        try:
            if not await reclassify.cancel_job(job_id[:64]):
                return error_response(404, "not_found", "no such re-classification job")
            return web.json_response(await reclassify.load_job(job_id[:64]))
        except Exception as exc:  # noqa: BLE001
            return _unavailable(exc)
