"""Uploads straight to storage: objects any S3 client writes under the drop prefix.

MinIO publishes a notification to the ``image-drops`` topic for every object created under
``settings.drop_prefix`` of ``input-images`` (its Kafka target, configured by
``app.stack.provision`` and the server's environment, ``notify_env``). The drops agent
(``agents.drops``) hands each one to ``handle_record``, which turns it into an ordinary upload
through ``app.ingest.accept``, the code path of ``POST /v1/images``, so a dropped file is
validated exactly as an uploaded one (byte limit, format allow-list, pixel limits). An object
that fails becomes a ``failed`` result with a reason; nothing about a bad object escapes.

Key format (``app.names``): ``<drop_prefix><tenant>/<name>``. The first path segment is the
tenant the image belongs to, so S3 credentials limited to ``incoming/<tenant>/*`` are a
tenant's drop permission. A key without a valid tenant segment is recorded as ``failed``
(``bad_drop_key``) and seen by admins only.

At-least-once without double work. Kafka may deliver a notification twice (a worker that
dies before committing), and MinIO may too (its queue directory replays what it could not
confirm). The image id is therefore derived from the event, not drawn at random: a ULID
whose time is the object's creation time and whose random part is a hash of the bucket, key,
ETag and sequencer. A redelivered event names the same image, and ``handle_record`` skips an
image that is already enqueued (a Redis mark written after the produce, then the stored
result as the durable check). If the drop was removed meanwhile but its original is stored,
it was accepted before: skipped too.

Presigned uploads (``POST /v1/uploads``) put their object at
``<drop_prefix><tenant>/_uploads/<image id>.<mac>``: the id was issued with the URL, and the
MAC (``upload_drop_key``) shows that this server issued it, so a client with S3 access cannot
choose ids. Without a valid MAC such a key is an ordinary drop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from ulid import ULID

from app import imaging, ingest, names
from app import results as res
from app.apikeys import NAME_RE
from app.broker import get_publisher
from app.errors import DependencyDown
from app.ids import is_image_id
from app.logs import get_logger
from app.settings import Settings, get_settings
from app.storage import ObjectMissing, get_store

log = get_logger(__name__)
DROP_MARK_TTL_S = 7 * 24 * 3600
_MAC_LEN = 22  # hex digits: 88 bits


class NotADropEvent(ValueError):
    """A message on ``image-drops`` that is not a MinIO bucket notification (DLQ)."""


@dataclass(frozen=True)
class DropRecord:
    """One object-created record of a MinIO notification."""

    bucket: str
    key: str
    size: int
    etag: str
    sequencer: str
    event_time: str  # ISO 8601, as MinIO wrote it
    event_name: str

    @property
    def created(self) -> bool:
        return self.event_name.startswith("s3:ObjectCreated:")


def parse_notification(raw: bytes | None) -> list[DropRecord]:
    """The records of one notification message (MinIO sends one per message, in
    ``Records``; the format is S3's event message structure, keys URL-encoded)."""
    if not raw:
        raise NotADropEvent("empty message")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotADropEvent(f"not JSON: {exc}") from exc
    records = data.get("Records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise NotADropEvent("no Records list")
    out = []
    for rec in records:
        try:
            s3 = rec["s3"]
            obj = s3["object"]
            out.append(DropRecord(
                bucket=str(s3["bucket"]["name"]), key=unquote_plus(str(obj["key"])),
                size=int(obj.get("size") or 0), etag=str(obj.get("eTag") or ""),
                sequencer=str(obj.get("sequencer") or ""),
                event_time=str(rec.get("eventTime") or ""),
                event_name=str(rec.get("eventName") or "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise NotADropEvent(f"malformed record: {exc!r}") from exc
    return out


def _epoch_ms(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return int(time.time() * 1000)


def derived_image_id(record: DropRecord) -> str:
    """The same id for every delivery of one object creation, sortable by its time."""
    digest = hashlib.sha256("\0".join((record.bucket, record.key, record.etag,
                                       record.sequencer)).encode()).digest()
    ms = _epoch_ms(record.event_time)
    return str(ULID.from_bytes(ms.to_bytes(6, "big") + digest[:10]))


def _mac(secret: str, tenant: str, image_id: str) -> str:
    msg = f"drop-upload\0{tenant}\0{image_id}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()[:_MAC_LEN]


def upload_drop_key(tenant: str, image_id: str, settings: Settings | None = None) -> str:
    """The drop key a presigned upload of ``image_id`` for ``tenant`` is PUT to."""
    settings = settings or get_settings()
    name = f"{names.DROP_UPLOADS_DIR}/{image_id}.{_mac(settings.api_key_pepper, tenant, image_id)}"
    return names.drop_key(settings.drop_prefix, tenant, name)


@dataclass(frozen=True)
class DropKey:
    """What a key under the drop prefix says: the tenant ("" when it names none) and, for a
    presigned upload, the image id issued with its URL."""

    tenant: str
    name: str
    issued_id: str | None = None


_UPLOAD_NAME = re.compile(rf"^{names.DROP_UPLOADS_DIR}/([0-9A-Z]{{26}})\.([0-9a-f]{{{_MAC_LEN}}})$")


def parse_drop_key(key: str, settings: Settings | None = None) -> DropKey | None:
    """None for a key outside the drop prefix (or a folder marker ending in ``/``)."""
    settings = settings or get_settings()
    if not key.startswith(settings.drop_prefix) or key.endswith("/"):
        return None
    tenant, sep, name = key[len(settings.drop_prefix):].partition("/")
    if not sep or not name or not NAME_RE.match(tenant):
        return DropKey("", key[len(settings.drop_prefix):])
    issued = None
    found = _UPLOAD_NAME.match(name)
    if found and is_image_id(found.group(1)) and hmac.compare_digest(
            found.group(2), _mac(settings.api_key_pepper, tenant, found.group(1))):
        issued = found.group(1)
    return DropKey(tenant, name, issued)


def image_id_for(record: DropRecord, key: DropKey) -> str:
    return key.issued_id or derived_image_id(record)


# --- handling one record -------------------------------------------------------------------


async def _already_recorded(image_id: str) -> bool:
    """Enqueued or failed before: the Redis mark, else a stored result (Redis is a cache)."""
    from app import cache

    try:
        if await cache.get_redis().exists(names.redis_drop(image_id)):
            return True
    except Exception as exc:  # noqa: BLE001 - fall back to the durable check
        log.warning("drop mark unreadable", image_id=image_id, error=repr(exc)[:200])
    settings = get_settings()
    return await get_store().has(settings.bucket_results, names.result_key(image_id))


async def _mark(image_id: str) -> None:
    from app import cache

    try:
        await cache.get_redis().set(names.redis_drop(image_id), b"1", ex=DROP_MARK_TTL_S)
    except Exception as exc:  # noqa: BLE001 - the stored result is the durable check
        log.warning("drop mark not written", image_id=image_id, error=repr(exc)[:200])


async def _index(source_key: str, image_id: str) -> None:
    """The lookup by source key (``retrieval.by_source``): one empty object per image."""
    settings = get_settings()
    await get_store().put(settings.bucket_results, names.source_index_key(source_key, image_id),
                          b"", "application/octet-stream")


async def _record_failure(record: DropRecord, key: DropKey, image_id: str, code: str,
                          message: str, data: bytes | None) -> dict[str, Any]:
    """A ``failed`` result for a drop that never became an upload: stored, then sent to
    ``image-results`` (the results agent puts it in the table and Redis), as the classify
    agent does with its results."""
    settings = get_settings()
    event = res.UploadEvent(
        id=image_id, sha256=hashlib.sha256(data).hexdigest() if data is not None else "",
        format="", size=len(data) if data is not None else record.size,
        created_at=res.now_iso(), tenant=key.tenant, source_key=record.key)
    result = res.failed(event, code, message, res.Timings())
    encoded = res.encode(result)
    await _index(record.key, image_id)
    await get_store().put(settings.bucket_results, names.result_key(image_id), encoded,
                          "application/json")
    await get_publisher().send(settings.topic_results, image_id.encode(), encoded)
    log.warning("dropped object failed", image_id=image_id, source_key=record.key,
                tenant=key.tenant, reason=code, detail=message)
    return result


async def _remove_drop(record: DropRecord) -> None:
    if not get_settings().drop_delete:
        return
    try:
        await asyncio.to_thread(get_store().delete, record.bucket, record.key)
    except Exception as exc:  # noqa: BLE001 - a leftover drop is harmless (its id is taken)
        log.warning("dropped object not removed", source_key=record.key, error=repr(exc)[:200])


async def handle_record(record: DropRecord, model_ref: ingest.ModelRef | None = None
                        ) -> tuple[str, str] | None:
    """Accept one dropped object, or record why not; returns ``(image_id, outcome)`` with
    outcome ``queued``, ``failed`` or ``skipped`` (seen before), None when the record is not
    for the drop prefix. Raises only ``DependencyDown`` (the store, Kafka): the agent retries
    the message, and everything here is safe to repeat."""
    settings = get_settings()
    key = parse_drop_key(record.key, settings) if record.bucket == settings.bucket_input \
        and record.created else None
    if key is None:
        return None
    image_id = image_id_for(record, key)
    if await _already_recorded(image_id):
        return image_id, "skipped"
    store = get_store()
    if not key.tenant:
        outcome = "failed"
        await _record_failure(record, key, image_id, "bad_drop_key",
                              f"a dropped object's key must be {settings.drop_prefix}"
                              "<tenant>/<name>, with a tenant of a-z 0-9 . _ - "
                              "(starting with a letter or digit)", None)
    elif record.size > settings.max_upload_bytes:
        outcome = "failed"
        await _record_failure(record, key, image_id, "too_large",
                              f"file is larger than the limit of {settings.max_upload_bytes} "
                              "bytes", None)
    else:
        try:
            data = await store.get(record.bucket, record.key)
        except ObjectMissing:
            if await store.has(settings.bucket_input, names.original_key(image_id)):
                return image_id, "skipped"  # accepted before, and the drop removed since
            await _record_failure(record, key, image_id, "missing_object",
                                  "the dropped object was removed before it was read", None)
            await _mark(image_id)
            return image_id, "failed"
        try:
            if len(data) > settings.max_upload_bytes:  # overwritten by a larger object
                raise imaging.PayloadTooLarge(
                    f"file is larger than the limit of {settings.max_upload_bytes} bytes")
            await _index(record.key, image_id)  # findable by key from the moment it is queued
            await ingest.accept(data, tenant=key.tenant, model_ref=model_ref,
                                image_id=image_id, source_key=record.key)
            outcome = "queued"
        except imaging.ImageError as exc:
            outcome = "failed"
            await _record_failure(record, key, image_id, exc.code, exc.message, data)
    await _mark(image_id)
    await _remove_drop(record)
    if outcome == "queued":
        log.info("dropped object accepted", image_id=image_id, source_key=record.key,
                 tenant=key.tenant)
    return image_id, outcome


__all__ = ["DependencyDown", "DropKey", "DropRecord", "NotADropEvent", "derived_image_id",
           "handle_record", "parse_drop_key", "parse_notification", "upload_drop_key"]
