"""The operator console's API, under ``/v1/admin/console/`` (the page is ``/console``).

Admin keys only: the gateway's key check already requires the ``admin`` scope for
``/v1/admin/`` (app.apikeys), and every view checks it again, so a worker reached another
way still refuses. The work is in ``app.console``; these views map HTTP to it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from faust.web import View

from app import console, params
from app.broker import get_publisher
from app.cache import get_redis
from app.errors import ApiError
from app.faust_app import app, settings
from app.logs import get_logger
from app.storage import get_store
from app.tenancy import from_headers
from web.errors import error_response

log = get_logger(__name__)
PREFIX = "/v1/admin/console"
NO_STORE = {"Cache-Control": "no-store"}


async def _answer(request: web.Request,
                  work: Callable[[], Awaitable[Any]]) -> web.Response:
    """Admins only; the result as JSON, refusals and outages as the JSON error shape."""
    who = from_headers(request.headers)
    if who is None:
        return error_response(401, "unauthorized", "missing API key")
    if not who.admin:
        return error_response(403, "forbidden", "the console needs an admin key")
    try:
        return web.json_response(await work(), headers=NO_STORE)
    except console.ConsoleError as exc:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return error_response(exc.status, exc.code, str(exc), headers)
    except ApiError as exc:
        return error_response(400, exc.code, str(exc))


@app.page(PREFIX + "/alerts")
class Alerts(View):
    async def get(self, request: web.Request) -> web.Response:
        return await _answer(request, lambda: console.alerts(settings))


@app.page(PREFIX + "/charts")
class ChartList(View):
    async def get(self, request: web.Request) -> web.Response:
        return await _answer(request, _chart_list)


async def _chart_list() -> dict[str, Any]:
    return {"charts": [{"name": name, "title": c.title, "unit": c.unit}
                       for name, c in console.CHARTS.items()]}


@app.page(PREFIX + "/charts/{name}")
class ChartData(View):
    """One chart's series over the last ``range`` seconds (60 to 6 h), ``step`` apart."""

    async def get(self, request: web.Request, name: str) -> web.Response:
        async def work() -> dict[str, Any]:
            range_s = params.int_param(request.query, "range", 900, 60, 6 * 3600)
            step = params.int_param(request.query, "step", max(5, range_s // 180), 1, 3600)
            return await console.chart(settings, name, range_s, step)
        return await _answer(request, work)


@app.page(PREFIX + "/stream")
class Stream(View):
    async def get(self, request: web.Request) -> web.Response:
        return await _answer(request, lambda: console.stream_overview(settings))


@app.page(PREFIX + "/topics/{topic}/messages")
class TopicMessages(View):
    async def get(self, request: web.Request, topic: str) -> web.Response:
        async def work() -> dict[str, Any]:
            limit = params.int_param(request.query, "limit", 20, 1, console.MAX_MESSAGES)
            return {"topic": topic,
                    "messages": await console.last_messages(settings, topic, limit)}
        return await _answer(request, work)


@app.page(PREFIX + "/dlq")
class DeadLetters(View):
    async def get(self, request: web.Request) -> web.Response:
        async def work() -> dict[str, Any]:
            limit = params.int_param(request.query, "limit", 50, 1, console.MAX_MESSAGES)
            return {"topic": settings.topic_dlq,
                    "messages": await console.dead_letters(settings, limit, get_redis())}
        return await _answer(request, work)


def _replay_body(raw: bytes) -> tuple[int, int, str | None, bool]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError("send JSON: {\"partition\", \"offset\", \"value\"?}") from exc
    if not isinstance(body, dict):
        raise ApiError("send a JSON object")
    partition, offset, value = body.get("partition"), body.get("offset"), body.get("value")
    for name, number in (("partition", partition), ("offset", offset)):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ApiError(f"{name} must be a non-negative integer", code="bad_parameter")
    if value is not None and not isinstance(value, str):
        raise ApiError("value, when given, is the edited message as a string",
                       code="bad_parameter")
    again = body.get("again", False)
    if not isinstance(again, bool):
        raise ApiError("again must be true or false", code="bad_parameter")
    return partition, offset, value, again  # type: ignore[return-value]


@app.page(PREFIX + "/dlq/replay")
class Replay(View):
    """Re-produce one dead letter to ``image-uploads`` (optionally edited); the log keeps
    who did it, which message, and whether it was edited."""

    async def post(self, request: web.Request) -> web.Response:
        raw = await request.read()
        who = request.headers.get("X-Api-Key-Name", "")[:64] or "?"

        async def work() -> dict[str, Any]:
            partition, offset, value, again = _replay_body(raw)
            done = await console.replay(settings, partition, offset, value, who,
                                        get_publisher().send, get_redis(), again=again)
            log.warning("dead letter replayed", by=who, dlq_partition=partition,
                        dlq_offset=offset, image_id=done["image_id"], edited=done["edited"])
            return done
        return await _answer(request, work)


@app.page(PREFIX + "/dlq/replay-all")
class ReplayAll(View):
    """Every dead letter not replayed yet that would not fail again, as it is (each one
    logged like a single replay)."""

    async def post(self, request: web.Request) -> web.Response:
        who = request.headers.get("X-Api-Key-Name", "")[:64] or "?"
        return await _answer(request, lambda: console.replay_all(
            settings, who, get_publisher().send, get_redis(), log))


@app.page(PREFIX + "/storage")
class Storage(View):
    async def get(self, request: web.Request) -> web.Response:
        return await _answer(request, lambda: console.storage(settings, get_store().client))


@app.page(PREFIX + "/workers")
class Workers(View):
    async def get(self, request: web.Request) -> web.Response:
        return await _answer(request, lambda: console.workers(settings))
