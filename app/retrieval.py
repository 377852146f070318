"""Finding a result: Redis, then the Faust table (on the worker that owns the key), then the
``classification-results`` bucket; an original without a result is still queued."""

from __future__ import annotations

from typing import Any

from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable

from app import cache, names
from app import results as res
from app.faust_app import app, settings
from app.logs import get_logger
from app.storage import ObjectMissing, get_store
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
    if await original_exists(image_id):
        processing = False
        try:
            processing = await cache.is_processing(image_id)
        except Exception:  # noqa: BLE001
            pass
        status = "processing" if processing else "queued"
        return {"id": image_id, "status": status, "labels": [], "error": None,
                "model": None}, status
    return None, "none"


async def recent(limit: int) -> list[dict[str, Any]]:
    ids = await cache.recent_ids(limit)
    return [r for r in await cache.get_many(ids) if r is not None]
