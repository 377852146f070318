"""Every storage key and Redis key, in one place, so worker, functions and CLI agree."""

from __future__ import annotations

PREFIX = "imagerec"


def original_key(image_id: str) -> str:
    """Key in ``input-images``; the format is kept in object metadata, not in the name."""
    return image_id


def processed_key(image_id: str) -> str:
    """Key in ``processed-images``: the 224x224 model input, as JPEG (q95, no subsampling)."""
    return f"{image_id}.jpg"


def result_key(image_id: str) -> str:
    """Key in ``classification-results``."""
    return f"{image_id}.json"


def redis_result(image_id: str) -> str:
    return f"{PREFIX}:result:{image_id}"


def redis_processing(image_id: str) -> str:
    return f"{PREFIX}:processing:{image_id}"


def redis_dedup(sha256: str, model_name: str, model_version: str,
                tenant: str | None = None) -> str:
    """Same content + same model version = same answer; the value is the image id.

    Without ``tenant``: the latest such image of any tenant (whose labels another tenant's
    upload may reuse); with it: that tenant's own (answered as a duplicate)."""
    base = f"{PREFIX}:dedup:{model_name}:{model_version}:{sha256}"
    return base if tenant is None else f"{base}:t:{tenant}"


def redis_callback(image_id: str) -> str:
    """The webhook's delivery state (app.callbacks)."""
    return f"{PREFIX}:callback:{image_id}"


def redis_callback_lease(image_id: str) -> str:
    """Which worker delivers this webhook now (app.callbacks)."""
    return f"{PREFIX}:callback-lease:{image_id}"


def redis_recent_tenant(tenant: str) -> str:
    """One tenant's recent list; ``REDIS_RECENT`` holds every tenant's (admins read it)."""
    return f"{PREFIX}:recent:t:{tenant}"


def redis_rate(key_name: str, second: int) -> str:
    """A key's request count in one second (app.ratelimit)."""
    return f"{PREFIX}:rate:{key_name}:{second}"


REDIS_RECENT = f"{PREFIX}:recent"
REDIS_CHANNEL = f"{PREFIX}:results"
REDIS_RECONCILED_UNTIL = f"{PREFIX}:reconciled-until"
# Dead letters already replayed from the console: field "partition/offset", value who, when,
# which image (no TTL, so the cache's eviction never forgets one).
REDIS_DLQ_REPLAYED = f"{PREFIX}:dlq-replayed"
