"""Re-enqueue stored originals that never got a result (lost between the two upload writes,
or sent while a worker lost its batch). Runs on the leader worker only.

Image ids are ULIDs, so object keys sort by creation time. Each pass lists the keys of both
buckets from where the previous pass stopped up to ``now - grace``, and records its end in
Redis. Every original is therefore listed once, whichever worker leads, and a pass costs what
was uploaded since the last one, not the size of the buckets. (Listing the whole last day on
every tick made MinIO and the leader spend seconds per pass once a day held ~50k images.)
Without a mark, at the first start or after Redis lost it, a pass looks back a whole day.

The listing goes through obstore (app.storage): over 48k originals and their results, the
leader spent 0.4 s of CPU instead of 3.6 s with minio-py's XML parsing, which had also held
the GIL against the event loop. MinIO's own cost (about 90 us per original, most of it reading
the original's metadata file with its data inline) is unchanged.

A key is named before its object is stored, but the store's timeouts (app.storage) bound that gap
to well under the grace period, so no original appears behind a pass that has already passed it.
"""

from __future__ import annotations

import asyncio

from ulid import ULID

from app import names
from app import results as res
from app.broker import get_publisher
from app.ingest import CONTENT_TYPES
from app.logs import get_logger
from app.settings import Settings
from app.storage import ObjectStore

log = get_logger(__name__)
LOOKBACK_S = 24 * 3600
_FORMATS = {v: k for k, v in CONTENT_TYPES.items()}


def _ulid_floor(epoch_s: float) -> str:
    return str(ULID.from_timestamp(epoch_s))[:10] + "0" * 16


def pass_start(settings: Settings, mark: float | None, now: float) -> float:
    """Where a pass starts (epoch seconds): the previous pass's end, at most a day back."""
    until = now - settings.reconcile_grace_s
    floor = until - LOOKBACK_S
    return floor if mark is None else max(floor, min(mark, until))


async def find_orphans(store: ObjectStore, settings: Settings, since: float,
                       until: float) -> list[str]:
    """Ids of the originals from ``since`` up to ``until`` that have no result."""
    start, stop = _ulid_floor(since), _ulid_floor(until)
    done: set[str] = set()
    async for keys in store.keys_between(settings.bucket_results, start, stop):
        done.update(key.removesuffix(".json") for key in keys)
    orphans: list[str] = []
    async for keys in store.keys_between(settings.bucket_input, start, stop):
        orphans += [key for key in keys if key not in done]  # original_key(id) is the id
    return orphans


async def reconcile_once(store: ObjectStore, settings: Settings, since: float,
                         until: float) -> int:
    """Re-enqueue the orphans of ``[since, until)``; returns how many."""
    orphans = await find_orphans(store, settings, since, until)
    for image_id in orphans:
        stat = await asyncio.to_thread(store.client.stat_object, settings.bucket_input,
                                       names.original_key(image_id))
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        event = res.UploadEvent(
            id=image_id, sha256=meta.get("x-amz-meta-sha256", ""),
            format=_FORMATS.get(stat.content_type or "", "unknown"), size=stat.size or 0,
            created_at=meta.get("x-amz-meta-created-at", res.now_iso()), reconciled=True,
            tenant=meta.get("x-amz-meta-tenant", ""),
        )
        await get_publisher().send(settings.topic_uploads, image_id.encode(), event.to_bytes())
        log.warning("re-enqueued an original without a result", image_id=image_id)
    return len(orphans)
