"""Accepting one uploaded image: validate, de-duplicate, store the original, enqueue.

Shared by the Faust upload view and the ``image-upload`` function, so both give the same
answers. The order matters: the original is stored before the event is produced, and the
client hears 202 only after Kafka acknowledged the event. If the produce fails the stored
original is removed (best effort) and the client gets 503; the reconciler covers the rare case
where that removal fails too.

Tenants. The image records the uploader's tenant (in the event, so in the result, and in the
original's object metadata). Identical bytes already classified for the same tenant answer
200 with that result; for another tenant they get a new image id and record of their own, and
the agent copies the labels from the earlier result (``reuse_of``) instead of classifying
again: the work is shared, the record and everything in it (id, callback, request id) is not.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from app import cache, imaging, names, netguard
from app import results as res
from app import trace as tr
from app.broker import get_publisher
from app.errors import ApiError, DependencyDown
from app.ids import new_image_id
from app.locality import RecentUploads
from app.logs import get_logger
from app.settings import get_settings
from app.storage import get_store
from app.tenancy import ORIGINAL_TENANT_META

log = get_logger(__name__)
# The drop key an original came from (app.drops), percent-encoded: x-amz-meta-source-key.
ORIGINAL_SOURCE_META = "source-key"

# (name, version), or one per model variant (fp32 and int8 results carry their own versions)
ModelRef = Callable[[], Awaitable[tuple[str, str] | list[tuple[str, str]] | None]]

CONTENT_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
    "bmp": "image/bmp", "tiff": "image/tiff",
}


def check_callback_url(url: str | None) -> str | None:
    """Only absolute http(s) URLs; anything else is a 400 before we store a byte."""
    if not url:
        return None
    try:
        netguard.split_url(url)
    except netguard.CallbackRefused as exc:
        raise ApiError(str(exc), code="bad_callback_url") from exc
    return url


async def vet_callback_url(url: str | None) -> str | None:
    """``check_callback_url`` plus the SSRF check (app.netguard): the host must not be or
    resolve to a loopback, private, link-local, multicast or unspecified address unless the
    operator allowed its network. A 400 before anything is stored."""
    if not check_callback_url(url):
        return None
    try:
        await netguard.vet(url or "", get_settings().callback_allow_nets)
    except netguard.CallbackRefused as exc:
        raise ApiError(str(exc), code="bad_callback_url") from exc
    return url


async def _s3(call: Callable[..., Any], *args: Any) -> Any:
    """A blocking store call off the loop; the store raises ``DependencyDown`` itself."""
    return await asyncio.to_thread(call, *args)


async def find_existing(sha256: str, model_ref: ModelRef | None,
                        tenant: str) -> dict[str, Any] | None:
    """A finished result for the same bytes and the current model version, if Redis has one:
    ``tenant``'s own if there is one, else any tenant's (whose labels may be reused)."""
    if model_ref is None:
        return None
    try:
        refs = await model_ref()
        if not refs:
            return None
        for owner in (tenant, None):
            for ref in refs if isinstance(refs, list) else [refs]:  # each variant's version
                image_id = await cache.find_duplicate(sha256, *ref, tenant=owner)
                if image_id is None:
                    continue
                found = await cache.get_result(image_id)
                if found and found.get("status") == "done":
                    return found
    except Exception as exc:  # noqa: BLE001 - a cache miss, never a failed upload
        log.warning("dedup lookup failed", error=repr(exc))
    return None


async def accept(data: bytes, *, tenant: str, request_id: str = "",
                 callback_url: str | None = None, model_ref: ModelRef | None = None,
                 new_id: Callable[[], Awaitable[str]] | None = None,
                 keep: RecentUploads | None = None, image_id: str | None = None,
                 source_key: str | None = None,
                 stamps: dict[str, float] | None = None) -> tuple[int, dict[str, Any]]:
    """Returns ``(http_status, body)``: 202 queued, or 200 with an earlier identical result
    of the same ``tenant``.

    A worker passes ``new_id`` and ``keep`` (app.locality) so that it classifies what it
    accepted from memory; the function leaves them out. ``stamps``: the trace so far
    (app.trace: ``received`` from the gateway, ``accepted``); this adds ``original_stored``
    and ``enqueued`` and sends them with the event.

    A drop (app.drops) passes its own ``image_id`` (derived from the storage event, so a
    redelivered notification names the same image) and its ``source_key``. Nobody waits for
    a drop's answer, so an identical earlier image of the same tenant does not answer it: the
    drop gets its record all the same, with the labels copied (``reuse_of``).

    Raises ``imaging.ImageError`` (413/415/422), ``ApiError`` (400) or ``DependencyDown``
    (503).
    """
    settings = get_settings()
    callback_url = await vet_callback_url(callback_url)
    fmt, width, height = imaging.inspect(data)
    sha256 = hashlib.sha256(data).hexdigest()

    existing = await find_existing(sha256, model_ref, tenant)
    reuse_of: str | None = None
    if existing is not None and existing.get("tenant") == tenant and source_key is None:
        log.info("duplicate upload answered from cache", image_id=existing["id"])
        return 200, res.view(existing, source="redis") | {"duplicate_of": existing["id"]}
    if existing is not None:  # another tenant's: share the work, not the record
        reuse_of = existing["id"]

    if image_id is None:
        image_id = await new_id() if new_id is not None else new_image_id()
    event = res.UploadEvent(
        id=image_id, sha256=sha256, format=fmt, size=len(data), created_at=res.now_iso(),
        request_id=request_id, callback_url=callback_url, width=width, height=height,
        tenant=tenant, reuse_of=reuse_of, source_key=source_key, trace=dict(stamps or {}),
    )
    store = get_store()
    meta = {"sha256": sha256, "created-at": event.created_at, ORIGINAL_TENANT_META: tenant}
    if source_key is not None:  # metadata is an HTTP header: ASCII only
        meta[ORIGINAL_SOURCE_META] = quote(source_key, safe="/")
    await store.put(settings.bucket_input, names.original_key(image_id), data,
                    CONTENT_TYPES[fmt], meta)
    if keep is not None:
        keep.keep(image_id, data)  # before the produce: the agent may take it at once
    event.trace["original_stored"] = tr.now_ms()
    try:
        event.trace["enqueued"] = tr.now_ms()
        await get_publisher().send(settings.topic_uploads, image_id.encode(), event.to_bytes())
    except DependencyDown:
        if keep is not None:
            keep.discard(image_id)
        try:
            await _s3(store.delete, settings.bucket_input, names.original_key(image_id))
        except Exception as exc:  # noqa: BLE001 - the reconciler re-enqueues it later
            log.warning("could not remove original after failed produce", image_id=image_id,
                        error=repr(exc))
        raise
    log.info("image accepted", image_id=image_id, format=fmt, bytes=len(data),
             width=width, height=height, tenant=tenant, reuse_of=reuse_of)
    return 202, res.view(res.queued(event))
