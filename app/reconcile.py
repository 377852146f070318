"""Re-enqueue stored originals that never got a result (lost between the two upload writes,
or sent while a worker lost its batch). Runs on the leader worker only.

Image ids are ULIDs, so object keys sort by creation time, and a pass lists only the slice
``[now - grace - window, now - grace)`` of both buckets. The cost of a pass therefore follows the
upload rate over ``window``, not the bucket size: listing a whole day on every tick made MinIO and
the leader spend seconds per pass once a day held ~50k images. With the window a few intervals
wide, every original is looked at in a few passes.

Where the last pass stopped is kept in Redis, so a new leader (after a restart or a rebalance)
first covers the time no reconciler ran, up to a day back; without that mark it looks back a
whole day.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

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


def _keys_between(store: ObjectStore, bucket: str, start: str, stop: str) -> Iterator[Any]:
    """Objects with start < key < stop, in key order; stops listing at ``stop``."""
    for obj in store.client.list_objects(bucket, start_after=start):
        if obj.object_name >= stop:
            return
        yield obj


def find_orphans(store: ObjectStore, settings: Settings, now: float | None = None,
                 lookback_s: float | None = None) -> list[Any]:
    """Originals older than the grace period, and younger than grace + lookback (default: the
    configured window), that have no result object."""
    now = time.time() if now is None else now
    lookback = settings.reconcile_window_s if lookback_s is None else lookback_s
    cutoff = _ulid_floor(now - settings.reconcile_grace_s)
    start = _ulid_floor(now - settings.reconcile_grace_s - lookback)
    done = {o.object_name.removesuffix(".json")
            for o in _keys_between(store, settings.bucket_results, start, cutoff)}
    return [obj for obj in _keys_between(store, settings.bucket_input, start, cutoff)
            if obj.object_name not in done]


def catch_up_lookback(settings: Settings, until: float | None, now: float) -> float:
    """How far a leader's first pass looks back: to the last pass's end (plus the window), or a
    whole day when that is unknown or older."""
    if until is None:
        return LOOKBACK_S
    missed = now - settings.reconcile_grace_s - until
    return min(LOOKBACK_S, max(settings.reconcile_window_s, missed + settings.reconcile_window_s))


async def reconcile_once(store: ObjectStore, settings: Settings,
                         lookback_s: float | None = None) -> int:
    import asyncio

    orphans = await asyncio.to_thread(find_orphans, store, settings, None, lookback_s)
    for obj in orphans:
        image_id = obj.object_name
        stat = await asyncio.to_thread(store.client.stat_object, settings.bucket_input,
                                       names.original_key(image_id))
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        event = res.UploadEvent(
            id=image_id, sha256=meta.get("x-amz-meta-sha256", ""),
            format=_FORMATS.get(stat.content_type or "", "unknown"), size=stat.size or 0,
            created_at=meta.get("x-amz-meta-created-at", res.now_iso()), reconciled=True,
        )
        await get_publisher().send(settings.topic_uploads, image_id.encode(), event.to_bytes())
        log.warning("re-enqueued an original without a result", image_id=image_id)
    return len(orphans)
