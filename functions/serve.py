"""Host one function locally, as the OpenFaaS of-watchdog (http mode) and template would.

Usage: ``python -m functions.serve image-upload`` (port: ``IMAGEREC_FUNCTION_PORT``, else the
stack's port for that function). supervisord runs one per function; Nginx routes
``/function/<name>`` to it as the OpenFaaS gateway would.

Why not the real watchdog: every ``github.com/openfaas/*`` module is refused by the Go
module proxy reachable here (403), and there is no Docker engine to pull its image. This
server plays both of its parts for one function:

- the python3-http template's part: load ``functions/<name>/handler.py``, build an event
  (``body`` bytes, ``headers``, ``method``, ``query``, ``path``) and a context
  (``hostname``), call ``handle(event, context)`` on a worker thread (it is synchronous) and
  turn the returned ``{"statusCode", "body", "headers"}`` into the HTTP response;
- the watchdog's part: ``/_/health``, ``/metrics`` (Prometheus: invocations by status code and
  their duration, like the OpenFaaS gateway's ``gateway_function_invocation_total``, plus the
  process' CPU and memory), a per-call time limit (``exec_timeout``, default 70s,
  above the handlers' own 60s) and an optional in-flight limit (``max_inflight``, 429 above
  it), with the same environment variable names, plus ``X-Duration-Seconds`` on every answer.

The gateway strips ``/function/<name>`` before a real function sees the path, and so does
this server, so a handler sees the same ``event.path`` in both places.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web

FUNCTIONS_DIR = Path(__file__).resolve().parent
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MULTIPART_SLACK = 1024 * 1024  # a multipart body is a little larger than its image


@dataclass(frozen=True)
class Event:
    """What the python3-http template passes as ``event``."""

    body: bytes
    headers: Mapping[str, str]  # case-insensitive
    method: str
    query: Mapping[str, str]
    path: str


@dataclass(frozen=True)
class Context:
    """What the python3-http template passes as ``context``."""

    hostname: str


def load_handler(name: str) -> ModuleType:
    """Import ``functions/<name>/handler.py`` by path: a dash makes it no Python package."""
    if not _NAME_RE.match(name):
        raise SystemExit(f"not a function name: {name!r}")
    path = FUNCTIONS_DIR / name / "handler.py"
    if not path.is_file():
        raise SystemExit(f"no handler at {path}")
    module_name = "imagerec_function_" + name.replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "handle", None)):
        raise SystemExit(f"{path} defines no handle(event, context)")
    return module


def parse_duration(value: str | None, default_s: float) -> float:
    """The watchdog's duration syntax ("60s", "2m", "500ms") or plain seconds."""
    if not value:
        return default_s
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)?\s*", value)
    if not match:
        raise SystemExit(f"bad duration: {value!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


def _json_error(status: int, code: str, message: str,
                headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def to_response(result: Any) -> web.Response:
    """The template's rules: a dict with statusCode/body/headers; a dict body becomes JSON."""
    if result is None:
        return web.Response(status=200)
    if not isinstance(result, Mapping):
        result = {"body": result}
    status = int(result.get("statusCode", 200))
    headers = dict(result.get("headers") or {})
    body = result.get("body", "")
    if isinstance(body, Mapping | list):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes | bytearray):
        body = str(body).encode()
    headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    return web.Response(status=status, body=bytes(body), headers=headers)


class FunctionHost:
    """The aiohttp application around one handler module."""

    def __init__(self, name: str, module: ModuleType, *, exec_timeout_s: float,
                 max_inflight: int, threads: int) -> None:
        self.name = name
        self.module = module
        self.exec_timeout_s = exec_timeout_s
        self.max_inflight = max_inflight
        self.inflight = 0
        self.prefix = f"/function/{name}"
        self.context = Context(hostname=os.environ.get("HOSTNAME") or socket.gethostname())
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"fn-{name}")
        from app.logs import get_logger

        self.log = get_logger("functions.serve")

    def function_path(self, path: str) -> str:
        if path == self.prefix or path.startswith(self.prefix + "/"):
            return path[len(self.prefix):] or "/"
        return path

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def metrics(self, request: web.Request) -> web.Response:
        """Served on the function's own port only: the gateway routes ``/function/<name>``
        paths, never ``/metrics``, to it."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def invoke(self, request: web.Request) -> web.Response:
        from app import metrics

        started = time.perf_counter()
        if self.max_inflight and self.inflight >= self.max_inflight:
            metrics.FUNCTION_INVOCATIONS.labels(self.name, "429").inc()
            return _json_error(429, "too_many_requests",
                               "the function is at its concurrent request limit",
                               {"Retry-After": "1"})
        self.inflight += 1
        try:
            response = await self._call(request)
        finally:
            self.inflight -= 1
        took = time.perf_counter() - started
        metrics.FUNCTION_INVOCATIONS.labels(self.name, str(response.status)).inc()
        metrics.FUNCTION_SECONDS.labels(self.name).observe(took)
        response.headers["X-Duration-Seconds"] = f"{took:.6f}"
        if response.status >= 500:
            self.log.warning("invocation failed", function=self.name, status=response.status,
                             request_id=request.headers.get("X-Request-ID", ""))
        return response

    async def _call(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, "too_large", "request body is larger than the limit")
        event = Event(body=body, headers=request.headers, method=request.method,
                      query=request.query, path=self.function_path(request.path))
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self.pool, self.module.handle, event, self.context)
        try:
            result = await asyncio.wait_for(asyncio.shield(call), self.exec_timeout_s)
        except TimeoutError:
            # The thread cannot be interrupted; it finishes on its own and is discarded.
            return _json_error(504, "timeout",
                               f"the function did not answer within {self.exec_timeout_s:g}s",
                               {"Retry-After": "5"})
        except Exception as exc:  # noqa: BLE001 - a handler bug: 500, like the template
            self.log.error("handler raised", function=self.name, error=repr(exc)[:500],
                           exc_info=exc)
            return _json_error(500, "internal_error", "the function failed; see its log")
        try:
            return to_response(result)
        except (TypeError, ValueError) as exc:
            self.log.error("handler returned an unusable response", error=repr(exc)[:300])
            return _json_error(500, "internal_error", "the function returned a bad response")

    def application(self, max_body: int) -> web.Application:
        app = web.Application(client_max_size=max_body)
        app.router.add_get("/_/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_route("*", "/{tail:.*}", self.invoke)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _default_port(name: str) -> int:
    from app.settings import get_settings
    from app.stack.services import FUNCTIONS, function_port

    if name not in FUNCTIONS:
        raise SystemExit(f"set IMAGEREC_FUNCTION_PORT (no default port for {name!r})")
    return function_port(get_settings(), FUNCTIONS.index(name))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m functions.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="function directory under functions/, e.g. image-upload")
    parser.add_argument("--host", default=os.environ.get("IMAGEREC_FUNCTION_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)

    from app.logs import configure_logging, get_logger
    from app.settings import get_settings

    configure_logging(f"fn-{args.name}")
    port = args.port or int(os.environ.get("IMAGEREC_FUNCTION_PORT") or _default_port(args.name))
    module = load_handler(args.name)
    host = FunctionHost(
        args.name, module,
        exec_timeout_s=parse_duration(os.environ.get("exec_timeout"), 70.0),
        max_inflight=int(os.environ.get("max_inflight") or 0),
        threads=int(os.environ.get("IMAGEREC_FUNCTION_THREADS") or 16),
    )
    max_body = get_settings().max_upload_bytes + MULTIPART_SLACK
    get_logger("functions.serve").info("function listening", function=args.name,
                                       address=f"{args.host}:{port}")
    web.run_app(host.application(max_body), host=args.host, port=port, access_log=None,
                print=None, shutdown_timeout=10.0)


if __name__ == "__main__":
    main()
