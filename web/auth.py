"""The key check behind the gateway's ``auth_request``, and per-request log context.

Nginx sends a body-less GET subrequest to ``/internal/auth`` for every ``/v1/`` and
``/function/`` request, with the client's headers, the original URI and method. We answer 204
plus ``X-Api-Key-Name``, ``X-Api-Tenant`` and ``X-Api-Scopes`` (nginx forwards them to the
upstream; see ``app.tenancy``), 401 plus ``X-Auth-Error`` (unknown, revoked or expired key;
nginx turns it into the JSON 401), or 403 when the key lacks the scope the request needs
(``app.apikeys.required_scope``: a read-only key cannot upload). A key over its own rate
limit (``app.ratelimit``) gets a 403 marked ``rate_limited``, which nginx answers as its 429
(auth_request passes on only 401 and 403). A store outage with
nothing cached is a 503, which nginx turns into its JSON 503. The path is not routed by the
public listener; the workers themselves only listen on loopback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from aiohttp import web
from faust.web import View

from app import ratelimit
from app.apikeys import ADMIN_SCOPES, KeyCache, StoreUnavailable, extract_key, required_scope
from app.faust_app import app, settings
from app.logs import get_logger
from app.tenancy import auth_headers
from web.errors import error_response

log = get_logger(__name__)

AUTH_PATH = "/internal/auth"
# Only this path may carry the key in the query string: EventSource cannot set headers.
QUERY_KEY_PATHS = frozenset({"/v1/events"})

_cache = KeyCache()


def _query_key(original_uri: str) -> str | None:
    parts = urlsplit(original_uri)
    if parts.path not in QUERY_KEY_PATHS:
        return None
    values = parse_qs(parts.query).get("api_key")
    return values[0] if values else None


def _deny(reason: str) -> web.Response:
    # No body: nginx's auth_request discards it and answers with its own JSON.
    return web.Response(status=401, headers={"X-Auth-Error": reason,
                                             "Cache-Control": "no-store"})


@app.page(AUTH_PATH)
class AuthCheck(View):
    """204 for an active key with the needed scope (with its name, tenant and scopes), 401
    for a missing, unknown, revoked or expired key, 403 for a missing scope, 503 if keys
    cannot be read."""

    async def get(self, request: web.Request) -> web.Response:
        if settings.auth_disabled:  # one trusted user: everything, as an admin
            return web.Response(status=204, headers={"X-Api-Key-Name": "anonymous",
                                                     **auth_headers("anonymous", ADMIN_SCOPES)})
        key = extract_key(request.headers.get("Authorization"),
                          request.headers.get("X-API-Key"),
                          _query_key(request.headers.get("X-Original-URI", "")))
        if key is None:
            return _deny("missing")
        try:
            record = await _cache.verify(key)
        except StoreUnavailable as exc:
            log.warning("api key check unavailable", error=str(exc))
            return web.Response(status=503, headers={"Retry-After": "5"})
        if record is None:
            return _deny("invalid")
        if record.expired():
            return _deny("expired")
        needed = required_scope(request.headers.get("X-Original-Method", "GET"),
                                request.headers.get("X-Original-URI", ""))
        if needed not in record.scopes:
            return web.Response(status=403, headers={"X-Auth-Error": f"scope:{needed}",
                                                     "Cache-Control": "no-store"})
        if record.rate_limit and not await ratelimit.allow(record.name, record.rate_limit):
            return web.Response(status=403, headers={"X-Auth-Error": "rate_limited",
                                                     "Cache-Control": "no-store"})
        return web.Response(status=204, headers={"X-Api-Key-Name": record.name,
                                                 **auth_headers(record.tenant, record.scopes)})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the gateway's request id and key name to every log line of this request, and
    turn aiohttp's plain-text errors (unknown path, wrong method) into the JSON error shape.

    aiohttp runs each request in its own task, so contextvars bound here cannot leak into
    another request.
    """
    structlog.contextvars.bind_contextvars(
        request_id=request.headers.get("X-Request-ID", "")[:128],
        api_key_name=request.headers.get("X-Api-Key-Name", "")[:64],
    )
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() not in ("content-type", "content-length")}
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"),
                              exc.reason.lower(), headers)
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "api_key_name")


def _install_middleware(web_driver: Any) -> None:
    """Faust calls ``on_webserver_init`` before the aiohttp app freezes its middlewares."""
    middlewares = web_driver.web_app.middlewares
    if request_context not in middlewares:
        middlewares.append(request_context)


app.on_webserver_init = _install_middleware  # type: ignore[method-assign]
