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


def result_version_key(image_id: str, model_name: str, model_version: str) -> str:
    """Key in ``classification-results`` of one model version's answer for an image (the
    history that re-classification keeps; ``result_key`` holds the newest answer)."""
    return f"{image_id}/models/{model_name}/{model_version}.json"


def result_versions_prefix(image_id: str, model_name: str | None = None) -> str:
    """Listing prefix of an image's per-model answers (all models, or one model's)."""
    base = f"{image_id}/models/"
    return base if model_name is None else f"{base}{model_name}/"


# --- uploads straight to storage (app.drops) --------------------------------------------------
#
# Objects that any S3 client writes to ``input-images`` under ``settings.drop_prefix`` are
# classified. The key format, after the prefix (default ``incoming/``):
#
#     <tenant>/<any name, any depth>            an ordinary drop, e.g. ``aws s3 cp --recursive``;
#                                               its image id is derived from the event
#     <tenant>/_uploads/<image id>.<mac>        a presigned upload (``POST /v1/uploads``): the
#                                               id was issued in advance, the MAC (app.drops,
#                                               ``upload_drop_key``) proves that the server
#                                               issued it, otherwise it is an ordinary drop
#
# ``<tenant>`` follows the tenant alphabet of app.apikeys (``[a-z0-9][a-z0-9._-]{0,62}``).
# The original is then stored under its image id like any upload; the drop key is kept as the
# result's ``source_key`` and indexed below ``source_index_prefix`` for lookups by key.

DROP_UPLOADS_DIR = "_uploads"


def drop_key(drop_prefix: str, tenant: str, name: str) -> str:
    """Where a client drops ``name`` for ``tenant`` (``name`` may contain ``/``)."""
    return f"{drop_prefix}{tenant}/{name}"


def source_index_prefix(source_key: str) -> str:
    """Key prefix in ``classification-results`` listing the images made from ``source_key``
    (one empty object per image id, named by the id, so a listing is in time order).
    Hashed: a source key may be up to 1024 bytes of anything, an index key must stay valid."""
    import hashlib

    return f"by-source/{hashlib.sha256(source_key.encode()).hexdigest()}/"


def source_index_key(source_key: str, image_id: str) -> str:
    return source_index_prefix(source_key) + image_id


def redis_drop(image_id: str) -> str:
    """Set once a drop's image was enqueued or its failure recorded (app.drops): a redelivered
    notification for it is then skipped."""
    return f"{PREFIX}:drop:{image_id}"


def redis_reclassify_job(job_id: str) -> str:
    """A re-classification job's state, a hash (app.reclassify)."""
    return f"{PREFIX}:reclassify:{job_id}"


def redis_reclassify_done(job_id: str) -> str:
    """Set of the image ids a re-classification job has finished (exact under redelivery)."""
    return f"{PREFIX}:reclassify:{job_id}:done"


def redis_reclassify_lease(job_id: str) -> str:
    """Which process runs a re-classification job now; expires when it stops renewing."""
    return f"{PREFIX}:reclassify:{job_id}:lease"


REDIS_RECLASSIFY_JOBS = f"{PREFIX}:reclassify-jobs"


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
