"""Finding a result: Redis, then the Faust table (on the worker that owns the key), then the
``classification-results`` bucket; an original without a result is still queued.

Every result carries its tenant; a queued image's tenant is read from its original's object
metadata. The views decide visibility (``app.tenancy``); this module only finds things."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable

from app import cache, names
from app import results as res
from app.faust_app import app, settings
from app.logs import get_logger
from app.storage import ObjectMissing, get_store
from app.tenancy import ORIGINAL_TENANT_META
from tables.results import results_table

log = get_logger(__name__)


async def from_storage(image_id: str) -> dict[str, Any] | None:
    try:
        raw = await get_store().get(settings.bucket_results, names.result_key(image_id))
    except ObjectMissing:
        return None
    return res.decode(raw)


async def original_exists(image_id: str) -> bool:
    return await get_store().has(settings.bucket_input, names.original_key(image_id))


def _stat_tenant(image_id: str) -> str | None:
    try:
        meta = get_store().metadata(settings.bucket_input, names.original_key(image_id))
    except ObjectMissing:
        return None
    return meta.get(ORIGINAL_TENANT_META, "")


async def original_tenant(image_id: str) -> str | None:
    """The uploader's tenant of a stored original ("" if it predates tenants), None if there
    is no such original."""
    return await asyncio.to_thread(_stat_tenant, image_id)


async def lookup(view: Any, request: Any, image_id: str) -> tuple[Any, str]:
    """``(result, tier)``; tier ``routed`` means ``result`` is the owner's HTTP response."""
    try:
        found = await cache.get_result(image_id)
        if found is not None:
            return found, "redis"
    except Exception as exc:  # noqa: BLE001 - Redis is a cache; fall through
        log.warning("redis lookup failed", image_id=image_id, error=repr(exc)[:200])
    try:
        response = await app.router.route_req(results_table.name, image_id, view.web, request)
        return response, "routed"
    except SameNode:
        pass
    except (ServiceUnavailable, KeyError) as exc:  # no assignment yet (rebalancing)
        log.info("table route unavailable", error=repr(exc)[:100])
    except Exception as exc:  # noqa: BLE001 - owner unreachable: storage still has it
        log.warning("table route failed", error=repr(exc)[:200])
    found = results_table.get(image_id)
    if found is not None:
        return res.decode(found), "table"
    found = await from_storage(image_id)
    if found is not None:
        return found, "storage"
    tenant = await original_tenant(image_id)
    if tenant is not None:
        processing = False
        try:
            processing = await cache.is_processing(image_id)
        except Exception:  # noqa: BLE001
            pass
        status = "processing" if processing else "queued"
        return {"id": image_id, "status": status, "labels": [], "error": None,
                "model": None, "tenant": tenant}, status
    return None, "none"


async def recent(limit: int, tenant: str | None = None) -> list[dict[str, Any]]:
    """Newest first: one tenant's results, or every tenant's when ``tenant`` is None."""
    ids = await cache.recent_ids(limit, tenant)
    found = [r for r in await cache.get_many(ids) if r is not None]
    # The tenant list only ever holds that tenant's ids; checked again all the same.
    return found if tenant is None else [r for r in found if r.get("tenant") == tenant]


async def by_source(source_key: str, limit: int = 50) -> list[dict[str, Any]]:
    """Every image made from the dropped object ``source_key`` (app.drops), newest first:
    its result where there is one, else its queued state. A key dropped twice (rewritten)
    names two images. The index lives in the results bucket (``names.source_index_prefix``),
    so it is as durable as the results themselves."""
    prefix = names.source_index_prefix(source_key)
    keys = await asyncio.to_thread(get_store().list_keys, settings.bucket_results, prefix)
    ids = sorted((k[len(prefix):] for k in keys), reverse=True)[:limit]
    found: list[dict[str, Any]] = []
    for image_id in ids:
        result: dict[str, Any] | None = None
        try:
            result = await cache.get_result(image_id)
        except Exception as exc:  # noqa: BLE001 - Redis is a cache; fall through
            log.warning("redis lookup failed", image_id=image_id, error=repr(exc)[:200])
        result = result or await from_storage(image_id)
        if result is None:
            tenant = await original_tenant(image_id)
            if tenant is None:
                continue  # indexed, then refused before storing (a retried drop fills it)
            result = {"id": image_id, "status": "queued", "labels": [], "error": None,
                      "model": None, "tenant": tenant, "source_key": source_key}
        found.append(result)
    return found


async def tenant_of(image_id: str) -> str | None:
    """The image's tenant from the cheapest place that knows it: the result in Redis, the
    result in storage, the original's metadata. None for an unknown id."""
    try:
        found = await cache.get_result(image_id)
        if found is not None:
            return found.get("tenant") or ""
    except Exception as exc:  # noqa: BLE001 - Redis is a cache; fall through
        log.warning("redis lookup failed", image_id=image_id, error=repr(exc)[:200])
    found = await from_storage(image_id)
    if found is not None:
        return found.get("tenant") or ""
    return await original_tenant(image_id)
