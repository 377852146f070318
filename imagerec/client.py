"""imagerec's Python client: the HTTP API behind the gateway, async and sync.

Everything a program does with imagerec, in the few calls the service is built around:
``upload`` an image (or ``upload_presigned`` it straight to storage), ``wait`` for its result
(``get`` it at any time), ``stream`` results as they finish (Server-Sent Events), ``classify``
one image synchronously. It needs only the gateway's URL and an API key, read from
``IMAGEREC_GATEWAY_URL`` and ``IMAGEREC_API_KEY`` when not given, never the stack's internals.
The ``imagerec upload | get | watch`` commands are built on it (app/cli/client.py).

``AsyncClient`` is the implementation (aiohttp: many requests in flight on one connection
pool); ``Client`` runs it on a private event loop thread for code that is not async, so both
behave the same. docs/CLIENT.md has examples; tests/integration/test_client_docs.py runs them.

Errors: every failure is an ``ImagerecError``: ``Unreachable`` (no answer from the gateway),
``KeyRejected`` (401/403), ``NotFound`` (404), ``Refused`` (any other 4xx/5xx after the
retries, with the server's ``code``), ``WaitTimeout`` (no final result in time). 429 and 503
are retried after their Retry-After (``retries`` times).

Admin keys also ``reclassify`` stored images with another model version (a job in the
workers, rate-limited and resumable), follow it with ``reclassify_job`` and stop it with
``cancel_reclassify``; ``imagerec reclassify`` is built on these.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"
FINAL = frozenset({"done", "failed"})
LONG_POLL_S = 30          # the server caps ?wait= at 60 s; stay well below proxy timeouts
MAX_RETRIES = 5           # for 429/502/503, which carry Retry-After
USER_AGENT = "imagerec-client/0.1"

Image = bytes | str | os.PathLike[str]
T = TypeVar("T")


class ImagerecError(Exception):
    """Any failure of a client call; ``message`` is one line."""

    def __init__(self, message: str, *, status: int | None = None,
                 code: str | None = None, detail: str | None = None) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)
        self.status = status
        self.code = code
        self.detail = detail or self.message  # the server's own words, when it sent some


class Unreachable(ImagerecError):
    """The gateway did not answer (refused, reset, timed out)."""


class KeyRejected(ImagerecError):
    """401 (no key, unknown, revoked, expired) or 403 (the key lacks the scope);
    ``detail`` is the server's own words."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the API key was rejected ({status}): {detail}", status=status,
                         code="unauthorized" if status == 401 else "forbidden", detail=detail)


class NotFound(ImagerecError):
    """404: no image with this id (or not one this key may see)."""


class Refused(ImagerecError):
    """Any other error answer: ``status`` and the server's stable ``code``."""


class WaitTimeout(ImagerecError):
    """``wait`` ran out of time before the result was final."""


@dataclass
class Answer:
    """One HTTP answer, body read: JSON when the server sent JSON, else None."""

    status: int
    body: Any
    text: str
    retry_after: float | None

    def error_message(self) -> str:
        """The server's message when it sent the JSON error shape, else the raw text."""
        err = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            code = f" [{err['code']}]" if err.get("code") else ""
            return f"{err['message']}{code}"
        snippet = " ".join(self.text.split())[:200]
        return snippet or f"HTTP {self.status}"

    def error_code(self) -> str:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return str(err.get("code")) if isinstance(err, dict) and err.get("code") else \
            f"http_{self.status}"

    def error_detail(self) -> str:
        """The server's message alone (no code), else the raw text."""
        err = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        return self.error_message()

    def refused(self, what: str) -> Refused:
        return Refused(f"{what} answered {self.status}: {self.error_message()}",
                       status=self.status, code=self.error_code(), detail=self.error_detail())


def _json_or_none(text: str, content_type: str) -> Any:
    if "json" not in content_type and not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None      # an HTTP-date Retry-After: fall back to our own backoff


async def _read_image(image: Image) -> tuple[bytes, str]:
    """``(bytes, file name)`` of an image given as bytes or as a path."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image), "image"
    path = Path(image)
    return await asyncio.to_thread(path.read_bytes), path.name


def image_content_type(data: bytes, filename: str = "") -> str:
    """``image/<format>`` from the magic bytes (the server's own sniffing), else a guess
    from the file name; storage checks a presigned upload's type exactly."""
    from app.imaging import ImageError, sniff_format

    try:
        return f"image/{sniff_format(data)}"
    except ImageError:
        return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def sse_results(resp: Any) -> AsyncIterator[dict[str, Any]]:
    """The parsed ``data`` of each ``result`` event of an SSE response (the HTML spec's
    framing: ``event:``/``data:`` lines, a blank line ends an event, ``:`` is a comment)."""
    event, data = "message", []
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data and event == "result":
                try:
                    yield json.loads("\n".join(data))
                except ValueError:
                    pass         # a malformed event must not end the stream
            event, data = "message", []
        elif line.startswith(":"):
            continue             # comment / keep-alive
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


_S3_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")


class AsyncClient:
    """The client, for asyncio code; use as ``async with AsyncClient() as client:``.

    ``url`` and ``api_key`` default to ``IMAGEREC_GATEWAY_URL`` (else http://127.0.0.1:8080)
    and ``IMAGEREC_API_KEY``. ``concurrency`` sizes the connection pool (uploads and
    long-polls in flight at once)."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 concurrency: int = 40, user_agent: str = USER_AGENT) -> None:
        self.url = (url or os.environ.get("IMAGEREC_GATEWAY_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("IMAGEREC_API_KEY") or None
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        """The session, made on first use so that it belongs to the running loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self._concurrency),
                # sock_connect, not connect: the latter also counts time queued for a slot
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                              sock_read=LONG_POLL_S + 30))
        return self._session

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # --- HTTP ------------------------------------------------------------------------------

    def unreachable(self, exc: BaseException, where: str | None = None) -> Unreachable:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorError):
            err = exc.os_error       # "connection refused" reads better than aiohttp's repr
            reason = (os.strerror(err.errno) if isinstance(err.errno, int) and err.errno > 0
                      else err.strerror or reason).lower()
        elif isinstance(exc, asyncio.TimeoutError):
            reason = "no answer in time"
        return Unreachable(f"cannot reach {where or 'the gateway at ' + self.url}: {reason}")

    async def request(self, method: str, path: str, *, retries: int = MAX_RETRIES,
                      data_factory: Callable[[], Any] | None = None, **kwargs: Any) -> Answer:
        """One request to the gateway (``path`` starts with ``/``), retried on 429/502/503
        after Retry-After. Raises ``Unreachable`` and ``KeyRejected``; any other status is
        returned. ``data_factory`` builds a fresh body per attempt (a multipart body can be
        sent only once)."""
        for attempt in range(retries + 1):
            if data_factory is not None:
                kwargs["data"] = data_factory()
            try:
                async with self._http().request(method, self.url + path, **kwargs) as resp:
                    text = await resp.text(errors="replace")
                    answer = Answer(resp.status, _json_or_none(text, resp.content_type), text,
                                    _seconds(resp.headers.get("Retry-After")))
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                raise self.unreachable(exc) from exc
            if answer.status in (401, 403):
                raise KeyRejected(answer.status, answer.error_message())
            if answer.status in (429, 502, 503) and attempt < retries:
                await asyncio.sleep(min(answer.retry_after or 2.0 * 2**attempt, 30.0))
                continue
            return answer
        raise AssertionError("unreachable")  # the loop always returns on its last attempt

    async def _json(self, method: str, path: str, ok: tuple[int, ...] = (200,),
                    **kwargs: Any) -> Any:
        answer = await self.request(method, path, **kwargs)
        if answer.status in ok and answer.body is not None:
            return answer.body
        if answer.status == 404:
            raise NotFound(f"{method} {path.split('?')[0]}: {answer.error_message()}",
                           status=404, code=answer.error_code())
        raise answer.refused(f"{method} {path.split('?')[0]}")

    # --- the API ---------------------------------------------------------------------------

    async def upload(self, image: Image, *, filename: str | None = None,
                     callback_url: str | None = None) -> dict[str, Any]:
        """Upload one image (bytes or a path); returns its result, usually ``queued``
        (``done`` at once with ``duplicate_of`` when the same bytes were classified
        before). ``callback_url``: a webhook POSTed the result when it is final."""
        data, name = await _read_image(image)
        name = filename or name
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"

        def form() -> aiohttp.FormData:
            body = aiohttp.FormData()
            body.add_field("file", data, filename=name, content_type=content_type)
            if callback_url:
                body.add_field("callback_url", callback_url)
            return body

        return await self._json("POST", "/v1/images", ok=(200, 202), data_factory=form)

    async def get(self, image_id: str, *, top_k: int = 5, min_score: float = 0.0,
                  wait: float = 0.0, trace: bool = False) -> dict[str, Any]:
        """One image's status and result now (``wait``: long-poll up to that many seconds
        for it to be final; ``trace``: add the stages it went through, with times).
        ``NotFound`` for an unknown id."""
        query = f"?top_k={top_k}&min_score={min_score:g}" + (f"&wait={wait:g}" if wait else "") \
            + ("&trace=1" if trace else "")
        return await self._json("GET", f"/v1/images/{image_id}{query}")

    async def wait(self, image_id: str, *, timeout: float = 300.0, top_k: int = 5,
                   not_found_grace: float = 15.0) -> dict[str, Any]:
        """The image's final result (``done`` or ``failed``), long-polling for it.

        A 404 within ``not_found_grace`` seconds is waited out: a presigned upload is known
        only once its object has arrived, and a just-accepted image may not be visible to
        every worker yet. ``WaitTimeout`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise WaitTimeout(f"no final result for {image_id} within {timeout:g} s")
            poll = loop.time()
            try:
                result = await self.get(image_id, top_k=top_k,
                                        wait=max(1, min(LONG_POLL_S, int(remaining))))
            except NotFound:
                if loop.time() - started > not_found_grace:
                    raise
                result = {}
            if result.get("status") in FINAL:
                return result
            if loop.time() - poll < 1.0:
                await asyncio.sleep(1.0)  # a server that ignores ?wait= must not be hammered

    async def events(self, last_id: str | None = None) -> aiohttp.ClientResponse:
        """Open the Server-Sent Events stream (no read timeout: results may be rare); the
        caller releases it. ``last_id``: the server first replays what finished after it."""
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            resp = await self._http().get(
                self.url + "/v1/events", headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None))
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise self.unreachable(exc) from exc
        if resp.status != 200:
            text = await resp.text(errors="replace")
            answer = Answer(resp.status, _json_or_none(text, resp.content_type), text, None)
            resp.release()
            if resp.status in (401, 403):
                raise KeyRejected(resp.status, answer.error_message())
            raise answer.refused("the event stream")
        return resp

    async def stream(self, *, last_id: str | None = None, reconnect: bool = True,
                     on_connect: Callable[[], None] | None = None,
                     on_drop: Callable[[ImagerecError | None], None] | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
        """Every result of this key's tenant as it finishes, endlessly (break to stop).

        A dropped stream is reopened with the last id seen, so nothing finished in the gap
        is missed (``reconnect=False`` ends instead). The first connection's failure and a
        rejected key are raised. ``on_connect`` is called each time the stream is open
        (results finishing from then on are delivered), ``on_drop`` each time it broke (with
        the error of a failed reconnect, if any)."""
        backoff, first = 1.0, True
        while True:
            try:
                resp = await self.events(last_id)
            except ImagerecError as exc:
                if first or isinstance(exc, KeyRejected) or not reconnect:
                    raise
                if on_drop:
                    on_drop(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            first, backoff = False, 1.0
            if on_connect:
                on_connect()
            try:
                async for result in sse_results(resp):
                    last_id = result.get("id") or last_id
                    yield result
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                pass             # the stream broke: reconnect below
            finally:
                resp.release()
            if not reconnect:
                return
            if on_drop:
                on_drop(None)
            await asyncio.sleep(backoff)

    async def classify(self, image: Image, *, top_k: int = 5,
                       min_score: float = 0.0) -> dict[str, Any]:
        """Classify one image synchronously (nothing stored): ``{status, model, labels}``."""
        data, name = await _read_image(image)
        return await self._json("POST", f"/v1/classify?top_k={top_k}&min_score={min_score:g}",
                                data=data,
                                headers={"Content-Type": image_content_type(data, name)})

    async def models(self) -> dict[str, Any]:
        """The models available, the default, and the one being served."""
        return await self._json("GET", "/v1/models")

    async def create_upload(self, content_type: str, size: int | None = None
                            ) -> dict[str, Any]:
        """A presigned form (``POST /v1/uploads``): ``{id, url, fields, file_field,
        max_bytes, expires_at, links}``; see ``upload_presigned``."""
        body = {"content_type": content_type} | ({"size": size} if size is not None else {})
        return await self._json("POST", "/v1/uploads", ok=(201,), json=body)

    async def upload_presigned(self, image: Image, *,
                               content_type: str | None = None) -> dict[str, Any]:
        """Send one image straight to storage: ask for a form sized to it, POST the image
        to the form's URL; returns the form (its ``id`` is the image's). The result then
        comes as for any upload: ``wait(form["id"])``. Storage refuses a form it does not
        match (``Refused`` with storage's code, e.g. ``EntityTooLarge``)."""
        data, name = await _read_image(image)
        ctype = content_type or image_content_type(data, name)
        form = await self.create_upload(ctype, len(data))

        def body() -> aiohttp.FormData:
            out = aiohttp.FormData()
            for key, value in form["fields"].items():
                out.add_field(key, value)
            out.add_field(form["file_field"], data, filename=name, content_type=ctype)
            return out

        try:  # a session of its own: the API key must not travel to the storage host
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=10, sock_read=120)) as bare, \
                    bare.post(form["url"], data=body()) as resp:
                text = await resp.text(errors="replace")
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise self.unreachable(exc, f"storage at {form['url']}") from exc
        if resp.status >= 300:
            found = _S3_CODE.search(text)
            raise Refused(f"storage refused the upload ({resp.status}): "
                          f"{found.group(1) if found else text[:200]}", status=resp.status,
                          code=found.group(1) if found else f"http_{resp.status}")
        return form


    # --- re-classification (admin keys) -----------------------------------------------------

    async def reclassify(self, model: str | None = None, *, since: str = "", prefix: str = "",
                         rate: float | None = None, restart: bool = False) -> dict[str, Any]:
        """Start (or resume: the same model, since and prefix make the same job) a job that
        classifies stored images again with ``model`` (``NAME[:VERSION]``, default: the
        server's default model). ``since``: an ISO date or time; ``prefix``: only images
        dropped into storage under this key prefix; ``rate``: images per second. Returns
        the job: ``{id, state, model, total, enqueued, finished, ...}``. Needs the admin
        scope (``KeyRejected`` otherwise)."""
        body: dict[str, Any] = {"since": since, "prefix": prefix, "restart": restart}
        if model:
            body["model"] = model
        if rate:
            body["rate"] = rate
        return await self._json("POST", "/v1/admin/reclassify", ok=(202,), json=body)

    async def reclassify_job(self, job_id: str) -> dict[str, Any]:
        """A re-classification job's state now (``state``: running, done, cancelled, failed)."""
        return await self._json("GET", f"/v1/admin/reclassify/{job_id}")

    async def cancel_reclassify(self, job_id: str) -> dict[str, Any]:
        """Stop a job (what it already enqueued still completes)."""
        return await self._json("DELETE", f"/v1/admin/reclassify/{job_id}", ok=(200, 202))


class Client:
    """The same client for code that is not async: every method blocks until done.

    It runs an ``AsyncClient`` on a private event-loop thread, so it also works where an
    event loop is already running (a notebook). Use as ``with Client() as client:`` or call
    ``close()``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 concurrency: int = 40) -> None:
        self.aio = AsyncClient(url, api_key, concurrency=concurrency)
        self.url = self.aio.url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="imagerec-client")
        self._thread.start()

    def _run(self, coro: Awaitable[T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self.aio.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def upload(self, image: Image, *, filename: str | None = None,
               callback_url: str | None = None) -> dict[str, Any]:
        """See ``AsyncClient.upload``."""
        return self._run(self.aio.upload(image, filename=filename, callback_url=callback_url))

    def get(self, image_id: str, *, top_k: int = 5, min_score: float = 0.0,
            wait: float = 0.0, trace: bool = False) -> dict[str, Any]:
        """See ``AsyncClient.get``."""
        return self._run(self.aio.get(image_id, top_k=top_k, min_score=min_score, wait=wait,
                                      trace=trace))

    def wait(self, image_id: str, *, timeout: float = 300.0, top_k: int = 5,
             not_found_grace: float = 15.0) -> dict[str, Any]:
        """See ``AsyncClient.wait``."""
        return self._run(self.aio.wait(image_id, timeout=timeout, top_k=top_k,
                                       not_found_grace=not_found_grace))

    def stream(self, *, last_id: str | None = None, reconnect: bool = True,
               on_connect: Callable[[], None] | None = None,
               on_drop: Callable[[ImagerecError | None], None] | None = None
               ) -> Iterator[dict[str, Any]]:
        """See ``AsyncClient.stream``; a generator (close it, or break, to stop). The
        callbacks run on the client's own thread."""
        agen = self.aio.stream(last_id=last_id, reconnect=reconnect, on_connect=on_connect,
                               on_drop=on_drop)
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def classify(self, image: Image, *, top_k: int = 5,
                 min_score: float = 0.0) -> dict[str, Any]:
        """See ``AsyncClient.classify``."""
        return self._run(self.aio.classify(image, top_k=top_k, min_score=min_score))

    def models(self) -> dict[str, Any]:
        """See ``AsyncClient.models``."""
        return self._run(self.aio.models())

    def create_upload(self, content_type: str, size: int | None = None) -> dict[str, Any]:
        """See ``AsyncClient.create_upload``."""
        return self._run(self.aio.create_upload(content_type, size))

    def upload_presigned(self, image: Image, *,
                         content_type: str | None = None) -> dict[str, Any]:
        """See ``AsyncClient.upload_presigned``."""
        return self._run(self.aio.upload_presigned(image, content_type=content_type))


    def reclassify(self, model: str | None = None, *, since: str = "", prefix: str = "",
                   rate: float | None = None, restart: bool = False) -> dict[str, Any]:
        """See ``AsyncClient.reclassify``."""
        return self._run(self.aio.reclassify(model, since=since, prefix=prefix, rate=rate,
                                             restart=restart))

    def reclassify_job(self, job_id: str) -> dict[str, Any]:
        """See ``AsyncClient.reclassify_job``."""
        return self._run(self.aio.reclassify_job(job_id))

    def cancel_reclassify(self, job_id: str) -> dict[str, Any]:
        """See ``AsyncClient.cancel_reclassify``."""
        return self._run(self.aio.cancel_reclassify(job_id))


__all__ = ["Answer", "AsyncClient", "Client", "ImagerecError", "KeyRejected", "NotFound",
           "Refused", "Unreachable", "WaitTimeout", "image_content_type", "sse_results"]
