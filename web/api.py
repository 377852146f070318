"""The ``/v1`` HTTP API served by every Faust worker (behind the Nginx gateway).

Views only translate HTTP to calls into ``app.ingest``, ``app.retrieval`` and
``app.pipeline`` and map their errors to the JSON error shape; no business logic lives here.

Tenancy: every view that touches images knows the caller (``app.tenancy.Principal``, from the
headers the gateway sets after the key check) and shows only what that caller may see; an
image of another tenant answers exactly as an unknown id does.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from faust.web import View

from app import callbacks, imaging, ingest, metrics, names, params, presign, reclassify, retrieval
from app import results as res
from app import trace as tr
from app.broker import get_publisher
from app.errors import ApiError, DependencyDown, http_error
from app.faust_app import app, settings
from app.ids import is_image_id, new_image_id
from app.locality import local_image_id, recent_uploads
from app.logs import get_logger
from app.runtime import current_model_ref, get_classifier, list_models
from app.storage import ObjectMissing, get_store
from app.tenancy import Principal, from_headers
from web.errors import error_response
from web.hub import get_hub

log = get_logger(__name__)
CHUNK = 256 * 1024
MAX_FILES = 100
MAX_WAIT_S = 60.0
MODEL_REF_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")


def _fail(exc: Exception) -> web.Response:
    mapped = http_error(exc)
    if mapped is None:
        raise exc
    if isinstance(exc, imaging.ImageError):
        metrics.UPLOADS_REJECTED.labels(code=exc.code).inc()
    status, body, headers = mapped
    return web.json_response(body, status=status, headers=headers)


def _no_principal() -> web.Response:
    """A request that did not pass the gateway's key check (workers listen on loopback)."""
    return error_response(401, "unauthorized", "missing API key: send Authorization: Bearer "
                          "KEY or X-API-Key: KEY through the gateway")


def _not_found() -> web.Response:
    return error_response(404, "not_found", "no image with this id")


def _request_id(request: web.Request) -> str:
    return request.headers.get("X-Request-ID", "")[:128]


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    return params.int_param(request.query, name, default, lo, hi)


def _float_param(request: web.Request, name: str, default: float, lo: float,
                 hi: float) -> float:
    return params.float_param(request.query, name, default, lo, hi)


async def _read_limited(reader: Any) -> bytes:
    """Read one body or part in chunks, refusing as soon as it passes the byte limit."""
    limit = settings.max_upload_bytes
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await reader.read_chunk(CHUNK) if hasattr(reader, "read_chunk") else \
            await reader.read(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise imaging.PayloadTooLarge(f"file is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: web.Request) -> tuple[list[tuple[str, bytes]], str | None]:
    """(filename, bytes) per uploaded file, plus the optional callback_url."""
    ctype = request.content_type
    callback = request.query.get("callback_url")
    files: list[tuple[str, bytes]] = []
    if ctype.startswith("multipart/"):
        # A malformed body can fail at any part (bad part headers raise aiohttp's
        # InvalidHeader, a bad charset UnicodeDecodeError): all of it is the client's 400.
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):  # a nested multipart/mixed
                    raise ApiError("nested multipart bodies are not supported")
                if part.name == "callback_url":
                    callback = (await part.text()).strip()
                elif part.name == "file":
                    if len(files) >= MAX_FILES:
                        raise ApiError(f"at most {MAX_FILES} files per request",
                                       code="too_many_files")
                    files.append((part.filename or f"file{len(files) + 1}",
                                  await _read_limited(part)))
                else:
                    await part.release()
        except (AssertionError, ValueError, HttpProcessingError) as exc:
            raise ApiError(f"malformed multipart body: {str(exc)[:200]}") from exc
        if not files:
            raise ApiError("no multipart field named 'file'", code="no_file")
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        files.append(("body", await _read_limited(request.content)))
    else:
        raise imaging.UnsupportedFormat(
            f"send multipart/form-data with field 'file', or an image/* body (got {ctype!r})")
    return files, callback


async def _local_image_id() -> str:
    """An id whose upload event this worker consumes itself (app.locality)."""
    try:
        owned = {tp.partition for tp in app.consumer.assignment()
                 if tp.topic == settings.topic_uploads}
    except Exception:  # noqa: BLE001 - consumer not started yet: any partition will do
        owned = set()
    partitions = await get_publisher().partition_count(settings.topic_uploads)
    return local_image_id(owned, partitions)


# Drawing ids into our own partitions only pays when we keep the bytes for our own agent.
_locality: dict[str, Any] = (
    {"new_id": _local_image_id, "keep": recent_uploads()} if settings.upload_cache_mb > 0
    else {})


@app.page("/v1/images")
class Images(View):
    """Upload one or many images; list recent results."""

    async def post(self, request: web.Request) -> web.Response:
        stamps = tr.upload_stamps(request.headers.get)
        who = from_headers(request.headers)
        if who is None:
            return _no_principal()
        try:
            files, callback = await _uploads(request)
            await ingest.vet_callback_url(callback)
        except Exception as exc:  # noqa: BLE001 - mapped to JSON errors by _fail
            return _fail(exc)
        answers: list[tuple[int, dict[str, Any]]] = []
        for filename, data in files:
            try:
                status, body = await ingest.accept(
                    data, tenant=who.tenant, request_id=_request_id(request),
                    callback_url=callback, stamps=stamps,
                    model_ref=current_model_ref, **_locality)
                if status == 202:
                    metrics.IMAGES_RECEIVED.labels(via="api").inc()
                answers.append((status, body))
            except Exception as exc:  # noqa: BLE001
                failure = _fail(exc)
                if len(files) == 1:
                    return failure
                answers.append((failure.status, {"filename": filename,
                                                 **json.loads(failure.body)}))
        if len(files) == 1:
            status, body = answers[0]
            return web.json_response(body, status=status)
        if all(a[0] == 503 for a in answers):
            return web.json_response([a[1] for a in answers], status=503,
                                     headers={"Retry-After": "5"})
        return web.json_response([a[1] for a in answers], status=202)

    async def get(self, request: web.Request) -> web.Response:
        who = from_headers(request.headers)
        if who is None:
            return _no_principal()
        try:
            limit = _int_param(request, "limit", 50, 1, 200)
            top_k = _int_param(request, "top_k", 5, 0, res.STORED_LABELS)
            source_key = request.query.get("source_key")
            if source_key is not None:  # a dropped object's images (app.drops)
                if not source_key or len(source_key.encode()) > 1024:
                    raise ApiError("source_key must be an object key of 1-1024 bytes",
                                   code="bad_source_key")
                found = [r for r in await retrieval.by_source(source_key, limit)
                         if who.sees_result(r)]
                return web.json_response(
                    {"images": [res.view(r, top_k=top_k) for r in found]})
            found = await retrieval.recent(limit, None if who.admin else who.tenant)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, ApiError):
                exc = DependencyDown("redis", type(exc).__name__)
            return _fail(exc)
        return web.json_response({"images": [res.view(r, top_k=top_k) for r in found]})


@app.page("/v1/images/{image_id}")
class Image(View):
    """One image's status and result, from the fastest tier that has it."""

    async def get(self, request: web.Request, image_id: str) -> web.Response:
        who = from_headers(request.headers)
        if who is None:
            return _no_principal()
        if not is_image_id(image_id):
            return _not_found()
        try:
            top_k = _int_param(request, "top_k", 5, 0, res.STORED_LABELS)
            min_score = _float_param(request, "min_score", 0.0, 0.0, 1.0)
            wait = _float_param(request, "wait", 0.0, 0.0, MAX_WAIT_S)
            with_trace = params.bool_param(request.query, "trace")
            found, tier = await retrieval.lookup(self, request, image_id)
            if tier == "routed":  # the owner worker answered in full, with the same checks
                return found  # type: ignore[no-any-return]
            if not who.sees_result(found):
                return _not_found()  # unknown, or another tenant's: the same answer
            if model := request.query.get("model"):  # another model version's answer
                if not MODEL_REF_RE.match(model):
                    raise ApiError("model is NAME or NAME:VERSION", code="bad_parameter")
                other = await reclassify.result_for_model(image_id, model, found)
                if other is None:
                    return error_response(404, "model_not_found",
                                          f"no result of model {model!r} for this image")
                found = {**other, "history": found.get("history", [])} \
                    if other is not found else found
            if wait and not res.is_final(found):
                waited = await get_hub().wait_for(image_id, wait)
                if waited is not None and who.sees_result(waited):
                    found, tier = waited, "event"
            body = res.view(found, top_k=top_k, min_score=min_score, source=tier,
                            trace=with_trace)
            if found.get("callback_url"):
                body["delivery"] = await _delivery(image_id, found)
        except Exception as exc:  # noqa: BLE001
            return _fail(exc)
        metrics.RETRIEVALS.labels(tier=tier).inc()
        return web.json_response(body, headers={"X-Imagerec-Source": tier})


async def _delivery(image_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """The webhook's delivery state (app.callbacks); ``queued`` until the agent starts it."""
    if not res.is_final(result):
        return {"state": "waiting_for_result", "attempts": 0}
    try:
        state = await callbacks.load_state(image_id)
    except Exception as exc:  # noqa: BLE001 - Redis down: say so rather than fail the GET
        log.warning("delivery state unreadable", image_id=image_id, error=repr(exc)[:200])
        return {"state": "unknown", "attempts": None}
    return callbacks.public_state(state) if state else {"state": "queued", "attempts": 0}


async def _visible(who: Principal, image_id: str) -> bool:
    """Whether ``who`` may see this image, without routing: the result's tenant (Redis, then
    storage), else the original's."""
    if who.admin:
        return True
    return who.sees(await retrieval.tenant_of(image_id))


# The stored model input never changes once written (ids are never reused), so the browser
# may keep it for a day; "private" because it is one key holder's image, not for shared caches.
INPUT_HEADERS = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}


@app.page("/v1/images/{image_id}/input")
class ImageInput(View):
    """The JPEG the model classified (224x224 for the default model): ``processed-images``.

    Clients that did not upload an image (the page's gallery, other API users) hold no copy
    of it; this small, already-normalised JPEG is a safe thumbnail that costs no decoding or
    resizing here. Read straight from the object store, which every worker can reach, so it
    needs no routing to the worker that owns the result.
    """

    async def get(self, request: web.Request, image_id: str) -> web.Response:
        who = from_headers(request.headers)
        if who is None:
            return _no_principal()
        if not is_image_id(image_id):  # never let a client-made string reach an object key
            return _not_found()
        try:
            if not await _visible(who, image_id):
                # Exactly what an id with nothing stored gets below.
                return error_response(404, "not_found", "no stored model input for this image")
            data = await get_store().get(settings.bucket_processed,
                                         names.processed_key(image_id))
        except ObjectMissing:
            # Unknown id, not classified yet, failed before decoding, or stored before model
            # inputs were JPEG: in every case there is nothing to show.
            return error_response(404, "not_found", "no stored model input for this image")
        except Exception as exc:  # noqa: BLE001 - DependencyDown from the store: 503
            return _fail(exc)
        return web.Response(body=data, content_type="image/jpeg", headers=INPUT_HEADERS)


@app.page("/v1/classify")
class Classify(View):
    """Synchronous classification of one image: no queue, nothing stored."""

    async def post(self, request: web.Request) -> web.Response:
        try:
            top_k = _int_param(request, "top_k", 5, 0, res.STORED_LABELS)
            min_score = _float_param(request, "min_score", 0.0, 0.0, 1.0)
            files, _ = await _uploads(request)
            if len(files) != 1:
                raise ApiError("send exactly one image", code="one_image_only")
            from app.pipeline import classify_now

            body = await classify_now(files[0][1], await get_classifier(), top_k, min_score)
        except Exception as exc:  # noqa: BLE001
            return _fail(exc)
        return web.json_response(body)


@app.page("/v1/models")
class Models(View):
    async def get(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await list_models())
        except Exception as exc:  # noqa: BLE001
            return _fail(DependencyDown("minio", repr(exc)[:100]))


async def _missed_since(last_id: str, who: Principal) -> list[dict[str, Any]]:
    """The caller's results finished after ``last_id``, oldest first; none if it is unknown
    or too old."""
    if not is_image_id(last_id):
        return []
    try:
        recent = await retrieval.recent(500, None if who.admin else who.tenant)
    except Exception:  # noqa: BLE001 - a replay is best effort; live events still flow
        return []
    ids = [r["id"] for r in recent]
    if last_id not in ids:
        return []
    return list(reversed(recent[: ids.index(last_id)]))


@app.page("/v1/events")
class Events(View):
    """Server-Sent Events: every finished result of the caller's tenant (every tenant's for an
    admin), as it is stored.

    A client that reconnects with ``Last-Event-ID`` (browsers' EventSource does so by itself)
    first gets the results it missed, from the recent list, so a dropped connection loses
    nothing that finished in the gap.
    """

    async def get(self, request: web.Request) -> web.StreamResponse:
        who = from_headers(request.headers)
        if who is None:
            return _no_principal()
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        # Subscribed before the headers go out: a client that reads the recent list once the
        # stream is open (the web page does) misses nothing in between.
        queue = await get_hub().subscribe()
        sent: set[str] = set()

        async def send(result: dict[str, Any]) -> None:
            sent.add(result["id"])
            data = json.dumps(res.view(result), separators=(",", ":"))
            await resp.write(f"event: result\nid: {result['id']}\ndata: {data}\n\n".encode())

        try:
            await resp.prepare(request)
            await resp.write(b": connected\n\n")
            for missed in await _missed_since(request.headers.get("Last-Event-ID", ""), who):
                await send(missed)
            while True:
                try:
                    async with asyncio.timeout(15.0):  # no extra task per event, as wait_for
                        result = await queue.get()
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if result["id"] not in sent and who.sees_result(result):
                    await send(result)
                if len(sent) > 10_000:
                    sent.clear()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            get_hub().unsubscribe(queue)
        return resp


@app.page("/v1/uploads")
class Uploads(View):
    """A signed form for sending one image straight to storage (app.presign): the id is
    known at once, the result comes as for any upload once the object has arrived."""

    async def post(self, request: web.Request) -> web.Response:
        who = from_headers(request.headers)
        if who is None:
            return _no_principal()
        try:
            raw = await request.content.read(presign.MAX_REQUEST_BYTES + 1)
            body = presign.parse_request(raw, request.content_type)
            answer = presign.issue(body, tenant=who.tenant, image_id=new_image_id(),
                                   gateway_base=presign.gateway_base(request.headers,
                                                                     settings.gateway_url))
        except Exception as exc:  # noqa: BLE001 - mapped to JSON errors by _fail
            return _fail(exc)
        log.info("presigned upload issued", image_id=answer["id"], tenant=who.tenant,
                 max_bytes=answer["max_bytes"], content_type=answer["content_type"])
        return web.json_response(answer, status=201,
                                 headers={"Location": answer["links"]["self"],
                                          "Cache-Control": "no-store"})
