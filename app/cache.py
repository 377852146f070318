"""Redis: the fast retrieval tier (results with a TTL), de-duplication, recent list, fan-out.

Redis is a cache: losing it loses nothing (the table and the bucket hold every result), so
callers treat its errors as a miss, log them, and go on.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis

from app import names
from app import results as res
from app.settings import get_settings

RECENT_MAX = 500


@lru_cache(maxsize=1)
def get_redis() -> aioredis.Redis:
    from app.redisconn import redis_client

    return redis_client(get_settings(), socket_timeout=2.0, socket_connect_timeout=2.0,
                        health_check_interval=15, max_connections=64)


async def get_result(image_id: str) -> dict[str, Any] | None:
    raw = await get_redis().get(names.redis_result(image_id))
    return res.decode(raw) if raw else None


# Storing a result is six commands (result with TTL, dedup pointer, recent list and its
# trim, the processing mark, the notification). As one script it is one command for
# redis-py to pack and one reply to parse, where a pipeline of six cost the results agent
# more client CPU than the rest of its work on each result.
_PUT_RESULT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '1' then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2])
  if ARGV[7] == '1' then redis.call('SET', KEYS[6], ARGV[4], 'EX', ARGV[2]) end
end
if ARGV[8] == '1' then
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
end
redis.call('DEL', KEYS[4])
if ARGV[7] == '1' and ARGV[8] == '1' then
  redis.call('LPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
end
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1
"""


@lru_cache(maxsize=1)
def _put_result_script() -> Any:
    return get_redis().register_script(_PUT_RESULT)


async def put_result(result: dict[str, Any], data: bytes, ttl_s: int | None = None) -> None:
    """Result with TTL, dedup pointer, recent lists (all tenants', and its tenant's) and a
    notification, in one command.

    ``data`` is ``result`` as encoded (the results agent has the message bytes)."""
    ttl = ttl_s or get_settings().result_ttl_s
    model = result.get("model") or {}
    dedup = result["status"] == "done" and bool(model)
    dedup_key = (names.redis_dedup(result["sha256"], model["name"], model["version"])
                 if dedup else names.redis_dedup("-", "-", "-"))
    tenant = result.get("tenant") or ""
    tenant_dedup = (names.redis_dedup(result["sha256"], model["name"], model["version"],
                                      tenant) if dedup and tenant else dedup_key)
    await _put_result_script()(
        keys=[names.redis_result(result["id"]), dedup_key, names.REDIS_RECENT,
              names.redis_processing(result["id"]), names.redis_recent_tenant(tenant or "-"),
              tenant_dedup],
        args=[data, ttl, "1" if dedup else "0",
              result["id"], RECENT_MAX, names.REDIS_CHANNEL, "1" if tenant else "0",
              # a re-classified image is not new: it keeps its place in the recent lists
              "0" if result.get("reclassify_job") else "1"])


async def find_duplicate(sha256: str, model_name: str, model_version: str,
                         tenant: str | None = None) -> str | None:
    """An image id with these bytes and this model: ``tenant``'s own, or any tenant's."""
    raw = await get_redis().get(names.redis_dedup(sha256, model_name, model_version, tenant))
    return raw.decode() if raw else None


async def mark_processing(image_ids: list[str], ttl_s: int = 120) -> None:
    if not image_ids:
        return
    pipe = get_redis().pipeline(transaction=False)
    for image_id in image_ids:
        pipe.set(names.redis_processing(image_id), b"1", ex=ttl_s)
    await pipe.execute()


async def is_processing(image_id: str) -> bool:
    return bool(await get_redis().exists(names.redis_processing(image_id)))


async def recent_ids(limit: int, tenant: str | None = None) -> list[str]:
    """Newest first: every tenant's (``tenant`` None, for admins) or one tenant's."""
    key = names.REDIS_RECENT if tenant is None else names.redis_recent_tenant(tenant)
    raw = await get_redis().lrange(key, 0, max(0, limit - 1))
    seen: list[str] = []
    for item in raw:
        image_id = item.decode()
        if image_id not in seen:
            seen.append(image_id)
    return seen


async def get_many(image_ids: list[str]) -> list[dict[str, Any] | None]:
    if not image_ids:
        return []
    raws = await get_redis().mget([names.redis_result(i) for i in image_ids])
    return [res.decode(r) if r else None for r in raws]


async def reconciled_until() -> float | None:
    """Where the last reconciler pass (any leader) stopped, as epoch seconds."""
    raw = await get_redis().get(names.REDIS_RECONCILED_UNTIL)
    return float(raw) if raw else None


async def set_reconciled_until(epoch_s: float) -> None:
    await get_redis().set(names.REDIS_RECONCILED_UNTIL, f"{epoch_s:.3f}")
