"""What both OpenFaaS handlers need around the app code: one event loop, the request, errors.

The python3-http template calls ``handle(event, context)`` synchronously, from several
threads at once. The app code is async and keeps loop-bound clients (the Kafka producer,
the Redis pool, the classifier's lock), so every handler owns one event loop that runs for
the life of the process in a daemon thread; ``handle`` submits a coroutine to it and waits.
``asyncio.run`` per call would instead reconnect to Kafka and Redis on every request.

Responses follow the ``/v1`` API exactly (status codes, ``{"error": {"code", "message"}}``,
Retry-After on 503), so clients can switch between the two without changing code.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import email.message
import email.parser
import email.utils
import json
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app import imaging, params
from app.errors import ApiError, http_error
from app.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

REQUEST_TIMEOUT_S = float(os.environ.get("IMAGEREC_FUNCTION_TIMEOUT_S", "60"))
OPENFAAS_SECRETS = Path("/var/openfaas/secrets")
MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries around the one image


class FunctionTimeout(ApiError):
    """The work did not finish within the function's time budget."""

    http_status = 504
    code = "timeout"


def load_openfaas_secrets(mapping: Mapping[str, str], directory: Path = OPENFAAS_SECRETS) -> None:
    """Copy OpenFaaS secrets (files under /var/openfaas/secrets) into ``IMAGEREC_*`` variables.

    Must run before the first ``get_settings()``. Locally there is no such directory and the
    supervisor passes the same values as environment variables, which are left untouched.
    """
    for secret, env_name in mapping.items():
        path = directory / secret
        if env_name not in os.environ and path.is_file():
            os.environ[env_name] = path.read_text().strip()


def setup_logging(component: str) -> None:
    """JSON logs like every other imagerec process, unless the host already set them up."""
    import structlog

    from app.logs import configure_logging

    if not structlog.is_configured():
        configure_logging(component)


class BackgroundLoop:
    """One asyncio event loop in a daemon thread, shared by every call of ``handle``.

    The loop and its tasks run in a copy of the creator's context, so log fields bound at
    start (the component name) appear on every line the app code logs from it.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._cleanups: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._context.copy().run, args=(self._serve,),
                                        name=f"{name}-loop", daemon=True)
        self._thread.start()
        atexit.register(self._shutdown)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def at_exit(self, cleanup: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``cleanup()`` on the loop when the process exits (e.g. close the producer)."""
        self._cleanups.append(cleanup)

    def _shutdown(self) -> None:
        async def stop_all() -> None:
            for cleanup in self._cleanups:
                try:
                    await cleanup()
                except Exception as exc:  # noqa: BLE001 - exiting anyway
                    log.warning("cleanup at exit failed", error=repr(exc)[:200])
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()

        if self._loop.is_running():
            try:
                self.submit(stop_all()).result(10.0)
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop without waiting (e.g. loading the model at start)."""
        # Tasks take the context of the thread that schedules them: use the creator's, not
        # the (empty) one of whichever host thread called handle().
        return self._context.copy().run(asyncio.run_coroutine_threadsafe, coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = REQUEST_TIMEOUT_S, *,
            request_id: str = "") -> T:
        """Run ``coro`` on the loop and return its result; raises what it raised.

        ``request_id`` is bound to every log line the call writes (each call is its own task,
        with its own copy of the context).
        """
        future = self.submit(_bound(coro, request_id) if request_id else coro)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            if future.done():  # the coroutine itself raised TimeoutError
                raise
            future.cancel()
            raise FunctionTimeout(f"the function did not finish within {timeout_s:.0f}s; "
                                  "retry shortly") from None


async def _bound(coro: Coroutine[Any, Any, T], request_id: str) -> T:
    import structlog

    structlog.contextvars.bind_contextvars(request_id=request_id)
    return await coro


# ---- the request -----------------------------------------------------------------------------

def header(event: Any, name: str) -> str:
    """A request header, case-insensitively, whatever mapping the host passes."""
    headers = event.headers
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value or ""


def request_id(event: Any) -> str:
    """The gateway's X-Request-ID, so the function's logs and events join the request."""
    return header(event, "X-Request-ID")[:128]


def _body(event: Any) -> bytes:
    body = event.body
    if isinstance(body, str):  # some hosts decode text bodies; images never arrive that way
        body = body.encode("latin-1", "replace")
    return body or b""


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> list[FormPart]:
    """Split a multipart/form-data body into its parts (RFC 7578; no nesting).

    Hand-rolled because the stdlib's ``cgi`` is gone and the email parser is line-based,
    which is slow on megabytes of binary data. Raises ``ApiError`` (400) when malformed.
    """
    holder = email.message.Message()
    holder["Content-Type"] = content_type
    boundary = holder.get_boundary()
    if not boundary:
        raise ApiError("malformed multipart body: no boundary in Content-Type")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    segments = (b"\r\n" + body).split(delimiter)
    if len(segments) < 3 or not segments[-1].startswith(b"--"):
        raise ApiError("malformed multipart body: missing boundary or closing delimiter")
    parts = []
    for segment in segments[1:-1]:
        head, sep, data = segment.partition(b"\r\n\r\n")
        if not sep:
            raise ApiError("malformed multipart body: a part has no header block")
        headers = email.parser.BytesHeaderParser().parsebytes(head.lstrip(b" \t\r\n"))
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_param("filename", header="content-disposition")
        parts.append(FormPart(
            name=email.utils.collapse_rfc2231_value(name) if name else "",
            filename=email.utils.collapse_rfc2231_value(filename) if filename else None,
            data=data,
        ))
    return parts


def read_image(event: Any, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """The one image of a request (raw ``image/*`` body or multipart field ``file``), plus
    the multipart's text fields; the same rules and errors as the ``/v1`` upload views."""
    body = _body(event)
    ctype = header(event, "Content-Type").split(";", 1)[0].strip().lower()
    if len(body) > max_bytes + (MULTIPART_OVERHEAD if ctype.startswith("multipart/") else 0):
        raise imaging.PayloadTooLarge(f"file is larger than the limit of {max_bytes} bytes")
    if ctype.startswith("multipart/"):
        parts = parse_multipart(body, header(event, "Content-Type"))
        files = [p for p in parts if p.name == "file"]
        if not files:
            raise ApiError("no multipart field named 'file'", code="no_file")
        if len(files) > 1:
            raise ApiError("send exactly one image", code="one_image_only")
        fields = {p.name: p.data.decode("utf-8", "replace").strip()
                  for p in parts if p.name != "file" and p.filename is None}
        data = files[0].data
        if len(data) > max_bytes:
            raise imaging.PayloadTooLarge(f"file is larger than the limit of {max_bytes} bytes")
        return data, fields
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return body, {}
    raise imaging.UnsupportedFormat(
        f"send multipart/form-data with field 'file', or an image/* body (got {ctype!r})")


int_param = params.int_param  # one parser for views and functions (app/params.py)
float_param = params.float_param


# ---- the response (the python3-http template's dict) ----------------------------------------

def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None
                  ) -> dict[str, Any]:
    """A JSON answer; the body is already a string, which every template host passes as is."""
    return {
        "statusCode": status,
        "body": json.dumps(body, separators=(",", ":")),
        "headers": {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    }


def error_body(status: int, code: str, message: str,
               headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


def error_response(exc: Exception) -> dict[str, Any]:
    """The ``/v1`` API's mapping of errors to status codes (``app.errors.http_error``)."""
    mapped = http_error(exc)
    if mapped is None:
        log.error("function failed", error=repr(exc)[:500], exc_info=exc)
        return error_body(500, "internal_error", "the function failed; see its log")
    status, body, headers = mapped
    return json_response(status, body, headers)


def method_not_allowed(allowed: str) -> dict[str, Any]:
    return error_body(405, "method_not_allowed", f"use {allowed}", {"Allow": allowed})
